"""Host checks that need gathered facts, run before anything is written. Pure: facts -> problems."""
from __future__ import annotations

from kdeploy.model import Cluster

SUPPORTED_OS = {"debian": ("11", "12", "13"), "ubuntu": ("22.04", "24.04")}
MIN_DISK = 2 << 30
MAX_SKEW = 30.0

def ports_for(cluster: Cluster, host) -> dict[int, str]:
    """port -> owning unit, of every component on the host (kdeploy.components)."""
    from kdeploy.components import ports_for as component_ports
    return component_ports(cluster, host)


def check_host(cluster: Cluster, host, facts, arch: str = "amd64") -> list[str]:
    """Every problem of one host, as sentences that say what to do."""
    p: list[str] = []
    if not facts.has_systemd:
        p.append("systemd is not PID 1: kdeploy runs components as systemd units")
    os_id, ver = facts.os_id, facts.os_version
    if os_id not in SUPPORTED_OS or (ver and ver not in SUPPORTED_OS[os_id]):
        p.append(f"unsupported OS {os_id or '?'} {ver}: use Debian 11-13 or Ubuntu 22.04/24.04")
    if cluster.node_local_lb and os_id == "debian" and ver == "11":
        p.append("Debian 11 cannot run the node-local API load balancer (nginx of Debian 12 needs "
                 "glibc 2.34 and OpenSSL 3): upgrade the host, or set spec.controlPlane.endpoint "
                 "to your own load balancer")
    if facts.arch not in ("amd64", "arm64"):
        p.append(f"unsupported architecture {facts.arch or '?'}: amd64 or arm64 only")
    elif facts.arch != arch:
        p.append(f"the host is {facts.arch}, the artifacts are {arch}: pass --arch {facts.arch}")
    if facts.swap_active:
        p.append("swap is on: turn it off (swapoff -a, and remove it from /etc/fstab); "
                 "kubelet refuses to run with swap")
    for m, ok in facts.modules_ok.items():
        if not ok:
            p.append(f"kernel module {m} is neither loaded, built in nor loadable: install the "
                     "kernel's modules package (linux-modules-extra / linux-image)")
    for port, unit in sorted(ports_for(cluster, host).items()):
        if facts.port_in_use(port) and facts.unit(unit).get("active") != "active":
            p.append(f"port {port} is in use by something other than {unit}: stop it")
    if abs(facts.clock_skew) > MAX_SKEW + facts.rtt:
        p.append(f"clock is {facts.clock_skew:+.0f} s off this machine's: certificates would not "
                 "be valid yet or already expired; run NTP (systemd-timesyncd, chrony)")
    for mount, free in sorted(facts.disk_free_bytes.items()):
        if free < MIN_DISK:
            p.append(f"only {free >> 20} MiB free on {mount}: at least {MIN_DISK >> 30} GiB needed")
    return p


def check_all(cluster: Cluster, facts: dict, arch: str = "amd64") -> dict[str, list[str]]:
    out = {}
    for h in cluster.hosts:
        probs = check_host(cluster, h, facts[h.name], arch)
        if probs:
            out[h.name] = probs
    return out
