"""The hosts `kdeploy node remove` took out of a cluster (state_dir/removed.json): an
inventory that still lists one is refused by every verb that prepares a deployment, never
silently deployed again."""
from __future__ import annotations

import json
from pathlib import Path

from kdeploy.errors import InventoryError
from kdeploy.model import Cluster

REMOVED = "removed.json"


def removed_hosts(state_dir: Path) -> dict[str, dict]:
    try:
        data = json.loads((state_dir / REMOVED).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_removed(state_dir: Path, data: dict) -> None:
    from kdeploy.pki.crypto import write_atomic
    if data:
        write_atomic(state_dir / REMOVED, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(),
                     0o600)
    else:
        (state_dir / REMOVED).unlink(missing_ok=True)


def refuse_removed(cluster: Cluster, state_dir: Path, *, forget_absent: bool = False) -> None:
    """A host `node remove` took out is not silently deployed again because the inventory
    still lists it. forget_absent: the inventory no longer lists some removed hosts, so they
    are forgotten (a later re-add under the same name is a new node)."""
    gone = removed_hosts(state_dir)
    if not gone:
        return
    names = {h.name for h in cluster.hosts}
    listed = sorted(n for n in gone if n in names)
    if listed:
        lines = "\n".join(f"  {n}: removed by `kdeploy node remove` at {gone[n].get('at', '?')}"
                          for n in listed)
        raise InventoryError(
            f"the inventory lists host(s) removed from cluster {cluster.name}; nothing was "
            f"changed:\n{lines}",
            "delete them from the inventory and run again. To deploy one of them again, run "
            "once without it, then add it back (it joins as a new node)",
            file=cluster.source)
    if forget_absent:
        write_removed(state_dir, {})
