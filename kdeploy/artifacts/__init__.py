"""kdeploy.artifacts: which binaries and images a cluster needs, where they come from, and their
verification. See docs/artifacts.md.

    versions_for("1.37.2")            -> ComponentVersions (etcd, containerd, ..., image refs)
    resolve("1.37.2", "amd64", offline_dir=DIR | mirror=URL)  -> [ArtifactFile] (verified)
    check_kubernetes_version("1.34.1") raises KdeployError (unsupported)
"""
from __future__ import annotations

from kdeploy.artifacts.catalog import (ARCHES, DEFAULT_KUBERNETES_VERSION, SUPPORTED_MINORS,
                                       ComponentVersions, check_arch, check_kubernetes_version,
                                       versions_for)
from kdeploy.artifacts.fetch import ArtifactFile, fetch_to_dir, resolve
from kdeploy.artifacts.layout import verify_dir

__all__ = [
    "ARCHES", "DEFAULT_KUBERNETES_VERSION", "SUPPORTED_MINORS", "ArtifactFile", "ComponentVersions",
    "check_arch", "check_kubernetes_version", "fetch_to_dir", "resolve", "verify_dir", "versions_for",
]
