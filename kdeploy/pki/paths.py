"""Where PKI material and kubeconfigs live on hosts (kubeadm's layout). The contract between
kdeploy.pki (which produces these files) and the templates (which reference them)."""
from __future__ import annotations

PKI = "/etc/kubernetes/pki"

CA_CRT = f"{PKI}/ca.crt"
CA_KEY = f"{PKI}/ca.key"                         # control-plane only (controller-manager signs CSRs)
# the one CA certificate that matches ca.key (controller-manager's --cluster-signing-cert-file
# refuses a bundle, and ca.crt is one while the CA is rotated)
CLUSTER_SIGNING_CRT = f"{PKI}/cluster-signing-ca.crt"
APISERVER_CRT = f"{PKI}/apiserver.crt"
APISERVER_KEY = f"{PKI}/apiserver.key"
APISERVER_KUBELET_CLIENT_CRT = f"{PKI}/apiserver-kubelet-client.crt"
APISERVER_KUBELET_CLIENT_KEY = f"{PKI}/apiserver-kubelet-client.key"
APISERVER_ETCD_CLIENT_CRT = f"{PKI}/apiserver-etcd-client.crt"
APISERVER_ETCD_CLIENT_KEY = f"{PKI}/apiserver-etcd-client.key"
FRONT_PROXY_CA_CRT = f"{PKI}/front-proxy-ca.crt"
FRONT_PROXY_CLIENT_CRT = f"{PKI}/front-proxy-client.crt"
FRONT_PROXY_CLIENT_KEY = f"{PKI}/front-proxy-client.key"
SA_KEY = f"{PKI}/sa.key"
SA_PUB = f"{PKI}/sa.pub"

ETCD_CA_CRT = f"{PKI}/etcd/ca.crt"
ETCD_SERVER_CRT = f"{PKI}/etcd/server.crt"
ETCD_SERVER_KEY = f"{PKI}/etcd/server.key"
ETCD_PEER_CRT = f"{PKI}/etcd/peer.crt"
ETCD_PEER_KEY = f"{PKI}/etcd/peer.key"
ETCD_HEALTHCHECK_CLIENT_CRT = f"{PKI}/etcd/healthcheck-client.crt"   # etcdctl on etcd members
ETCD_HEALTHCHECK_CLIENT_KEY = f"{PKI}/etcd/healthcheck-client.key"

KUBELET_PKI_DIR = "/var/lib/kubelet/pki"
KUBELET_SERVING_CRT = f"{KUBELET_PKI_DIR}/kubelet.crt"
KUBELET_SERVING_KEY = f"{KUBELET_PKI_DIR}/kubelet.key"
# the kubelet's own client certificate store (rotateCertificates): a symlink it maintains to
# kubelet-client-<time>.pem; seeded by the kubelet from KUBELET_CONF, never written by kdeploy
KUBELET_CLIENT_CURRENT = f"{KUBELET_PKI_DIR}/kubelet-client-current.pem"

ENCRYPTION_CONFIG = "/etc/kubernetes/encryption-config.yaml"

ADMIN_CONF = "/etc/kubernetes/admin.conf"
CONTROLLER_MANAGER_CONF = "/etc/kubernetes/controller-manager.conf"
SCHEDULER_CONF = "/etc/kubernetes/scheduler.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBE_PROXY_CONF = "/etc/kubernetes/kube-proxy.conf"
