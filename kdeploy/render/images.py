"""Image references the rendered files name (sandbox image, CoreDNS).

They come from the artifact catalog (kdeploy.artifacts.catalog.versions_for), the one source of
versions, so the images kdeploy ships offline and the ones the configs reference cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdeploy.artifacts.catalog import versions_for


@dataclass(frozen=True)
class Images:
    pause: str
    coredns: str
    coredns_version: str
    source: str            # "catalog" or "fallback"


def images_for(kubernetes_version: str) -> Images:
    v = versions_for(kubernetes_version)
    return Images(v.pause_image, v.coredns_image, v.coredns, "catalog")
