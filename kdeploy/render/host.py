"""render_host(cluster, host) -> HostResources: every text file kdeploy places on one host.

Not here: PKI material and kubeconfigs (kdeploy.pki), binaries (the artifact catalog), API
manifests (kdeploy.render.addons). The planner combines them.
"""
from __future__ import annotations

from kdeploy.model.cluster import Cluster, Host
from kdeploy.plan.resources import Block, File, HostResources, Unit
from kdeploy.render import env as _env
from kdeploy.render.context import HOSTS_FILE, cluster_context, host_context
from kdeploy.render.images import Images


def render_host(cluster: Cluster, host: Host, images: Images | None = None) -> HostResources:
    """images: the refs of the artifact set in use (kdeploy.render.images; None: the catalog's)."""
    # the file table comes from kdeploy.components, which read paths from kdeploy.pki (whose
    # kubeconfigs are rendered here): imported at the first call, not at import
    from kdeploy.render.table import FILES, UNITS
    ctx = cluster_context(cluster, images)
    h = host_context(ctx, host)
    values = {**ctx.base, "host": h}
    environment = _env.environment()
    files = tuple(
        File(path=row.path,
             content=_env.render(row.template, values, environment, with_globals=True).encode(),
             phase=row.phase, mode=row.mode, restarts=row.restarts,
             run_on_change=row.run_on_change)
        for row in FILES if row.hosts(h))
    blocks = (Block(path=HOSTS_FILE, content=ctx.hosts_block, phase="os"),)
    units = tuple(Unit(name, phase) for name, phase, pred in UNITS if pred(h))
    extra = {
        "pod_cidr": h["pod_cidr"],
        # labels the kubelet may not set itself (NodeRestriction): applied by the deployer
        "api_labels": dict(h["deferred_labels"]),
        "taints": [dict(t) for t in h["taints"]],
    }
    return HostResources(host=host.name, files=files, blocks=blocks, units=units, extra=extra)


def render_all(cluster: Cluster, images: Images | None = None) -> dict[str, HostResources]:
    """render_host for every host, in inventory order."""
    return {h.name: render_host(cluster, h, images) for h in cluster.hosts}
