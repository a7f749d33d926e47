"""The file table: every file kdeploy renders onto hosts, as data.

Each row names its template, host path, phase, the units a change restarts and which hosts
get it. render_host() walks this table; docs/render.md describes the same table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kdeploy.render.context import (
    API_LB_CONFIG, API_LB_UNIT, AUDIT_POLICY, CNI_CONFLIST, CRICTL_CONF, KUBE_PROXY_CONFIG, KUBELET_CONFIG, MODULES_CONF,
    SCHEDULER_CONFIG, SYSCTL_CONF, unit_path,
)

HostPred = Callable[[dict], bool]


def _all(h: dict) -> bool:
    return True


def _etcd(h: dict) -> bool:
    return h["is_etcd"]


def _cp(h: dict) -> bool:
    return h["is_control_plane"]


def _lb(h: dict) -> bool:
    return h["api_lb"]


@dataclass(frozen=True)
class Row:
    template: str
    path: str
    phase: str
    restarts: tuple[str, ...] = ()
    run_on_change: tuple[tuple[str, ...], ...] = ()
    hosts: HostPred = _all
    hosts_doc: str = "all"
    mode: int = 0o644


FILES: tuple[Row, ...] = (
    # os
    # load now what the kernel lacks (built-in modules need no modprobe: overlay shows in
    # /proc/filesystems, br_netfilter as /proc/sys/net/bridge); at boot systemd-modules-load
    # reads the file. Container machines and kernels with these built in run no modprobe.
    Row("os/modules-load.conf.j2", MODULES_CONF, "os",
        run_on_change=(("sh", "-c", "{ grep -qw overlay /proc/filesystems || modprobe overlay; } && "
                        "{ [ -d /proc/sys/net/bridge ] || modprobe br_netfilter; }"),)),
    Row("os/sysctl.conf.j2", SYSCTL_CONF, "os", run_on_change=(("sysctl", "-p", SYSCTL_CONF),)),
    # etcd
    Row("etcd/etcd.service.j2", unit_path("etcd"), "etcd", ("etcd",), hosts=_etcd, hosts_doc="etcd"),
    # control plane
    Row("control-plane/audit-policy.yaml.j2", AUDIT_POLICY, "control-plane", ("kube-apiserver",),
        hosts=_cp, hosts_doc="control-plane", mode=0o600),
    Row("control-plane/kube-apiserver.service.j2", unit_path("kube-apiserver"), "control-plane",
        ("kube-apiserver",), hosts=_cp, hosts_doc="control-plane"),
    Row("control-plane/kube-controller-manager.service.j2", unit_path("kube-controller-manager"),
        "control-plane", ("kube-controller-manager",), hosts=_cp, hosts_doc="control-plane"),
    Row("control-plane/kube-scheduler.yaml.j2", SCHEDULER_CONFIG, "control-plane",
        ("kube-scheduler",), hosts=_cp, hosts_doc="control-plane"),
    Row("control-plane/kube-scheduler.service.j2", unit_path("kube-scheduler"), "control-plane",
        ("kube-scheduler",), hosts=_cp, hosts_doc="control-plane"),
    # runtime (every host is a node)
    Row("containerd/config.toml.j2", "/etc/containerd/config.toml", "runtime", ("containerd",)),
    Row("containerd/containerd.service.j2", unit_path("containerd"), "runtime", ("containerd",)),
    Row("cni/10-kdeploy.conflist.j2", CNI_CONFLIST, "runtime"),
    Row("containerd/crictl.yaml.j2", CRICTL_CONF, "runtime"),
    # node: the API load balancer first (kubelet and kube-proxy reach the API through it);
    # a new backend list is applied by a reload, never a restart
    Row("api-lb/nginx.conf.j2", API_LB_CONFIG, "node",
        run_on_change=(("systemctl", "try-reload-or-restart", f"{API_LB_UNIT}.service"),),
        hosts=_lb, hosts_doc="all (no external endpoint)"),
    Row("api-lb/kdeploy-api-lb.service.j2", unit_path(API_LB_UNIT), "node", (API_LB_UNIT,),
        hosts=_lb, hosts_doc="all (no external endpoint)"),
    Row("node/kdeploy-pod-routes.service.j2", unit_path("kdeploy-pod-routes"), "node",
        ("kdeploy-pod-routes",)),
    Row("node/kubelet-config.yaml.j2", KUBELET_CONFIG, "node", ("kubelet",)),
    Row("node/kubelet.service.j2", unit_path("kubelet"), "node", ("kubelet",)),
    Row("node/kube-proxy-config.yaml.j2", KUBE_PROXY_CONFIG, "node", ("kube-proxy",)),
    Row("node/kube-proxy.service.j2", unit_path("kube-proxy"), "node", ("kube-proxy",)),
)

# (unit, phase, hosts) in start order
UNITS: tuple[tuple[str, str, HostPred], ...] = (
    ("etcd", "etcd", _etcd),
    ("kube-apiserver", "control-plane", _cp),
    ("kube-controller-manager", "control-plane", _cp),
    ("kube-scheduler", "control-plane", _cp),
    ("containerd", "runtime", _all),
    ("kdeploy-pod-routes", "node", _all),
    (API_LB_UNIT, "node", _lb),
    ("kubelet", "node", _all),
    ("kube-proxy", "node", _all),
)
