"""The cluster's PKI as data: which CAs and certificates exist, who signs them, what they say,
and where each piece lands on which hosts. Built from the Cluster by build_table(); nothing
here touches the disk or does cryptography.

Conventions (kubeadm's, see https://kubernetes.io/docs/setup/best-practices/certificates/):
- one cluster CA, one etcd CA, one front-proxy CA;
- admin and kube-apiserver-kubelet-client use O=system:masters (kubeadm >= 1.29 uses
  kubeadm:cluster-admins + a ClusterRoleBinding; system:masters needs no RBAC object to exist,
  which keeps bootstrap simple);
- control-plane components reach the apiserver on their own host (https://127.0.0.1:<port>);
  kubelet and kube-proxy use the cluster's API endpoint.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kdeploy.model import defaults
from kdeploy.model.cluster import Cluster
from kdeploy.pki import paths

# systemd units that read PKI material
ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"

# certificate usages
SERVER = "server"
CLIENT = "client"

# signers
CLUSTER_CA = "ca"
ETCD_CA = "etcd/ca"
FRONT_PROXY_CA = "front-proxy-ca"

LOCAL = "local"  # kubeconfig server placeholder: https://127.0.0.1:<api port> on the host itself
# run before the kubelet restarts with a kubeconfig kdeploy issued anew: the kubelet's rotated
# client certificates (signed by a CA that may be on its way out) are dropped
FORGET_KUBELET_CLIENT = ("sh", "-c", f"rm -f {paths.KUBELET_PKI_DIR}/kubelet-client-*.pem")


@dataclass(frozen=True)
class Place:
    """One piece of material on a set of hosts.

    what: "crt" | "key" | "pub" | "kubeconfig" | "encryption-config" | "signer"
    (a CA's "crt" is what trusts it: old+new while it is rotated; "key" and "signer" are the
    pair that signs now)
    server: for kubeconfigs, the apiserver URL, or LOCAL.
    """
    hosts: tuple[str, ...]
    what: str
    path: str
    phase: str
    restarts: tuple[str, ...] = ()
    server: str | None = None
    run_on_change: tuple[tuple[str, ...], ...] = ()   # argv lists run after the file changed


@dataclass(frozen=True)
class CASpec:
    name: str            # state path under pki/ without extension: "ca", "etcd/ca", ...
    cn: str
    places: tuple[Place, ...]


@dataclass(frozen=True)
class Identity:
    """A leaf certificate. name is also its path under pki/ in the state dir."""
    name: str
    signer: str                      # a CASpec name
    cn: str
    orgs: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    ip_sans: tuple[str, ...] = ()
    usages: tuple[str, ...] = (CLIENT,)
    key_type: str = "ecdsa-p256"
    places: tuple[Place, ...] = ()
    user: str | None = None          # kubeconfig user name (defaults to cn)

    @property
    def sans(self) -> tuple[str, ...]:
        return self.dns_sans + self.ip_sans

    def spec(self) -> dict:
        """What, if changed, requires a new certificate (placement does not)."""
        return {"signer": self.signer, "cn": self.cn, "o": list(self.orgs),
                "dns": list(self.dns_sans), "ip": list(self.ip_sans),
                "usages": list(self.usages), "key": self.key_type}


@dataclass(frozen=True)
class Extra:
    """Non-certificate material: the service-account key pair, the encryption config."""
    name: str
    places: tuple[Place, ...]


@dataclass(frozen=True)
class Table:
    cas: tuple[CASpec, ...]
    identities: tuple[Identity, ...]
    extras: tuple[Extra, ...]


def split_sans(values) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Deduplicated (dns, ip) SANs, each sorted (so inventory order does not cause reissues)."""
    dns: set[str] = set()
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for v in values:
        v = str(v).strip()
        if not v:
            continue
        try:
            ips.add(ipaddress.ip_address(v.strip("[]")))
        except ValueError:
            dns.add(v.lower())
    return (tuple(sorted(dns)),
            tuple(str(i) for i in sorted(ips, key=lambda a: (a.version, int(a)))))


def apiserver_sans(c: Cluster) -> tuple[tuple[str, ...], tuple[str, ...]]:
    domain = c.spec.network.cluster_domain
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
             f"kubernetes.default.svc.{domain}", "localhost", "127.0.0.1",
             c.kubernetes_service_ip, c.api_host, *c.spec.control_plane.extra_sans]
    for h in c.control_plane:
        names += [h.name, h.address]
    return split_sans(names)


