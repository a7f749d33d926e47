"""containerd's per-registry host configuration (hosts.toml) for registry mirrors.

    /etc/containerd/certs.d/<registry>/hosts.toml   endpoints in order, then the registry
    /etc/containerd/certs.d/<registry>/ca.crt       the endpoints' CA, when given

A mirror with credentials gets an Authorization header in its hosts.toml: that file is then a
secret (0600, shown in plans by checksum only). The password is read from the file the
inventory names, on the deployer, when the desired state is built (never printed).
"""
from __future__ import annotations

import base64

from kdeploy.errors import InventoryError
from kdeploy.model import defaults
from kdeploy.model.cluster import Cluster, RegistryMirror
from kdeploy.model.validate import resolve_path
from kdeploy.plan.resources import File

# what containerd calls a registry's own host when no mirror answers
_SERVERS = {"docker.io": "https://registry-1.docker.io"}


def registry_dir(registry: str) -> str:
    return f"{defaults.CONTAINERD_REGISTRY_DIR}/{registry}"


def _authorization(cluster: Cluster, m: RegistryMirror) -> str | None:
    if not m.auth:
        return None
    path = resolve_path(m.auth.password_file, cluster)
    try:
        password = path.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise InventoryError(f"cannot read password file {path}: "
                             f"{getattr(e, 'strerror', None) or e}",
                             "make it a readable text file (mode 0600, owned by the deployer's user)",
                             field=f"spec.containerRuntime.registryMirrors[{m.registry}].auth.passwordFile")
    token = base64.b64encode(f"{m.auth.username}:{password}".encode()).decode()
    return f"Basic {token}"


def registry_files(cluster: Cluster) -> list[File]:
    """The files of every registry mirror (the same on every node: runtime phase; containerd
    reads them at each pull, no restart)."""
    from kdeploy.render.env import render
    out: list[File] = []
    for m in cluster.spec.container_runtime.registry_mirrors:
        d = registry_dir(m.registry)
        ca = None
        if m.ca_file:
            ca = f"{d}/ca.crt"
            out.append(File(ca, resolve_path(m.ca_file, cluster).read_bytes(), "runtime"))
        auth = _authorization(cluster, m)
        hosts = [{"url": e.rstrip("/"), "ca": ca, "skip_verify": m.skip_verify, "authorization": auth}
                 for e in m.endpoints]
        server = None if m.registry == "_default" else _SERVERS.get(m.registry, f"https://{m.registry}")
        text = render("containerd/hosts.toml.j2", {
            "cluster_name": cluster.name,
            "mirror": {"registry": m.registry, "server": server, "hosts": hosts}})
        out.append(File(f"{d}/hosts.toml", text.encode(), "runtime",
                        mode=0o600 if auth else 0o644, secret=bool(auth)))
    return out
