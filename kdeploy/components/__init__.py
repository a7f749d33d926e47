"""One module per component: what it places on hosts and how it is checked, in one place.

A Component declares its rendered files (template rows), its systemd units, the artifact
files it installs (and which unit each one feeds), the ports it listens on, the gates a host
must pass after the component changed there (`up`), and the stricter gates of a rolling
upgrade. Everything else reads these declarations: render (the file table), plan (binary
placement), preflight (ports), the engine (gates) and `kdeploy upgrade` (rollout gates).
Adding a component is adding a module here and listing it in COMPONENTS.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from kdeploy.execute.steps import Gate
from kdeploy.plan.resources import Phase

HostPred = Callable[[dict], bool]       # on render.context.host_context(...) values

# CIS 1.1.x / 4.1.x: the units and config files of the control plane, etcd and the kubelet are
# root:root 0600 (only root, which runs them, reads them; kubeconfigs and keys are 0600 as secrets)
PRIVATE = 0o600


@dataclass(frozen=True)
class Row:
    """One rendered file: its template, host path, phase, the units a change restarts, the
    commands a change runs, and which hosts get it (the component's hosts)."""
    template: str
    path: str
    phase: str = ""                      # default: the component's phase
    restarts: tuple[str, ...] = ()
    run_on_change: tuple[tuple[str, ...], ...] = ()
    mode: int = 0o644
    hosts: HostPred = lambda h: True
    hosts_doc: str = "all"


@dataclass(frozen=True)
class Binary:
    """An artifact file the component installs (by catalog name) and the unit it feeds."""
    name: str
    restarts: str | None = None
    import_image: bool = False           # an image archive: `ctr images import` on change


_ROLE_PRED: dict[str, HostPred] = {
    "node": lambda h: True,
    "etcd": lambda h: h["is_etcd"],
    "control-plane": lambda h: h["is_control_plane"],
}


@dataclass(frozen=True)
class Component:
    name: str
    phase: Phase
    role: str = "node"                   # node (every host) | etcd | control-plane
    files: tuple[Row, ...] = ()
    units: tuple[str, ...] = ()          # started in COMPONENTS order
    binaries: tuple[Binary, ...] = ()
    ports: tuple[int, ...] = ()          # owned by units[0]
    gates: tuple[Gate, ...] = ()         # after `up` changed it
    rollout_gates: tuple[Gate, ...] = () # after a rolling upgrade changed a host
    only_with_api_lb: bool = False       # deployed when no external endpoint is set

    def on(self, h: dict) -> bool:
        """Does this component run on the host (host_context values)?"""
        return _ROLE_PRED[self.role](h) and (h["api_lb"] or not self.only_with_api_lb)

    def on_host(self, cluster, host) -> bool:
        """The same for model objects (preflight, plan)."""
        if self.only_with_api_lb and not cluster.node_local_lb:
            return False
        return self.role == "node" or host.has(self.role)


def _registry():
    from kdeploy.components import (api_lb, apiserver, containerd, controller_manager, etcd,
                                    images, kube_proxy, kubelet, os, pod_routes, scheduler)
    return (os.COMPONENT, etcd.COMPONENT, api_lb.COMPONENT, apiserver.COMPONENT,
            controller_manager.COMPONENT, scheduler.COMPONENT, containerd.COMPONENT,
            images.COMPONENT, pod_routes.COMPONENT, kubelet.COMPONENT, kube_proxy.COMPONENT)


COMPONENTS: tuple[Component, ...] = _registry()


def file_rows() -> tuple[tuple[Component, Row], ...]:
    """(component, row) of every rendered file, the row's phase and hosts filled in."""
    out = []
    for c in COMPONENTS:
        for r in c.files:
            out.append((c, replace(r, phase=r.phase or c.phase, hosts=c.on,
                                   hosts_doc=c.role if c.role != "node" else
                                   ("all (no external endpoint)" if c.only_with_api_lb else "all"))))
    return tuple(out)


def binary_placement(name: str) -> tuple[Phase, Binary] | None:
    """(phase, declaration) of an artifact file by its catalog name; None if no component
    claims it."""
    for c in COMPONENTS:
        for b in c.binaries:
            if b.name == name:
                return c.phase, b
    return None


def api_lb_component(name: str) -> bool:
    return any(b.name == name for c in COMPONENTS if c.only_with_api_lb for b in c.binaries)


def ports_for(cluster, host) -> dict[int, str]:
    """port -> the unit owning it, of every component running on the host."""
    return {p: c.units[0] for c in COMPONENTS if c.units and c.on_host(cluster, host) for p in c.ports}


def gates(cluster, *, rollout: bool = False) -> tuple[Gate, ...]:
    out: list[Gate] = []
    for c in COMPONENTS:
        if c.only_with_api_lb and not cluster.node_local_lb:
            continue
        out.extend(c.rollout_gates if rollout else c.gates)
    return tuple(out)
