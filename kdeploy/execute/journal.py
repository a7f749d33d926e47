"""A per-host journal of consequences not yet carried out (restarts, commands).

Written on the host before files change, cleared entry by entry as each consequence is done,
so a run killed between "file written" and "unit restarted" is finished by the next run.
"""
from __future__ import annotations

import json

from kdeploy.model import defaults

PATH = f"{defaults.KDEPLOY_DIR}/pending.json"


def parse(data: bytes | None) -> frozenset[str]:
    if not data:
        return frozenset()
    try:
        entries = json.loads(data)
    except ValueError:
        return frozenset()
    return frozenset(e for e in entries if isinstance(e, str)) if isinstance(entries, list) else frozenset()


def dump(entries: set[str] | frozenset[str]) -> bytes:
    return (json.dumps(sorted(entries), indent=0) + "\n").encode()
