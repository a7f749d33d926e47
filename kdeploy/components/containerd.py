"""The container runtime: containerd with runc, the CNI plugins and their config, crictl."""
from kdeploy.artifacts.catalog import CNI_PLUGINS, CONTAINERD_BINARIES
from kdeploy.components import Binary, Component, Row
from kdeploy.execute.steps import Gate
from kdeploy.model import defaults
from kdeploy.plan.resources import Phase
from kdeploy.render.context import CNI_CONFLIST, CRICTL_CONF, unit_path

ANSWERS = Gate("runtime", "node", f"{defaults.BIN_DIR}/ctr --address {defaults.CONTAINERD_SOCKET} version",
               60, "containerd answers", per_host=True)

COMPONENT = Component(
    "containerd", Phase.runtime,
    files=(
        Row("containerd/config.toml.j2", defaults.CONTAINERD_CONF, restarts=("containerd",)),
        Row("containerd/containerd.service.j2", unit_path("containerd"), restarts=("containerd",)),
        Row("cni/10-kdeploy.conflist.j2", CNI_CONFLIST),
        Row("containerd/crictl.yaml.j2", CRICTL_CONF),
    ),
    units=("containerd",),
    # a new runc or shim is used by the next container: running ones keep theirs
    binaries=tuple(Binary(n, "containerd" if n == "containerd" else None) for n in CONTAINERD_BINARIES)
    + (Binary("runc"), Binary("crictl")) + tuple(Binary(p) for p in CNI_PLUGINS),
    gates=(ANSWERS,),
    rollout_gates=(ANSWERS,),
)
