"""kube-scheduler: leader-elected, its config file beside its unit."""
from kdeploy.components import PRIVATE, Binary, Component, Row
from kdeploy.model import defaults
from kdeploy.plan.resources import Phase
from kdeploy.render.context import SCHEDULER_CONFIG, unit_path

COMPONENT = Component(
    "kube-scheduler", Phase.control_plane, role="control-plane",
    files=(
        Row("control-plane/kube-scheduler.yaml.j2", SCHEDULER_CONFIG, restarts=("kube-scheduler",),
            mode=PRIVATE),
        Row("control-plane/kube-scheduler.service.j2", unit_path("kube-scheduler"),
            restarts=("kube-scheduler",), mode=PRIVATE),
    ),
    units=("kube-scheduler",),
    binaries=(Binary("kube-scheduler", "kube-scheduler"),),
    ports=(defaults.SCHEDULER_PORT,),
)
