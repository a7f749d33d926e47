"""A lock on the hosts themselves, beside the state dir's run lock: two deployers (two
checkouts, two machines) never drive the same hosts at once.

Taking it is an atomic `mkdir` of /var/lib/kdeploy/run.lock on every host, with the owner
(deployer host, state dir, pid) written inside. The holder refreshes it every minute; a lock
not refreshed for 10 minutes is stale (its run died with its deployer) and is taken over, as is
one whose owner is a dead process on this same deployer. Released at the end of the run."""
from __future__ import annotations

import os
import shlex
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

from kdeploy.errors import KdeployError
from kdeploy.model import defaults

LOCK_DIR = f"{defaults.KDEPLOY_DIR}/run.lock"
STALE_AFTER = 600
HEARTBEAT = 60

_ACQUIRE = r"""L=%(lock)s; me=%(me)s
mkdir -p "$(dirname "$L")"
if mkdir "$L" 2>/dev/null; then printf '%%s\n' "$me" > "$L/owner"; echo acquired; exit 0; fi
owner=$(cat "$L/owner" 2>/dev/null || true)
age=$(( $(date +%%s) - $(stat -c %%Y "$L/owner" 2>/dev/null || echo 0) ))
if [ "$owner" = "$me" ] || [ "$age" -gt %(stale)d ] || [ "$owner" = %(takeover)s ]; then
  printf '%%s\n' "$me" > "$L/owner"; echo acquired; exit 0
fi
printf 'held %%s %%s\n' "$age" "$owner"
"""
_REFRESH = r"""L=%(lock)s; [ "$(cat "$L/owner" 2>/dev/null)" = %(me)s ] && touch "$L/owner"; true"""
_RELEASE = r"""L=%(lock)s; [ "$(cat "$L/owner" 2>/dev/null)" = %(me)s ] && rm -rf "$L"; true"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostLocks:
    def __init__(self, transports: Mapping, state_dir, *, lock_dir: str = LOCK_DIR,
                 stale_after: int = STALE_AFTER, heartbeat: float = HEARTBEAT):
        self.t = dict(transports)
        self.lock = lock_dir
        self.stale = stale_after
        self.heartbeat = heartbeat
        self.me = f"{socket.gethostname()}:{os.getpid()}:{state_dir}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: list[str] = []

    def _script(self, tmpl: str, takeover: str = "") -> str:
        return tmpl % {"lock": shlex.quote(self.lock), "me": shlex.quote(self.me),
                       "stale": self.stale, "takeover": shlex.quote(takeover or "-")}

    def _each(self, fn) -> dict:
        if not self.t:
            return {}
        with ThreadPoolExecutor(max_workers=min(32, len(self.t))) as ex:
            return dict(zip(self.t, ex.map(fn, self.t)))

    def _dead_local_owner(self, owner: str) -> bool:
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))

    def __enter__(self) -> "HostLocks":
        from kdeploy.errors import TransportError
        from kdeploy.transport.base import check_result
        from kdeploy.transport.pool import run_many
        # every host in one call where the transport can (ansible: one run)
        first = run_many(self.t, {h: self._script(_ACQUIRE) for h in self.t}, timeout=60)
        try:
            for h, r in first.items():
                if isinstance(r, KdeployError):
                    raise r
                check_result(h, r)
        except KdeployError:
            self._held = [x for x, y in first.items()
                          if not isinstance(y, KdeployError) and y.out.strip() == "acquired"]
            self._release()
            raise

        def take(h: str) -> str:
            out = first[h].out.strip()
            if out.startswith("held "):
                owner = out.split(" ", 2)[2] if out.count(" ") >= 2 else ""
                if self._dead_local_owner(owner):
                    out = self.t[h].run(self._script(_ACQUIRE, owner), timeout=60).out.strip()
            return out
        try:
            res = self._each(take)
        except TransportError:
            self._held = [h for h, r in first.items() if r.out.strip() == "acquired"]
            self._release()
            raise
        self._held = [h for h, r in res.items() if r == "acquired"]
        busy = {h: r for h, r in res.items() if r != "acquired"}
        if busy:
            self._release()
            lines = []
            for h, r in sorted(busy.items()):
                _, age, owner = (r.split(" ", 2) + ["", ""])[:3]
                lines.append(f"  {h}: held by {owner or '?'} (refreshed {age} s ago)")
            raise KdeployError("another kdeploy run is driving these hosts; nothing was changed:\n"
                               + "\n".join(lines),
                               f"wait for it to finish (a lock not refreshed for {self.stale // 60} "
                               "minutes is taken over)")
        self._thread = threading.Thread(target=self._beat, name="kdeploy-hostlock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                from kdeploy.transport.pool import run_many
                run_many(self.t, {h: self._script(_REFRESH) for h in self.t}, timeout=30)
            except Exception:  # noqa: BLE001 - a missed beat is retried; 10 min of slack
                pass

    def _release(self) -> None:
        from kdeploy.transport.pool import run_many
        # every host at once, in one call where the transport can (ansible: one run)
        try:
            run_many(self.t, {h: self._script(_RELEASE) for h in self._held}, timeout=30)
        except Exception:  # noqa: BLE001 - an unreleased lock goes stale by itself
            pass
        self._held = []

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._release()
