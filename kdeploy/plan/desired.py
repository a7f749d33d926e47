"""Assemble what every host should have: rendered files + PKI material + addons + binaries.

Pure given its inputs (cluster, a loaded PKI, resolved artifacts)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from kdeploy.model import Cluster, Role
from kdeploy.model import defaults
from kdeploy.pki import paths
from kdeploy.plan.resources import Binary, File, HostResources
from kdeploy.render.context import API_LB_UNIT

# which unit a binary feeds (a new binary restarts it)
BINARY_UNITS = {
    "kube-apiserver": "kube-apiserver", "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler", "kubelet": "kubelet", "kube-proxy": "kube-proxy",
    "etcd": "etcd", "containerd": "containerd",
    "nginx": API_LB_UNIT, "ngx_stream_module": API_LB_UNIT,
}
# the phase a binary is placed in: its component's, so a rolling step writes a host's new
# binaries at that host's turn (never cluster-wide ahead of the rollout)
COMPONENT_PHASES = {
    "etcd": "etcd", "kubernetes": "node", "containerd": "runtime", "runc": "runtime",
    "cni-plugins": "runtime", "crictl": "runtime", "coredns": "node", "images": "images",
    "api-lb": "node",
}
CONTROL_PLANE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def binary_phase(a) -> str:
    if a.name in CONTROL_PLANE_BINARIES:
        return "control-plane"
    return COMPONENT_PHASES.get(a.component, "node")
KUBECTL_ADMIN = (f"{defaults.BIN_DIR}/kubectl", f"--kubeconfig={paths.ADMIN_CONF}",
                 f"--server=https://127.0.0.1:{defaults.APISERVER_PORT}")


def host_gets(artifact_roles: Iterable[str], host) -> bool:
    """Every host is a node; control-plane/etcd artifacts go only to those roles."""
    roles = set(artifact_roles)
    have = {r.value for r in host.roles} | {"worker"}
    return not roles or bool(roles & have)


def binaries_for(host, artifacts, *, api_lb: bool = True) -> tuple[Binary, ...]:
    out = []
    for a in artifacts or ():
        if not host_gets(a.roles, host) or (a.component == "api-lb" and not api_lb):
            continue
        if a.install_path.endswith(".tar"):   # image archive: import into containerd once it runs
            out.append(Binary(a.install_path, str(a.local_path), a.sha256, phase="images", mode=a.mode,
                              run_on_change=(("ctr", "-n", "k8s.io", "images", "import",
                                              "--all-platforms", a.install_path),)))
        else:
            unit = BINARY_UNITS.get(a.name)
            out.append(Binary(a.install_path, str(a.local_path), a.sha256, phase=binary_phase(a),
                              mode=a.mode, restarts=(unit,) if unit else ()))
    return tuple(sorted(out, key=lambda b: b.path))


NODE_LABELS = f"{defaults.K8S_DIR}/addons/90-node-labels.sh"


def _node_labels(cluster: Cluster, rendered: dict[str, HostResources]) -> File:
    from kdeploy.render.env import render
    nodes = []
    for h in cluster.hosts:
        labels = dict(rendered[h.name].extra.get("api_labels", {}))
        if h.has(Role.worker):
            labels["node-role.kubernetes.io/worker"] = ""
        if labels:
            nodes.append({"name": h.name, "labels": labels})
    text = render("addons/node-labels.sh.j2", {"cluster_name": cluster.name, "nodes": nodes,
                                                "kubectl": " ".join(KUBECTL_ADMIN)})
    return File(NODE_LABELS, text.encode(), "addons", mode=0o755, run_on_change=(("sh", NODE_LABELS),))


def _addon_files(cluster: Cluster) -> list[File]:
    from kdeploy.render import render_addons
    out = []
    for f in render_addons(cluster):
        if not f.run_on_change and f.path.endswith((".yaml", ".yml")):
            f = replace(f, run_on_change=(KUBECTL_ADMIN + ("apply", "-f", f.path),))
        out.append(f)
    return out


def desired_state(cluster: Cluster, *, pki=None, artifacts=None) -> dict[str, HostResources]:
    from kdeploy.render import addons_host, render_host
    first_cp = addons_host(cluster)
    rendered = {h.name: render_host(cluster, h) for h in cluster.hosts}
    addons = _addon_files(cluster) + [_node_labels(cluster, rendered)]
    out: dict[str, HostResources] = {}
    for host in cluster.hosts:
        base = rendered[host.name]
        files = list(base.files)
        if pki is not None:
            files += pki.files_for(host)
        if host.name == first_cp:
            files += addons
        out[host.name] = replace(base, files=tuple(files), binaries=binaries_for(
            host, artifacts, api_lb=cluster.node_local_lb))
    return out


def roles_of(cluster: Cluster) -> dict[str, set[str]]:
    return {h.name: {r.value for r in h.roles} | {"node"} for h in cluster.hosts}
