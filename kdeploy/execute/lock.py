"""One kdeploy run per cluster at a time: an exclusive lock on the cluster's state dir.

`up`, `upgrade` and every verb that changes hosts hold it for their whole run; a second run
fails at once, naming the holder. The kernel drops the lock when its process dies (even on
SIGKILL), so a killed run never blocks the next one."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from kdeploy.errors import KdeployError


class RunLock:
    def __init__(self, state_dir: Path, verb: str):
        self.path = Path(state_dir) / "run.lock"
        self.verb = verb
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            since = time.strftime("%H:%M:%S", time.localtime(holder.get("started", 0)))
            raise KdeployError(
                f"another kdeploy run holds this cluster: `kdeploy {holder.get('verb', '?')}` "
                f"(pid {holder.get('pid', '?')}, since {since})",
                f"wait for it to finish; its lock is {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "verb": self.verb,
                                  "started": time.time()}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
