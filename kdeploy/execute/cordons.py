"""The nodes kdeploy cordoned, kept in the cluster's state dir (cordoned.json) from before the
cordon until after the uncordon: a run killed in between (even with SIGKILL) leaves them
listed, and the next run uncordons them first. Nodes an operator cordoned are never listed,
so kdeploy never uncordons them."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from kdeploy.pki.crypto import write_atomic


class CordonLedger:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "cordoned.json"
        self._lock = threading.Lock()

    def nodes(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [n for n in data if isinstance(n, str)] if isinstance(data, list) else []

    def _write(self, nodes: list[str]) -> None:
        write_atomic(self.path, (json.dumps(sorted(set(nodes))) + "\n").encode(), 0o600)

    def add(self, node: str) -> None:
        with self._lock:
            self._write(self.nodes() + [node])

    def remove(self, node: str) -> None:
        with self._lock:
            self._write([n for n in self.nodes() if n != node])
