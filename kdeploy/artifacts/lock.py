"""The checksum lock: the sha256 a cluster uses for each official download, fixed at first use.

    <state dir>/artifacts.lock.json
    {"version": 1,
     "files": {"kubernetes/1.37.2/amd64/kubelet":
                 {"sha256": "...", "source": "https://dl.k8s.io/.../kubelet.sha256" | "pinned",
                  "lockedAt": "2026-12-01T14:00:00Z"}}}

kdeploy pins the sums it knows (`_checksums.py`). For the others, the first download reads
upstream's published checksum file (over TLS, or from the configured mirror) and records it
here; from then on every download, on this machine or for any host, is checked against the
locked value, and a file that changed upstream is refused loudly instead of re-locked.
Delete an entry (or the file) to accept a new upstream file on purpose.
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from kdeploy.errors import ArtifactError

LOCK_NAME = "artifacts.lock.json"
PINNED = "pinned"


class ChecksumLock:
    """Locked sums, read from and (when `path` is set and writable) saved to a JSON file."""

    def __init__(self, path: Path | None = None, *, write: bool = True):
        self.path = Path(path) if path else None
        self.write = write and self.path is not None
        self._entries: dict[str, dict] = {}
        self._added = False
        self._mu = threading.Lock()
        if self.path and self.path.is_file():
            self._entries = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, dict]:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{path} is not a readable checksum lock: {e}",
                                "restore it from a backup, or delete it to lock the sums "
                                "again at the next download") from None
        files = doc.get("files") if isinstance(doc, dict) else None
        if doc.get("version") != 1 or not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("sha256"), str) and len(v["sha256"]) == 64
                for v in files.values()):
            raise ArtifactError(f"{path} is not a version-1 checksum lock (files: key -> sha256)",
                                "restore it from a backup, or delete it to lock the sums "
                                "again at the next download")
        return {k: dict(v) for k, v in files.items()}

    def get(self, key: str) -> str | None:
        ent = self._entries.get(key)
        return ent["sha256"].lower() if ent else None

    def source(self, key: str) -> str | None:
        ent = self._entries.get(key)
        return ent.get("source") if ent else None

    def record(self, key: str, sha256: str, source: str) -> None:
        with self._mu:
            old = self._entries.get(key)
            if old and old["sha256"].lower() == sha256.lower():
                return
            self._entries[key] = {"sha256": sha256.lower(), "source": source,
                                  "lockedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            self._added = True

    def save(self) -> None:
        if not (self.write and self._added):
            return
        from kdeploy.pki.crypto import write_atomic
        doc = {"version": 1, "files": dict(sorted(self._entries.items()))}
        write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)
        self._added = False

    def as_dict(self) -> dict[str, dict]:
        return {k: dict(v) for k, v in self._entries.items()}
