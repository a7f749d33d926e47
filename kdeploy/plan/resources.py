"""What kdeploy places on hosts, as data. Phases produce these; only the engine acts on them."""
from __future__ import annotations

import hashlib
from enum import StrEnum
from dataclasses import dataclass, field

class Phase(StrEnum):
    """The phases of a plan, in the order `up` runs them. A str: JSON and comparisons with
    plain names ("etcd") work unchanged."""
    os = "os"                        # kernel modules, sysctls, /etc/hosts entries
    etcd = "etcd"                    # etcd members (their binaries too: placed at the host's turn)
    api_lb = "api-lb"                # node-local API load balancer: learns new apiservers before
                                     # a running one restarts, drops a leaving one first
    control_plane = "control-plane"  # kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
    runtime = "runtime"              # containerd, runc, CNI plugins and config, crictl
    images = "images"                # image archives imported into containerd (before anything needs them)
    node = "node"                    # kubelet, kube-proxy, pod routes
    addons = "addons"                # applied through the API: RBAC, CoreDNS, node labels/taints


PHASES: tuple[Phase, ...] = tuple(Phase)
# phases whose commands on a host do not depend on each other (one `ctr images import` per
# archive): the engine runs them side by side
INDEPENDENT_RUNS = frozenset({Phase.images})
# `systemctl enable` reloads systemd's whole configuration (its generators too) unless told not
# to; a unit's file is loaded by then (the phase's daemon-reload), and the [Install] links
# matter at the next boot
ENABLE = ("systemctl", "--no-reload", "enable")


@dataclass(frozen=True)
class File:
    """A file kdeploy owns on a host. content is the full desired content."""
    path: str
    content: bytes
    phase: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    secret: bool = False                 # never shown in diffs or logs: checksums only
    restarts: tuple[str, ...] = ()       # systemd units to restart when this file changes
    run_on_change: tuple[tuple[str, ...], ...] = ()   # argv lists run after it changed (sysctl -p F)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def __repr__(self) -> str:  # never leak secret content into logs/tracebacks
        return f"File({self.path!r}, sha256={self.sha256[:12]}, mode={oct(self.mode)})"


@dataclass(frozen=True)
class Block:
    """A marked block kdeploy owns inside a file it does not own (e.g. /etc/hosts)."""
    path: str
    content: str
    phase: str
    marker: str = "kdeploy"              # "# BEGIN kdeploy" ... "# END kdeploy"
    run_on_change: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Binary:
    """A file pushed from the deployer's artifact cache (verified by sha256)."""
    path: str
    local_path: str
    sha256: str
    phase: str = "node"
    mode: int = 0o755
    restarts: tuple[str, ...] = ()
    run_on_change: tuple[tuple[str, ...], ...] = ()   # e.g. import an image archive


@dataclass(frozen=True)
class Unit:
    """A systemd unit that must be enabled and running (its file is a File resource)."""
    name: str
    phase: str
    enabled: bool = True
    running: bool = True


@dataclass(frozen=True)
class HostResources:
    host: str
    files: tuple[File, ...] = ()
    blocks: tuple[Block, ...] = ()
    binaries: tuple[Binary, ...] = ()
    units: tuple[Unit, ...] = ()
    extra: dict = field(default_factory=dict)
