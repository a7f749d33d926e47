"""kube-apiserver (and kubectl, which the control-plane hosts use to reach it)."""
from kdeploy.components import PRIVATE, Binary, Component, Row
from kdeploy.execute.steps import Gate
from kdeploy.model import defaults
from kdeploy.pki import paths
from kdeploy.plan.resources import Phase
from kdeploy.render.context import ADMISSION_CONFIG, AUDIT_POLICY, unit_path

KUBECTL = f"{defaults.BIN_DIR}/kubectl"
# kubectl on a control-plane host against its own apiserver
KUBECTL_LOCAL = (KUBECTL, f"--kubeconfig={paths.ADMIN_CONF}",
                 f"--server=https://127.0.0.1:{defaults.APISERVER_PORT}")
READYZ = Gate("control-plane", "control-plane", " ".join(KUBECTL_LOCAL) + " get --raw /readyz", 180,
              "kube-apiserver /readyz")

COMPONENT = Component(
    "kube-apiserver", Phase.control_plane, role="control-plane",
    files=(
        Row("control-plane/audit-policy.yaml.j2", AUDIT_POLICY, restarts=("kube-apiserver",), mode=PRIVATE),
        # Pod Security defaults (read at start)
        Row("control-plane/admission-config.yaml.j2", ADMISSION_CONFIG, restarts=("kube-apiserver",),
            mode=PRIVATE),
        Row("control-plane/kube-apiserver.service.j2", unit_path("kube-apiserver"),
            restarts=("kube-apiserver",), mode=PRIVATE),
    ),
    units=("kube-apiserver",),
    binaries=(Binary("kube-apiserver", "kube-apiserver"), Binary("kubectl")),
    ports=(defaults.APISERVER_PORT,),
    gates=(READYZ,),
    rollout_gates=(READYZ,),
)
