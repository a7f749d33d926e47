"""Routes to every other node's pod CIDR (kdeploy's pod network: bridge CNI + host routes)."""
from kdeploy.components import Component, Row
from kdeploy.plan.resources import Phase
from kdeploy.render.context import unit_path

COMPONENT = Component(
    "kdeploy-pod-routes", Phase.node,
    files=(Row("node/kdeploy-pod-routes.service.j2", unit_path("kdeploy-pod-routes"),
               restarts=("kdeploy-pod-routes",)),),
    units=("kdeploy-pod-routes",),
)