def build_table(c: Cluster) -> Table:
    all_ = tuple(h.name for h in c.hosts)          # every host runs kubelet + kube-proxy
    cp = tuple(h.name for h in c.control_plane)
    etcd = tuple(h.name for h in c.etcd)
    url = c.node_api_url             # kubelet and kube-proxy: the node-local LB or the endpoint
    P = Place

    cas = (
        CASpec(CLUSTER_CA, "kubernetes", (
            P(cp, "crt", paths.CA_CRT, "control-plane", (APISERVER, CONTROLLER_MANAGER)),
            P(all_, "crt", paths.CA_CRT, "node", (KUBELET,)),
            P(cp, "key", paths.CA_KEY, "control-plane", (CONTROLLER_MANAGER,)),
            P(cp, "signer", paths.CLUSTER_SIGNING_CRT, "control-plane", (CONTROLLER_MANAGER,)),
        )),
        CASpec(ETCD_CA, "etcd-ca", (
            P(etcd, "crt", paths.ETCD_CA_CRT, "etcd", (ETCD,)),
            P(cp, "crt", paths.ETCD_CA_CRT, "control-plane", (APISERVER,)),
        )),
        CASpec(FRONT_PROXY_CA, "front-proxy-ca", (
            P(cp, "crt", paths.FRONT_PROXY_CA_CRT, "control-plane", (APISERVER, CONTROLLER_MANAGER)),
        )),
    )
    extras = (
        Extra("sa", (
            P(cp, "key", paths.SA_KEY, "control-plane", (APISERVER, CONTROLLER_MANAGER)),
            P(cp, "pub", paths.SA_PUB, "control-plane", (APISERVER,)),
        )),
        Extra("encryption", (
            P(cp, "encryption-config", paths.ENCRYPTION_CONFIG, "control-plane", (APISERVER,)),
        )),
    )

    def pair(hosts, crt, key, phase, restarts):
        return (P(hosts, "crt", crt, phase, restarts), P(hosts, "key", key, phase, restarts))

    api_dns, api_ip = apiserver_sans(c)
    ids: list[Identity] = [
        Identity("apiserver", CLUSTER_CA, "kube-apiserver", (), api_dns, api_ip, (SERVER,),
                 places=pair(cp, paths.APISERVER_CRT, paths.APISERVER_KEY, "control-plane", (APISERVER,))),
        Identity("apiserver-kubelet-client", CLUSTER_CA, "kube-apiserver-kubelet-client",
                 ("system:masters",),
                 places=pair(cp, paths.APISERVER_KUBELET_CLIENT_CRT, paths.APISERVER_KUBELET_CLIENT_KEY,
                             "control-plane", (APISERVER,))),
        Identity("apiserver-etcd-client", ETCD_CA, "kube-apiserver-etcd-client",
                 places=pair(cp, paths.APISERVER_ETCD_CLIENT_CRT, paths.APISERVER_ETCD_CLIENT_KEY,
                             "control-plane", (APISERVER,))),
        Identity("front-proxy-client", FRONT_PROXY_CA, "front-proxy-client",
                 places=pair(cp, paths.FRONT_PROXY_CLIENT_CRT, paths.FRONT_PROXY_CLIENT_KEY,
                             "control-plane", (APISERVER,))),
        Identity("etcd/healthcheck-client", ETCD_CA, "kube-etcd-healthcheck-client",
                 places=pair(etcd, paths.ETCD_HEALTHCHECK_CLIENT_CRT, paths.ETCD_HEALTHCHECK_CLIENT_KEY,
                             "etcd", ())),
        Identity("admin", CLUSTER_CA, "kubernetes-admin", ("system:masters",),
                 places=(P(cp, "kubeconfig", paths.ADMIN_CONF, "control-plane", (), LOCAL),)),
        Identity("controller-manager", CLUSTER_CA, "system:kube-controller-manager",
                 places=(P(cp, "kubeconfig", paths.CONTROLLER_MANAGER_CONF, "control-plane",
                           (CONTROLLER_MANAGER,), LOCAL),)),
        Identity("scheduler", CLUSTER_CA, "system:kube-scheduler",
                 places=(P(cp, "kubeconfig", paths.SCHEDULER_CONF, "control-plane",
                           (SCHEDULER,), LOCAL),)),
        Identity("kube-proxy", CLUSTER_CA, "system:kube-proxy",
                 places=(P(all_, "kubeconfig", paths.KUBE_PROXY_CONF, "node", (KUBE_PROXY,), url),)),
    ]
    for h in c.etcd:
        dns, ip = split_sans([h.name, h.address, "localhost", "127.0.0.1", "::1"])
        one = (h.name,)
        # kubeadm gives the etcd server cert clientAuth too (etcd's gRPC gateway dials itself)
        ids.append(Identity(f"etcd/{h.name}/server", ETCD_CA, h.name, (), dns, ip, (SERVER, CLIENT),
                            places=pair(one, paths.ETCD_SERVER_CRT, paths.ETCD_SERVER_KEY, "etcd", (ETCD,))))
        ids.append(Identity(f"etcd/{h.name}/peer", ETCD_CA, h.name, (), dns, ip, (SERVER, CLIENT),
                            places=pair(one, paths.ETCD_PEER_CRT, paths.ETCD_PEER_KEY, "etcd", (ETCD,))))
    for h in c.hosts:
        one = (h.name,)
        node = f"system:node:{h.name}"
        # the kubelet's first client certificate: with rotateCertificates the kubelet copies it
        # into its own store (paths.KUBELET_CLIENT_CURRENT) when that is empty or expired, and
        # renews it there through a CSR; a new one from kdeploy (renewal, CA rotation) empties
        # the store so that the kubelet starts over from it
        ids.append(Identity(f"nodes/{h.name}/kubelet-client", CLUSTER_CA, node, ("system:nodes",),
                            places=(P(one, "kubeconfig", paths.KUBELET_CONF, "node", (KUBELET,), url,
                                      run_on_change=(FORGET_KUBELET_CLIENT,)),)))
        dns, ip = split_sans([h.name, h.address])
        ids.append(Identity(f"nodes/{h.name}/kubelet-serving", CLUSTER_CA, node, ("system:nodes",),
                            dns, ip, (SERVER,),
                            places=pair(one, paths.KUBELET_SERVING_CRT, paths.KUBELET_SERVING_KEY,
                                        "node", (KUBELET,))))
    return Table(cas, tuple(ids), extras)


def local_server(c: Cluster) -> str:
    """The apiserver on the host itself: it binds defaults.APISERVER_PORT even when the cluster
    endpoint (a load balancer) uses another port."""
    return f"https://127.0.0.1:{defaults.APISERVER_PORT}"
