"""Routes to every other node's pod CIDR (kdeploy's pod network: bridge CNI + host routes).
The routes live in a script the unit runs: a node joining or leaving rewrites the script and
restarts the unit on every node, without a daemon-reload on each of them."""
from kdeploy.components import Component, Row
from kdeploy.model import defaults
from kdeploy.plan.resources import Phase
from kdeploy.render.context import unit_path

SCRIPT = defaults.POD_ROUTES_SCRIPT

COMPONENT = Component(
    "kdeploy-pod-routes", Phase.node,
    files=(Row("node/kdeploy-pod-routes.service.j2", unit_path("kdeploy-pod-routes"),
               restarts=("kdeploy-pod-routes",)),
           Row("node/pod-routes.sh.j2", SCRIPT, restarts=("kdeploy-pod-routes",), mode=0o755)),
    units=("kdeploy-pod-routes",),
)
