#!/bin/sh
# Managed by kdeploy (prod), run by kdeploy-pod-routes.service: a route to the pod
# CIDR of every other node, and masquerading for pod traffic leaving the cluster's pod network
# (pod-to-pod keeps pod IPs).
set -e
iptables -w -t nat -C POSTROUTING -s 10.244.3.0/24 ! -d 10.244.0.0/16 -m comment --comment kdeploy-pod-masquerade -j MASQUERADE 2>/dev/null || iptables -w -t nat -A POSTROUTING -s 10.244.3.0/24 ! -d 10.244.0.0/16 -m comment --comment kdeploy-pod-masquerade -j MASQUERADE
/usr/sbin/ip route replace 10.244.0.0/24 via 198.51.100.11 proto 77
/usr/sbin/ip route replace 10.244.1.0/24 via 198.51.100.12 proto 77
/usr/sbin/ip route replace 10.244.2.0/24 via 198.51.100.13 proto 77
/usr/sbin/ip route replace 10.244.4.0/24 via 198.51.100.22 proto 77
/usr/sbin/ip route replace 10.244.5.0/24 via 198.51.100.23 proto 77
# routes into the pod network via a node that left the cluster (also those made before
# kdeploy tagged its routes with protocol 77)
for r in $(ip route show root 10.244.0.0/16 | grep " via " | cut -d" " -f1); do
  case " 10.244.0.0/24 10.244.1.0/24 10.244.2.0/24 10.244.3.0/24 10.244.4.0/24 10.244.5.0/24 " in *" $r "*) ;; *) ip route del $r ;; esac
done
