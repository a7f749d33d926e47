"""Connecting for a run: documentation addresses are never dialled, other hosts in parallel."""
from __future__ import annotations

import ipaddress

from kdeploy.errors import TransportError

# RFC 5737 documentation ranges: samples and tests use them; kdeploy never opens a connection there.
DOC_NETS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24",
                                                   "203.0.113.0/24", "2001:db8::/32"))


class DocumentationAddress(TransportError):
    """A host (or its bastion) has an RFC 5737/3849 address: never dialled."""


def is_documentation_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.endswith((".example", ".example.com", ".example.org", ".test", ".invalid"))
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in DOC_NETS)


def connect(cluster, *, factory=None, hosts=None):
    """({name: transport}, {name: error}); documentation addresses fail without any traffic.
    hosts: the names to connect to (default: every host of the inventory)."""
    from kdeploy.transport.pool import connect_each, ssh_factory
    factory = factory or ssh_factory
    doc = {}
    wanted = [h for h in cluster.hosts if hosts is None or h.name in set(hosts)]
    for h in wanted:
        bastion = cluster.ssh_for(h).bastion
        for what, addr in (("", h.address), ("bastion ", bastion.address if bastion else None)):
            if addr and is_documentation_address(addr):
                doc[h.name] = DocumentationAddress(
                    f"host {h.name}: {what}{addr} is a documentation address, never connected to",
                    "use the real address")
    rest = [h for h in wanted if h.name not in doc]
    ok, failed = connect_each(cluster, rest, factory=factory) if rest else ({}, {})
    failed.update(doc)
    return ok, failed
