"""One typed source of defaults: ports, CIDRs, paths on hosts. Versions (the default and the
supported Kubernetes versions, component pins) live in kdeploy.artifacts.catalog only."""
from __future__ import annotations

POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
NODE_CIDR_MASK_SIZE = 24
CLUSTER_DOMAIN = "cluster.local"

APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
KUBELET_PORT = 10250
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBE_PROXY_HEALTHZ_PORT = 10256
# the node-local API load balancer (nginx stream) on every node, when no external endpoint is set
API_LB_PORT = 7443

# paths on hosts
BIN_DIR = "/usr/local/bin"
CNI_BIN_DIR = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"
K8S_DIR = "/etc/kubernetes"
PKI_DIR = "/etc/kubernetes/pki"
ETCD_PKI_DIR = "/etc/kubernetes/pki/etcd"
ETCD_DATA_DIR = "/var/lib/etcd"        # under /var/lib: the etcd unit's StateDirectory
ETCD_USER = "etcd"                      # etcd's system user and group (sysusers.d)
KUBELET_DIR = "/var/lib/kubelet"
KUBE_PROXY_DIR = "/var/lib/kube-proxy"
CONTAINERD_CONF = "/etc/containerd/config.toml"
CONTAINERD_REGISTRY_DIR = "/etc/containerd/certs.d"  # <registry>/hosts.toml (registry mirrors)
CONTAINERD_ROOT = "/var/lib/containerd"
CONTAINERD_STATE = "/run/containerd"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CNI_STATE_DIR = "/var/lib/cni"          # host-local IPAM's allocations
CNI_BRIDGE = "cni0"                     # the bridge of kdeploy's CNI config
SYSTEMD_DIR = "/etc/systemd/system"
AUDIT_LOG = "/var/log/kubernetes/audit.log"
KDEPLOY_DIR = "/var/lib/kdeploy"
KDEPLOY_LIB_DIR = "/usr/local/lib/kdeploy"   # files kdeploy installs outside the usual bin dirs
POD_ROUTES_SCRIPT = f"{KDEPLOY_LIB_DIR}/pod-routes.sh"   # the routes kdeploy-pod-routes.service sets

# hardening (docs/security.md)
# TLS 1.2 suites of the apiserver, etcd and the kubelet: ECDHE key exchange and AEAD ciphers only
# (TLS 1.3 suites are not configurable in Go and are all strong)
TLS_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
)
KUBELET_POD_PIDS_LIMIT = 4096           # per pod: a fork bomb cannot exhaust the node's PIDs
# Pod Security admission for namespaces without their own labels
POD_SECURITY_ENFORCE = "baseline"
POD_SECURITY_WARN_AUDIT = "restricted"
POD_SECURITY_EXEMPT_NAMESPACES = ("kube-system",)

# local state beside the inventory
STATE_DIRNAME = ".kdeploy"

# certificates
CA_VALIDITY_DAYS = 3650
CERT_VALIDITY_DAYS = 365
RENEW_BEFORE_DAYS = 30
