"""kube-proxy: Services on every node."""
from kdeploy.components import Binary, Component, Row
from kdeploy.plan.resources import Phase
from kdeploy.render.context import KUBE_PROXY_CONFIG, unit_path

COMPONENT = Component(
    "kube-proxy", Phase.node,
    files=(
        Row("node/kube-proxy-config.yaml.j2", KUBE_PROXY_CONFIG, restarts=("kube-proxy",)),
        Row("node/kube-proxy.service.j2", unit_path("kube-proxy"), restarts=("kube-proxy",)),
    ),
    units=("kube-proxy",),
    binaries=(Binary("kube-proxy", "kube-proxy"),),
)
