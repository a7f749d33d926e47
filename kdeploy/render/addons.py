"""render_addons(cluster) -> list[File]: manifests applied through the API.

They are placed under /etc/kubernetes/addons/ on the first control-plane host and applied
there with `kubectl apply` (phase "addons"). Node role labels are applied by the deployer.
"""
from __future__ import annotations

from kdeploy.model.cluster import Cluster
from kdeploy.plan.resources import File
from kdeploy.render import env as _env
from kdeploy.render.context import ADDONS_DIR, cluster_context
from kdeploy.render.images import Images

ADDONS: tuple[tuple[str, str], ...] = (
    ("addons/apiserver-to-kubelet-rbac.yaml.j2", f"{ADDONS_DIR}/00-apiserver-to-kubelet-rbac.yaml"),
    ("addons/coredns.yaml.j2", f"{ADDONS_DIR}/10-coredns.yaml"),
)


def addons_host(cluster: Cluster) -> str:
    """The host the addon manifests are placed on and applied from."""
    return cluster.control_plane[0].name


def render_addons(cluster: Cluster, images: Images | None = None) -> list[File]:
    ctx = cluster_context(cluster, images)
    environment = _env.environment()
    return [File(path=path, content=_env.render(tmpl, ctx.base, environment, with_globals=True).encode(),
                 phase="addons")
            for tmpl, path in ADDONS]
