"""Assemble what every host should have: rendered files + PKI material + addons + binaries.

Pure given its inputs (cluster, a loaded PKI, resolved artifacts)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from kdeploy.model import Cluster, Role
from kdeploy.model import defaults
from kdeploy.components import api_lb_component, binary_placement
from kdeploy.components.apiserver import KUBECTL_LOCAL
from kdeploy.plan.resources import Binary, File, HostResources, Phase

KUBECTL_ADMIN = KUBECTL_LOCAL


def host_gets(artifact_roles: Iterable[str], host) -> bool:
    """Every host is a node; control-plane/etcd artifacts go only to those roles."""
    roles = set(artifact_roles)
    have = {r.value for r in host.roles} | {"worker"}
    return not roles or bool(roles & have)


def binaries_for(host, artifacts, *, api_lb: bool = True) -> tuple[Binary, ...]:
    """The artifact files a host gets, each in its component's phase (a rolling step writes a
    host's new binaries at that host's turn, never cluster-wide ahead of the rollout)."""
    out = []
    for a in artifacts or ():
        if not host_gets(a.roles, host) or (not api_lb and api_lb_component(a.name)):
            continue
        phase, decl = binary_placement(a.name) or (Phase.node, None)
        if decl is not None and decl.import_image:  # import into containerd once it runs
            out.append(Binary(a.install_path, str(a.local_path), a.sha256, phase=phase, mode=a.mode,
                              run_on_change=(("ctr", "-n", "k8s.io", "images", "import",
                                              "--all-platforms", a.install_path),)))
        else:
            unit = decl.restarts if decl is not None else None
            out.append(Binary(a.install_path, str(a.local_path), a.sha256, phase=phase,
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
    groups: dict[tuple, list[str]] = {}
    for n in nodes:
        groups.setdefault(tuple(sorted(n["labels"].items())), []).append(n["name"])
    # nodes per kubectl: 5 = its burst of 10 requests (a get and a patch each); at most ~8 at once
    chunk = max(5, -(-max(map(len, groups.values()), default=0) // 8))
    text = render("addons/node-labels.sh.j2", {
        "cluster_name": cluster.name, "nodes": nodes, "kubectl": " ".join(KUBECTL_ADMIN),
        "chunk": chunk, "groups": [
            {"labels": " ".join(f"{k}={v}" for k, v in key), "nodes": names,
             "selector": ",".join(f"{k}={v}" for k, v in key)} for key, names in groups.items()]})
    return File(NODE_LABELS, text.encode(), "addons", mode=0o755, run_on_change=(("sh", NODE_LABELS),))


def _addon_files(cluster: Cluster, images=None) -> list[File]:
    from kdeploy.render import render_addons
    out = []
    for f in render_addons(cluster, images):
        if not f.run_on_change and f.path.endswith((".yaml", ".yml")):
            f = replace(f, run_on_change=(KUBECTL_ADMIN + ("apply", "-f", f.path),))
        out.append(f)
    return out


def desired_state(cluster: Cluster, *, pki=None, artifacts=None, images=None) -> dict[str, HostResources]:
    """images: the image refs of the artifact set in use (kdeploy.render.images.Images; None:
    the catalog's, nothing preloaded)."""
    from kdeploy.render import addons_host, render_host
    first_cp = addons_host(cluster)
    rendered = {h.name: render_host(cluster, h, images) for h in cluster.hosts}
    addons = _addon_files(cluster, images) + [_node_labels(cluster, rendered)]
    from kdeploy.render.registries import registry_files
    registries = registry_files(cluster)  # every host is a node
    out: dict[str, HostResources] = {}
    for host in cluster.hosts:
        base = rendered[host.name]
        files = list(base.files) + registries
        if pki is not None:
            files += pki.files_for(host)
        if host.name == first_cp:
            files += addons
        out[host.name] = replace(base, files=tuple(files), binaries=binaries_for(
            host, artifacts, api_lb=cluster.node_local_lb))
    return out


def roles_of(cluster: Cluster) -> dict[str, set[str]]:
    return {h.name: {r.value for r in h.roles} | {"node"} for h in cluster.hosts}
