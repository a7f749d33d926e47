"""kube-controller-manager: leader-elected, talks to its own host's apiserver."""
from kdeploy.components import PRIVATE, Binary, Component, Row
from kdeploy.components.apiserver import KUBECTL_LOCAL
from kdeploy.execute.steps import Gate
from kdeploy.model import defaults
from kdeploy.plan.resources import Phase
from kdeploy.render.context import unit_path

# both leases held and renewed within the last 30 s: after a control-plane host's restart the
# leaders are elected again (on this host or another)
LEADERS = Gate("control-plane", "control-plane", (
    "for l in kube-controller-manager kube-scheduler; do "
    f"t=$({' '.join(KUBECTL_LOCAL)} -n kube-system get lease $l "
    "-o 'jsonpath={.spec.renewTime}') && [ -n \"$t\" ] && "
    "[ $(( $(date +%s) - $(date -d \"$t\" +%s) )) -lt 30 ] || { echo \"lease $l: ${t:-none}\"; exit 1; }; "
    "done"), 120, "controller-manager and scheduler leaders elected")

COMPONENT = Component(
    "kube-controller-manager", Phase.control_plane, role="control-plane",
    files=(Row("control-plane/kube-controller-manager.service.j2", unit_path("kube-controller-manager"),
               restarts=("kube-controller-manager",), mode=PRIVATE),),
    units=("kube-controller-manager",),
    binaries=(Binary("kube-controller-manager", "kube-controller-manager"),),
    ports=(defaults.CONTROLLER_MANAGER_PORT,),
    rollout_gates=(LEADERS,),
)
