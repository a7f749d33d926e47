"""The values templates see, computed once per cluster.

Everything that is O(hosts) (the /etc/hosts block, the pod route of every node, the etcd
member list) is built once here, so rendering all hosts stays O(n) in template work; only
the per-host route list (every node but this one) is O(n) per host, built by joining
pre-rendered lines.
"""
from __future__ import annotations

import ipaddress
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from kdeploy.artifacts.catalog import NGINX_BIN, NGINX_STREAM_MODULE
from kdeploy.model import defaults
from kdeploy.model.cluster import Cluster, Host
from kdeploy.pki import paths as pki_paths
from kdeploy.render import env as _env
from kdeploy.render.images import Images, images_for, preloaded_allowlist
from kdeploy.render.labels import CONTROL_PLANE_ROLE_LABEL, CONTROL_PLANE_TAINT, split_labels

# host paths of the files rendered here (PKI paths live in kdeploy.pki.paths)
MODULES_CONF = "/etc/modules-load.d/kdeploy.conf"
SYSCTL_CONF = "/etc/sysctl.d/99-kdeploy.conf"
HOSTS_FILE = "/etc/hosts"
AUDIT_POLICY = f"{defaults.K8S_DIR}/audit-policy.yaml"
ADMISSION_CONFIG = f"{defaults.K8S_DIR}/admission-config.yaml"
ETCD_SYSUSERS = "/etc/sysusers.d/kdeploy-etcd.conf"
SCHEDULER_CONFIG = f"{defaults.K8S_DIR}/kube-scheduler.yaml"
KUBELET_CONFIG = f"{defaults.KUBELET_DIR}/config.yaml"
KUBE_PROXY_CONFIG = f"{defaults.KUBE_PROXY_DIR}/config.yaml"
CNI_CONFLIST = f"{defaults.CNI_CONF_DIR}/10-kdeploy.conflist"
CRICTL_CONF = "/etc/crictl.yaml"
ADDONS_DIR = f"{defaults.K8S_DIR}/addons"
RUNC = "/usr/local/sbin/runc"          # where the artifact catalog installs runc
RESOLV_CONF = "/etc/resolv.conf"
ETCD_METRICS_PORT = 2381
POD_ROUTE_PROTO = 77     # the routing protocol number kdeploy's pod routes carry (ip route ... proto)
ETCD_BOOTSTRAP_ENV = f"{defaults.K8S_DIR}/etcd-bootstrap.env"
# the node-local API load balancer: nginx + its stream module from the artifact set
API_LB_CONFIG = f"{defaults.K8S_DIR}/api-lb/nginx.conf"
API_LB_UNIT = "kdeploy-api-lb"

# the identities kdeploy's PKI issues (kubeadm's names); see _identities()
APISERVER_KUBELET_CLIENT_CN = "kube-apiserver-kubelet-client"
FRONT_PROXY_CLIENT_CN = "front-proxy-client"


def unit_path(name: str) -> str:
    return f"{defaults.SYSTEMD_DIR}/{name}.service"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def url_addr(address: str) -> str:
    ip = _ip(address)
    return f"[{ip}]" if ip is not None and ip.version == 6 else address


def _identities(cluster: Cluster) -> tuple[str, tuple[str, ...], str]:
    """(kubelet-client user, its groups to bind, front-proxy client CN) as kdeploy.pki issues
    them; kubeadm's names when the PKI package is not importable. system:masters is never
    bound (it bypasses RBAC anyway)."""
    user, groups, fp = APISERVER_KUBELET_CLIENT_CN, (), FRONT_PROXY_CLIENT_CN
    try:
        from kdeploy.pki.identities import build_table
    except ImportError:  # pragma: no cover - the PKI package is part of kdeploy
        return user, groups, fp
    # these two identities do not depend on the workers: build the table over the control
    # plane only (the full table is O(hosts); TODO: ask kdeploy.pki for a per-name lookup)
    small = cluster.model_copy(update={"hosts": cluster.control_plane})
    for ident in build_table(small).identities:
        if ident.name == "apiserver-kubelet-client":
            user = ident.cn
            groups = tuple(o for o in ident.orgs if o != "system:masters")
        elif ident.name == "front-proxy-client":
            fp = ident.cn
    return user, groups, fp


