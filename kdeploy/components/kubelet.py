"""kubelet: every host is a node."""
from kdeploy.components import PRIVATE, Binary, Component, Row
from kdeploy.model import defaults
from kdeploy.plan.resources import Phase
from kdeploy.render.context import KUBELET_CONFIG, unit_path

COMPONENT = Component(
    "kubelet", Phase.node,
    files=(
        Row("node/kubelet-config.yaml.j2", KUBELET_CONFIG, restarts=("kubelet",), mode=PRIVATE),
        Row("node/kubelet.service.j2", unit_path("kubelet"), restarts=("kubelet",), mode=PRIVATE),
    ),
    units=("kubelet",),
    binaries=(Binary("kubelet", "kubelet"),),
    ports=(defaults.KUBELET_PORT,),
)
