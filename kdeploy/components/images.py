"""Image archives (pause, CoreDNS, the verify workload) imported into containerd on every
node, in their own phase: on an upgrade they are there before anything needs them."""
from kdeploy.artifacts.catalog import IMAGES
from kdeploy.components import Binary, Component
from kdeploy.plan.resources import Phase

COMPONENT = Component(
    "images", Phase.images,
    binaries=tuple(Binary(n, import_image=True) for n in IMAGES),
)