@dataclass(frozen=True)
class ClusterContext:
    cluster: Cluster
    base: dict[str, Any]                 # what every template sees
    hosts_block: str                     # /etc/hosts block content (same on every host)
    routes_text: str                     # the rendered route line of every host, concatenated
    route_spans: dict[str, tuple[int, int]]   # host name -> its line's span in routes_text
    ips: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None]  # name -> IP (None: DNS name)
    images: Images

    def routes_for(self, host: Host) -> str:
        """Every route line but this host's own: two slices of the precomputed text."""
        start, end = self.route_spans[host.name]
        return self.routes_text[:start] + self.routes_text[end:]


def _build(cluster: Cluster, images: Images | None = None) -> ClusterContext:
    net = cluster.spec.network
    images = images or images_for(cluster.version)
    pki = {k: getattr(pki_paths, k) for k in dir(pki_paths) if k.isupper()}
    etcd_members = cluster.etcd
    kc_user, kc_groups, fp_cn = _identities(cluster)
    base: dict[str, Any] = {
        "cluster_name": cluster.name,
        "version": cluster.version,
        "bin_dir": defaults.BIN_DIR,
        "pod_routes_script": defaults.POD_ROUTES_SCRIPT,
        "pki": pki,
        "network": {
            "pod_cidr": net.pod_cidr,
            "service_cidr": net.service_cidr,
            "cluster_domain": net.cluster_domain,
            "dns_ip": cluster.dns_service_ip,
            "kubernetes_service_ip": cluster.kubernetes_service_ip,
            "route_proto": POD_ROUTE_PROTO,
            "node_pod_cidrs": " ".join(cluster.node_pod_cidrs.values()),
        },
        "etcd": {
            "data_dir": defaults.ETCD_DATA_DIR,
            "client_port": defaults.ETCD_CLIENT_PORT,
            "peer_port": defaults.ETCD_PEER_PORT,
            "metrics_port": ETCD_METRICS_PORT,
            "token": f"{cluster.name}-etcd",
            "bootstrap_env": ETCD_BOOTSTRAP_ENV,
            "user": defaults.ETCD_USER,
            "state_directory": defaults.ETCD_DATA_DIR.removeprefix("/var/lib/"),
            "initial_cluster_state": "new",   # a joining member's: kdeploy.verbs.membership
            "initial_cluster": ",".join(
                f"{h.name}=https://{url_addr(h.address)}:{defaults.ETCD_PEER_PORT}"
                for h in etcd_members),
            "servers": ",".join(
                f"https://{url_addr(h.address)}:{defaults.ETCD_CLIENT_PORT}" for h in etcd_members),
        },
        "apiserver": {
            "port": defaults.APISERVER_PORT,
            "url": cluster.api_server_url,
            "audit_log": defaults.AUDIT_LOG,
            "audit_policy": AUDIT_POLICY,
            "admission_config": ADMISSION_CONFIG,
            "sa_issuer": f"https://kubernetes.default.svc.{net.cluster_domain}",
            "front_proxy_client_cn": fp_cn,
        },
        "api_lb": {
            "port": defaults.API_LB_PORT,
            "config": API_LB_CONFIG,
            "bin": NGINX_BIN,
            "module": NGINX_STREAM_MODULE,
            "servers": [f"{url_addr(h.address)}:{defaults.APISERVER_PORT}"
                        for h in cluster.control_plane],
            "connect_timeout": "1s",
            "fail_timeout": "5s",
        },
        "scheduler": {"config": SCHEDULER_CONFIG},
        "runtime": {
            "config": defaults.CONTAINERD_CONF,
            "socket": defaults.CONTAINERD_SOCKET,
            "root": defaults.CONTAINERD_ROOT,
            "state": defaults.CONTAINERD_STATE,
            "cni_bridge": defaults.CNI_BRIDGE,
            "pause_image": images.pause,
            "registry_config_path": defaults.CONTAINERD_REGISTRY_DIR,
            "runc": RUNC,
            "systemd_cgroup": cluster.spec.container_runtime.cgroup_driver == "systemd",
            "restrict_oom_score_adj": cluster.spec.container_runtime.restrict_oom_score_adj,
            "cni_bin_dir": defaults.CNI_BIN_DIR,
            "cni_conf_dir": defaults.CNI_CONF_DIR,
        },
        "kubelet": {
            "config": KUBELET_CONFIG,
            "cgroup_driver": cluster.spec.container_runtime.cgroup_driver,
            "fail_cgroup_v1": cluster.spec.kubelet.fail_cgroup_v1,
            "max_pods": cluster.spec.kubelet.max_pods,
            "eviction_hard": dict(cluster.spec.kubelet.eviction_hard or {}),
            "pod_pids_limit": defaults.KUBELET_POD_PIDS_LIMIT,
            "resolv_conf": RESOLV_CONF,
            # images the kubelet uses when present without checking pull credentials (even
            # while a pull of the same image keeps failing): the ones kdeploy preloads plus the
            # operator's; empty = the kubelet's default policy (docs/artifacts.md)
            "preloaded_images": preloaded_allowlist(images, cluster.spec.kubelet.preloaded_images),
        },
        "kube_proxy": {
            "config": KUBE_PROXY_CONFIG,
            "mode": cluster.spec.kube_proxy.mode,
            "conntrack_max_per_core": cluster.spec.kube_proxy.conntrack_max_per_core,
        },
        "coredns": {"image": images.coredns, "version": images.coredns_version, "replicas": 2},
        "kubelet_client": {"user": kc_user, "groups": list(kc_groups)},
        "tls_cipher_suites": list(defaults.TLS_CIPHER_SUITES),
        "pod_security": {
            "enforce": defaults.POD_SECURITY_ENFORCE,
            "warn": defaults.POD_SECURITY_WARN_AUDIT,
            "audit": defaults.POD_SECURITY_WARN_AUDIT,
            "exempt_namespaces": list(defaults.POD_SECURITY_EXEMPT_NAMESPACES),
        },
    }
    environment = _env.environment()
    base = _env.globals_merged(base, environment)
    ips = {h.name: _ip(h.address) for h in cluster.hosts}
    hosts_entries = [{"address": h.address, "name": h.name}
                     for h in cluster.hosts if ips[h.name] is not None]
    hosts_block = _env.render("os/hosts.j2", {**base, "hosts_entries": hosts_entries}, environment,
                              with_globals=True)
    cidrs = cluster.node_pod_cidrs
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    pos = 0
    for h in cluster.hosts:
        line = (_env.render("node/pod-route.j2", {**base, "pod_cidr": cidrs[h.name], "address": h.address},
                            environment, with_globals=True)
                if ips[h.name] is not None else "")
        parts.append(line)
        spans[h.name] = (pos, pos + len(line))
        pos += len(line)
    return ClusterContext(cluster, base, hosts_block, "".join(parts), spans, ips, images)


