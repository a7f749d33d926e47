"""kdeploy.facts: read-only facts of a host, each a command plus a pure parser, gathered in one
round trip per host (kdeploy.facts.parse.build_script) and in parallel across hosts.

    facts = gather(transport, paths=[...], units=["kubelet"], ports=[6443])
    facts.sha256("/etc/kubernetes/kubelet.conf"), facts.unit("kubelet"), facts.clock_skew
    HostFacts.empty("cp1")          # offline plan: a bare host, everything to create
"""
from kdeploy.facts.gather import gather, gather_all, parse_output
from kdeploy.facts.model import HostFacts

__all__ = ["HostFacts", "gather", "gather_all", "parse_output"]
