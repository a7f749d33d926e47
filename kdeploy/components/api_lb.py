"""The node-local API load balancer: nginx (stream module) on 127.0.0.1:7443 of every node, in
front of every kube-apiserver; kubelet and kube-proxy reach the API through it. Not deployed
when the inventory names an external endpoint (docs/lifecycle.md)."""
from kdeploy.components import Binary, Component, Row
from kdeploy.components.apiserver import KUBECTL
from kdeploy.execute.steps import Gate
from kdeploy.model import defaults
from kdeploy.pki import paths
from kdeploy.plan.resources import Phase
from kdeploy.render.context import API_LB_CONFIG, API_LB_UNIT, unit_path

COMPONENT = Component(
    API_LB_UNIT, Phase.api_lb, only_with_api_lb=True,
    files=(
        # a new backend list is a reload (established connections stay), never a restart
        Row("api-lb/nginx.conf.j2", API_LB_CONFIG,
            run_on_change=(("systemctl", "try-reload-or-restart", f"{API_LB_UNIT}.service"),)),
        Row("api-lb/kdeploy-api-lb.service.j2", unit_path(API_LB_UNIT), restarts=(API_LB_UNIT,)),
    ),
    units=(API_LB_UNIT,),
    binaries=(Binary("nginx", API_LB_UNIT), Binary("ngx_stream_module", API_LB_UNIT)),
    ports=(defaults.API_LB_PORT,),
    # after a control-plane host's turn: the API answers through the LB (another apiserver or
    # the one just restarted)
    rollout_gates=(Gate("control-plane", "control-plane",
                        f"{KUBECTL} --kubeconfig={paths.ADMIN_CONF} "
                        f"--server=https://127.0.0.1:{defaults.API_LB_PORT} get --raw /readyz", 60,
                        "the API through the load balancer"),),
)
