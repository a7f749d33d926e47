"""Pure cross-field checks of a Cluster, run before any host is touched."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdeploy.artifacts.catalog import SUPPORTED_MINORS
from kdeploy.model.cluster import Cluster

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    hint: str | None = None
    line: int | None = None
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" + (f" ({self.hint})" if self.hint else "")


# the kubelet's eviction signals (KubeletConfiguration evictionHard)
EVICTION_SIGNALS = ("memory.available", "nodefs.available", "nodefs.inodesFree", "imagefs.available",
                    "imagefs.inodesFree", "containerfs.available", "containerfs.inodesFree", "pid.available")
EVICTION_VALUE = re.compile(r"(\d+(\.\d+)?%|\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?)")


def is_dns_subdomain(name: str) -> bool:
    """RFC 1123 subdomain, as Kubernetes node names must be."""
    return 0 < len(name) <= 253 and all(_LABEL.match(p) for p in name.split("."))


def is_host_name(name: str) -> bool:
    """A DNS name a host can have: an RFC 1123 subdomain whose labels are not all numbers
    (192.0.2.300 or 10.1.1 are mistyped IPv4 addresses, not names; RFC 3696: a top-level
    label is never all-numeric)."""
    return is_dns_subdomain(name) and not all(p.isdigit() for p in name.split("."))


def check_kubernetes_version(version: str) -> str | None:
    """None when supported, else the reason."""
    m = _VERSION.match(version.strip())
    if not m:
        return f"'{version}' is not a Kubernetes version like 1.37.2"
    minor = f"{m.group(1)}.{m.group(2)}"
    if minor not in SUPPORTED_MINORS:
        return f"Kubernetes {minor} is not supported"
    return None


def resolve_path(p: str, cluster: Cluster) -> Path:
    path = Path(os.path.expanduser(p))
    if not path.is_absolute() and cluster.source:
        path = Path(cluster.source).parent / path
    return path


_IMG_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMG_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMG_DOMAIN = rf"(?:{_IMG_DOMAIN_PART}(?:\.{_IMG_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_IMG_NAME_RE = re.compile(rf"^(?:{_IMG_DOMAIN}/)?{_IMG_COMPONENT}(?:/{_IMG_COMPONENT})*$")


def image_pattern_error(pattern: object) -> str | None:
    """Why the kubelet would refuse `pattern` in preloadedImagesVerificationAllowlist (the rules
    of k8s.io/kubernetes pkg/kubelet/images/pullmanager getAllowlistImagePattern in 1.35-1.37),
    or None. A full image name without tag or digest (registry.example.com/team/app), or a
    prefix ending in "/*" (registry.example.com/team/*)."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty image name"
    if pattern != pattern.strip():
        return "leading or trailing spaces are not allowed"
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        if "*" in prefix:
            return "only a final '/*' wildcard is allowed"
        if len(prefix) == 1:
            return "a wildcard needs at least a registry host name before '/*'"
        return None
    if "*" in pattern:
        return "only a final '/*' wildcard is allowed (e.g. registry.example.com/team/*)"
    if "@" in pattern or ":" in pattern.rsplit("/", 1)[-1]:
        return "write the image name without a tag or digest (the kubelet matches every tag)"
    if not _IMG_NAME_RE.match(pattern):
        return "is not a valid image name (lowercase path components, e.g. registry.example.com/team/app)"
    # kubelet 1.35 refuses a name that is not its own normalized form (docker.io/library/nginx,
    # not nginx, docker.io/nginx or index.docker.io/...): it would not start
    first, _, rest = pattern.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        return "write the full name with its registry (docker.io/library/nginx, not nginx)"
    if first == "index.docker.io" or (first == "docker.io" and "/" not in rest):
        return "write Docker Hub names in full: docker.io/library/nginx, docker.io/team/app"
    return None


def check_cluster(c: Cluster, line_for: Callable[[tuple], int | None] = lambda p: None
                  ) -> tuple[list[Problem], list[Problem]]:
    """Return (errors, warnings)."""
    errs: list[Problem] = []
    warns: list[Problem] = []

    def err(path: tuple, msg: str, hint: str | None = None) -> None:
        errs.append(Problem(_dotted(path), msg, hint, line_for(path)))

    def warn(path: tuple, msg: str, hint: str | None = None) -> None:
        warns.append(Problem(_dotted(path), msg, hint, line_for(path), warning=True))

    if not _LABEL.match(c.metadata.name):
        err(("metadata", "name"), f"cluster name '{c.metadata.name}' is not an RFC 1123 label",
            "use lowercase letters, digits and '-', at most 63 characters")

    why = check_kubernetes_version(c.spec.kubernetes.version)
    if why:
        err(("spec", "kubernetes", "version"), why,
            f"use a version of one of the supported minors: {', '.join(SUPPORTED_MINORS)}")

    # hosts: names, addresses, uniqueness
    names: dict[str, int] = {}
    addrs: dict[str, int] = {}
    host_ips = []
    for i, h in enumerate(c.hosts):
        if not is_dns_subdomain(h.name):
            err(("hosts", i, "name"), f"host name '{h.name}' is not a valid RFC 1123 hostname",
                "use lowercase letters, digits, '-' and '.', starting and ending alphanumeric")
        if h.name in names:
            err(("hosts", i, "name"), f"duplicate host name '{h.name}' (also hosts[{names[h.name]}])",
                "give every host a unique name")
        names.setdefault(h.name, i)
        try:
            ip = ipaddress.ip_address(h.address)
            host_ips.append((i, ip))
            key = str(ip)
        except ValueError:
            key = h.address.lower()
            if all(p.isdigit() for p in key.split(".")):
                err(("hosts", i, "address"), f"'{h.address}' is not an IP address: an IPv4 address is "
                    "four numbers from 0 to 255", "correct the typo, e.g. 192.0.2.10")
            elif not is_host_name(key):
                err(("hosts", i, "address"), f"'{h.address}' is neither an IP address nor a DNS name",
                    "use the address kdeploy connects to, e.g. 192.0.2.10")
        if key in addrs:
            err(("hosts", i, "address"),
                f"duplicate address '{h.address}' (also hosts[{addrs[key]}])",
                "give every host its own address")
        addrs.setdefault(key, i)
        ssh = c.ssh_for(h)
        for fld, val in (("keyFile", ssh.key_file),):
            if val and not resolve_path(val, c).is_file():
                src = ("hosts", i, "ssh", fld) if getattr(h.ssh, "key_file") else ("spec", "ssh", fld)
                err(src, f"SSH key file '{val}' does not exist",
                    "create the key (ssh-keygen) or fix the path (relative paths are relative to the inventory)")
        if ssh.bastion and ssh.bastion.key_file and not resolve_path(ssh.bastion.key_file, c).is_file():
            err(("spec", "ssh", "bastion", "keyFile"),
                f"bastion key file '{ssh.bastion.key_file}' does not exist", "fix the path")

    seen_registries: set[str] = set()
    for i, m in enumerate(c.spec.container_runtime.registry_mirrors):
        where = ("spec", "containerRuntime", "registryMirrors", i)
        if m.registry in seen_registries:
            err((*where, "registry"), f"registry {m.registry} has two entries",
                "list all its endpoints in one entry, in the order to try them")
        seen_registries.add(m.registry)
        if m.ca_file and not resolve_path(m.ca_file, c).is_file():
            err((*where, "caFile"), f"CA file '{m.ca_file}' does not exist",
                "fix the path (relative paths are relative to the inventory)")
        if m.auth and not resolve_path(m.auth.password_file, c).is_file():
            err((*where, "auth", "passwordFile"), f"password file '{m.auth.password_file}' does not exist",
                "write the password into that file (mode 0600) or fix the path")

    # roles
    if not c.control_plane:
        err(("hosts",), "no host has the role control-plane",
            "give at least one host the role control-plane")
    n_etcd = len(c.etcd)
    if n_etcd == 0:
        err(("hosts",), "no host has the role etcd",
            "give an odd number of hosts (1, 3 or 5) the role etcd, usually the control-plane hosts")
    elif n_etcd % 2 == 0:
        warn(("hosts",), f"{n_etcd} etcd members: an even count tolerates no more failures than "
             f"{n_etcd - 1}", "use an odd number of etcd members (1, 3, 5)")

    # networks
    net = c.spec.network
    pod = svc = None
    try:
        pod = ipaddress.ip_network(net.pod_cidr, strict=True)
    except ValueError as e:
        err(("spec", "network", "podCIDR"), f"invalid pod CIDR '{net.pod_cidr}': {e}",
            "use a network address with prefix, e.g. 10.244.0.0/16")
    try:
        svc = ipaddress.ip_network(net.service_cidr, strict=True)
    except ValueError as e:
        err(("spec", "network", "serviceCIDR"), f"invalid service CIDR '{net.service_cidr}': {e}",
            "use a network address with prefix, e.g. 10.96.0.0/12")
    if pod and svc:
        if pod.version != svc.version:
            err(("spec", "network", "serviceCIDR"), "pod and service CIDRs are of different IP versions",
                "use IPv4 for both (dual-stack is not supported yet)")
        elif pod.overlaps(svc):
            err(("spec", "network", "serviceCIDR"),
                f"service CIDR {svc} overlaps the pod CIDR {pod}", "pick disjoint ranges")
    if svc:
        host_bits = svc.max_prefixlen - svc.prefixlen
        if host_bits < 4:
            err(("spec", "network", "serviceCIDR"),
                f"service CIDR {svc} is too small: its first address must be the kubernetes "
                f"service IP and the DNS service IP (+10) must fit", "use at least a /28 (IPv4)")
        elif host_bits > 20:
            err(("spec", "network", "serviceCIDR"),
                f"service CIDR {svc} is too large (kube-apiserver accepts at most 20 host bits)",
                "use a /12 or smaller range")
    if pod:
        mask = net.node_cidr_mask_size
        if mask <= pod.prefixlen or mask > pod.max_prefixlen - 2:
            err(("spec", "network", "nodeCIDRMaskSize"),
                f"node CIDR mask /{mask} does not fit in the pod CIDR {pod}",
                f"use a mask between /{pod.prefixlen + 1} and /{pod.max_prefixlen - 2}")
        explicit: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for i, h in enumerate(c.hosts):
            if h.pod_cidr:
                try:
                    hp = ipaddress.ip_network(h.pod_cidr, strict=True)
                except (ValueError, TypeError) as e:
                    err(("hosts", i, "podCIDR"), f"invalid pod CIDR '{h.pod_cidr}': {e}",
                        "e.g. 10.244.3.0/24")
                    continue
                if hp.version != pod.version or not hp.subnet_of(pod):  # type: ignore[arg-type]
                    err(("hosts", i, "podCIDR"), f"{hp} is not inside the pod CIDR {pod}",
                        "pick a subnet of spec.network.podCIDR")
                    continue
                for j, other in explicit:
                    if hp.overlaps(other):
                        err(("hosts", i, "podCIDR"), f"{hp} overlaps hosts[{j}].podCIDR {other}",
                            "give every node its own pod CIDR")
                explicit.append((i, hp))
        if pod.prefixlen < mask <= pod.max_prefixlen - 2:
            subnets = 2 ** (mask - pod.prefixlen)
            taken = _taken_subnets(mask, explicit)
            capacity = subnets - taken
            need = sum(1 for h in c.hosts if not h.pod_cidr)
            if capacity < need:
                err(("spec", "network", "podCIDR"),
                    f"pod CIDR {pod} with /{mask} per node has room for {capacity} more nodes, "
                    f"the inventory has {need} without an explicit podCIDR"
                    if explicit else
                    f"pod CIDR {pod} with /{mask} per node has room for {subnets} nodes, "
                    f"the inventory has {len(c.hosts)}",
                    "use a larger pod CIDR or a larger nodeCIDRMaskSize")
    for i, ip in host_ips:
        for label, n in (("podCIDR", pod), ("serviceCIDR", svc)):
            if n and ip.version == n.version and ip in n:
                err(("hosts", i, "address"), f"host address {ip} lies inside the {label} {n}",
                    f"the host network must not overlap spec.network.{label}; change one of them")
    if not _LABEL.match(net.cluster_domain.split(".")[0]) or not is_dns_subdomain(net.cluster_domain):
        err(("spec", "network", "clusterDomain"), f"'{net.cluster_domain}' is not a DNS domain",
            "e.g. cluster.local")

    ep = c.spec.control_plane.endpoint
    if ep:
        from kdeploy.model.cluster import _split_host_port
        try:
            host, sep, port = _split_host_port(ep)
            if not host or (sep and (port is None or not 1 <= port <= 65535)):
                raise ValueError
            try:
                ipaddress.ip_address(host)
            except ValueError:
                if not is_host_name(host.lower()):
                    raise
        except ValueError:
            err(("spec", "controlPlane", "endpoint"), f"'{ep}' is not host[:port]",
                "e.g. 192.0.2.10:6443 or api.example.com")
    for i, pattern in enumerate(c.spec.kubelet.preloaded_images):
        why = image_pattern_error(pattern)
        if why:
            err(("spec", "kubelet", "preloadedImages", i), f"'{pattern}': {why}",
                "a full image name with its registry, without tag or digest "
                "(registry.example.com/team/app), or a prefix ending in '/*' "
                "(registry.example.com/team/*)")
    for signal, value in (c.spec.kubelet.eviction_hard or {}).items():
        if signal not in EVICTION_SIGNALS:
            err(("spec", "kubelet", "evictionHard", signal), f"unknown eviction signal '{signal}'",
                "one of " + ", ".join(EVICTION_SIGNALS))
        elif not EVICTION_VALUE.fullmatch(str(value)):
            err(("spec", "kubelet", "evictionHard", signal), f"'{value}' is not a quantity or a percentage",
                "e.g. 500Mi, 1Gi or 10%")
    if not c.spec.kubelet.fail_cgroup_v1:
        warn(("spec", "kubelet", "failCgroupV1"),
             "kubelet will run on cgroup v1 hosts (deprecated upstream)",
             "fine for the local lab; move real hosts to cgroup v2")
    return errs, warns


def _taken_subnets(mask: int, explicit) -> int:
    """How many /mask node subnets the explicit per-node CIDRs take (wholly or in part)."""
    taken: set = set()
    for _, hp in explicit:
        if hp.prefixlen >= mask:
            taken.add(hp.supernet(new_prefix=mask))
        else:
            taken.update(hp.subnets(new_prefix=mask))
    return len(taken)


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out