_lock = threading.Lock()
_cache: dict[tuple[int, Images | None], tuple[weakref.ref, ClusterContext]] = {}


def cluster_context(cluster: Cluster, images: Images | None = None) -> ClusterContext:
    """The context of `cluster`, built once per Cluster object (models are frozen) and image
    set (None: the catalog's refs, nothing preloaded; kdeploy.render.images)."""
    key = (id(cluster), images)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is cluster:
            return hit[1]
    ctx = _build(cluster, images)
    with _lock:
        for k in [k for k, (ref, _) in _cache.items() if ref() is None]:
            del _cache[k]
        _cache[key] = (weakref.ref(cluster), ctx)
    return ctx


def host_context(ctx: ClusterContext, host: Host) -> dict[str, Any]:
    """Per-host values (the `host` variable of the templates)."""
    ip = ctx.ips[host.name]
    control_plane, worker = host.has("control-plane"), host.has("worker")
    own, deferred = split_labels(dict(host.labels))
    if control_plane:
        deferred = {CONTROL_PLANE_ROLE_LABEL: "", **deferred}
    taints = ([{"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}]
              if control_plane and not worker else [])
    pod_net = ctx.cluster.pod_network
    return {
        "name": host.name,
        "address": host.address,
        "ip": str(ip) if ip is not None else None,
        "url_addr": f"[{ip}]" if ip is not None and ip.version == 6 else host.address,
        "listen_url_addr": (f"[{ip}]" if ip.version == 6 else str(ip)) if ip is not None
        else ("[::]" if pod_net.version == 6 else "0.0.0.0"),
        "bind_address": str(ip) if ip is not None else "0.0.0.0",
        "is_control_plane": control_plane,
        "is_etcd": host.has("etcd"),
        "is_worker": worker,
        "api_lb": ctx.cluster.node_local_lb,
        "pod_cidr": ctx.cluster.node_pod_cidrs[host.name],
        "default_route": "::/0" if pod_net.version == 6 else "0.0.0.0/0",
        "taints": taints,
        "node_labels": ",".join(f"{k}={v}" for k, v in own.items()),
        "own_labels": own,
        "deferred_labels": deferred,
        "routes": ctx.routes_for(host),
    }
