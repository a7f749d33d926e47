"""The engine's batch hook: a transport that applies a whole batch of hosts at once.

The per-host path of the engine (Engine._host_phase) makes one transport call per change; over
ssh that costs milliseconds, over ansible-runner seconds. A transport family that can apply a
batch in one go (kdeploy.transport.ansible.AnsibleApplier: ONE ansible-runner run per step or
rolling batch) implements `BatchApplier`; the engine then hands it, per host, the ordered
operations below, which are exactly what the per-host path would do:

    write binaries/files/blocks (atomic), fix modes, prime the hash cache, daemon-reload when a
    unit file changed, run commands, enable/start/restart units (in the plan's order), clear the
    journal entries that were carried out; then the step's gates (retried until they pass).

The engine keeps the ordering (steps, batches, policies), the hooks, the journal written before
anything changes, the events and the fail-fast summary. Pure: no I/O here.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from kdeploy.execute import journal
from kdeploy.facts.parse import SHA_PRIME
from kdeploy.plan.planner import BLOCK_BEGIN, BLOCK_END, Change, render_block
from kdeploy.plan.resources import ENABLE, HostResources

RESTART_TIMEOUT = 180


@dataclass(frozen=True)
class Op:
    """One operation on one host. kind: binary | file | mode | block | run."""
    kind: str
    path: str = ""
    content: bytes = b""          # file: the full content; block: the rendered block (text)
    local_path: str = ""          # binary: the artifact on this machine
    sha256: str = ""              # binary: checked on the host before the rename
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    secret: bool = False          # file: never shown (private key, token)
    begin: str = ""               # block markers
    end: str = ""
    argv: tuple[str, ...] = ()    # run: an argv (a shell script is ("sh", "-c", script))
    timeout: float = 300
    check: bool = True            # run: a non-zero exit fails the host
    key: str = ""                 # run: the journal entry it carries out ("" = none)
    lock: bool = False            # run: under the host's apply lock (a read-modify-write of a
                                  # kdeploy file another lane may update at the same time)

    def __repr__(self) -> str:   # never a file's content in logs or tracebacks
        return f"Op({self.kind}, {self.path or shlex.join(self.argv)!r})"


@dataclass
class HostWork:
    """Everything one host does in one batch run."""
    host: str
    ops: list[Op] = field(default_factory=list)
    journal_add: frozenset[str] = frozenset()     # written before the ops (apply()'s journal)
    journal_done: frozenset[str] = frozenset()    # removed once every op succeeded
    known: frozenset[str] = frozenset()           # entries the journal may hold (others dropped)
    gates: list = field(default_factory=list)      # kdeploy.execute.steps.Gate, after the ops
    phase: str = ""

    @property
    def binaries(self) -> list[Op]:
        return [o for o in self.ops if o.kind == "binary"]


class BatchApplier(Protocol):
    def apply(self, work: Mapping[str, HostWork], *, emit: Callable[[dict], None],
              stop: Callable[[], bool], step: str) -> dict[str, str]:
        """Apply every host's work (hosts in parallel, each host's ops in order, gates after
        every host's ops). {host: error message} of the hosts that failed."""
        ...


def journal_known(res: HostResources) -> frozenset[str]:
    """The journal entries a host's desired state can produce (others are stale)."""
    known = {f"run:{shlex.join(a)}" for r in (*res.files, *res.blocks, *res.binaries)
             for a in r.run_on_change}
    known |= {f"unit-restart:{u}" for r in (*res.files, *res.binaries) for u in r.restarts}
    known |= {f"unit-restart:{u.name}" for u in res.units}
    return frozenset(known)


def _argv(target: str | Sequence[str]) -> tuple[str, ...]:
    # a `run` change's target is its shlex-joined argv (Change.target); the engine passes the
    # string to t.run, i.e. `sh -c <target>`: do the same
    return ("sh", "-c", target) if isinstance(target, str) else tuple(target)


def host_ops(res: HostResources, changes: Sequence[Change]) -> list[Op]:
    """The operations of a host's changes, in the engine's order (see Engine._host_phase)."""
    files = {f.path: f for f in res.files}
    bins = {b.path: b for b in res.binaries}
    blocks = {b.path: b for b in res.blocks}
    pending = {c.key() for c in changes if c.kind in ("unit-restart", "run")}
    out: list[Op] = []
    reload_needed = False
    for c in changes:
        if c.kind == "binary":
            b = bins[c.target]
            out.append(Op("binary", b.path, local_path=str(b.local_path), sha256=b.sha256, mode=b.mode))
        elif c.kind == "file":
            f = files[c.target]
            out.append(Op("file", f.path, content=f.content, mode=f.mode, owner=f.owner,
                          group=f.group, secret=f.secret or not (f.mode & 0o004)))
            if "/systemd/system/" in f.path:
                reload_needed = True
        elif c.kind == "mode":
            r = files.get(c.target) or bins[c.target]
            out.append(Op("mode", r.path, mode=r.mode, owner=getattr(r, "owner", "root"),
                          group=getattr(r, "group", "root")))
        elif c.kind == "block":
            bl = blocks[c.target]
            out.append(Op("block", bl.path, content=render_block(bl).encode(),
                          begin=BLOCK_BEGIN.format(marker=bl.marker),
                          end=BLOCK_END.format(marker=bl.marker)))
    pushed = [bins[c.target] for c in changes if c.kind == "binary"]
    if pushed:  # prime the facts' hash cache with the sums checked on the host, as the per-host path
        out.append(Op("run", argv=_argv(SHA_PRIME.replace(
            "@PAIRS@", "\n".join(f"{b.sha256} {b.path}" for b in pushed))), check=False, lock=True))
    if reload_needed:
        out.append(Op("run", argv=("systemctl", "daemon-reload")))
    for c in changes:
        key = c.key() if c.key() in pending else ""
        if c.kind == "run":
            out.append(Op("run", argv=_argv(c.target), key=key))
        elif c.kind == "unit-enable":
            out.append(Op("run", argv=(*ENABLE, c.target), key=key))
        elif c.kind == "unit-start":
            out.append(Op("run", argv=("systemctl", "start", c.target), timeout=RESTART_TIMEOUT, key=key))
        elif c.kind == "unit-restart":
            out.append(Op("run", argv=("systemctl", "restart", c.target), timeout=RESTART_TIMEOUT,
                          key=key))
    return out


def host_work(host: str, res: HostResources, changes: Sequence[Change], phase: str = "") -> HostWork:
    pending = frozenset(c.key() for c in changes if c.kind in ("unit-restart", "run"))
    return HostWork(host, host_ops(res, changes), journal_done=pending, known=journal_known(res),
                    phase=phase)


JOURNAL_PATH = journal.PATH
