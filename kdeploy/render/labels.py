"""Which node labels a kubelet may set on its own Node (--node-labels).

The kubelet refuses to start with a label in the kubernetes.io / k8s.io namespaces unless it is
one of its own (k8s.io/kubelet/pkg/apis: KubeletLabels, KubeletLabelNamespaces), and the
NodeRestriction admission plugin refuses node-role.kubernetes.io/* and
node-restriction.kubernetes.io/* from a kubelet. Those labels are applied by the deployer
through the API (addons phase) instead.
"""
from __future__ import annotations

KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
_RESTRICTED = ("kubernetes.io", "k8s.io")

CONTROL_PLANE_ROLE_LABEL = "node-role.kubernetes.io/control-plane"
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"


def _in(ns: str, domain: str) -> bool:
    return ns == domain or ns.endswith("." + domain)


def kubelet_may_set(key: str) -> bool:
    """True when a kubelet may set this label on its own Node via --node-labels."""
    ns = key.partition("/")[0] if "/" in key else ""
    if not ns or not any(_in(ns, d) for d in _RESTRICTED):
        return True
    if key in KUBELET_LABELS:
        return True
    return any(_in(ns, d) for d in KUBELET_LABEL_NAMESPACES)


def split_labels(labels: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(labels the kubelet sets itself, labels the deployer must apply through the API)."""
    own, deferred = {}, {}
    for k in sorted(labels):
        (own if kubelet_may_set(k) else deferred)[k] = labels[k]
    return own, deferred
