"""Image references the rendered files name (sandbox image, CoreDNS).

They come from the artifact catalog (kdeploy.artifacts.catalog.versions_for) so the images
kdeploy ships offline and the ones the configs reference cannot drift. The constants below are
only a fallback for when the catalog module is absent.
"""
from __future__ import annotations

from dataclasses import dataclass

FALLBACK_PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
FALLBACK_COREDNS_VERSION = "1.14.6"


@dataclass(frozen=True)
class Images:
    pause: str
    coredns: str
    coredns_version: str
    source: str            # "catalog" or "fallback"


def images_for(kubernetes_version: str) -> Images:
    try:
        from kdeploy.artifacts.catalog import versions_for
    except ImportError:
        return Images(FALLBACK_PAUSE_IMAGE,
                      f"registry.k8s.io/coredns/coredns:v{FALLBACK_COREDNS_VERSION}",
                      FALLBACK_COREDNS_VERSION, "fallback")
    v = versions_for(kubernetes_version)
    return Images(v.pause_image, v.coredns_image, v.coredns, "catalog")
