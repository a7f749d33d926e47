"""The planner: pure and deterministic. desired resources + observed state -> Plan.

No I/O here. The observed state of a host (`Observed`) is built from gathered facts by the
engine; an empty Observed means a bare host (everything to create), which is how the
offline plan works.
"""
from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

from kdeploy.plan.resources import PHASES, Block, HostResources

BLOCK_BEGIN = "# BEGIN {marker} (managed by kdeploy)"
BLOCK_END = "# END {marker}"


@dataclass(frozen=True)
class FileState:
    sha256: str
    mode: int | None = None
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Observed:
    """What is on one host now (only what the plan needs)."""
    files: Mapping[str, FileState] = field(default_factory=dict)      # path -> state; absent = missing
    contents: Mapping[str, bytes] = field(default_factory=dict)       # old text of changed, non-secret files and block files
    units: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # name -> (active, enabled)
    pending: frozenset[str] = frozenset()                             # journal entries left by an interrupted run


@dataclass(frozen=True)
class Change:
    host: str
    phase: str
    kind: str            # file | block | binary | mode | unit-start | unit-enable | unit-restart | run
    target: str          # path, unit name, or a command line
    action: str          # create | update | start | enable | restart | run
    reason: str = ""
    diff: str | None = None
    secret: bool = False
    old_sha256: str | None = None
    new_sha256: str | None = None

    def key(self) -> str:
        """Journal key: a consequence (restart, command) the engine must not forget after a crash."""
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def for_host_phase(self, host: str, phase: str) -> list[Change]:
        return [c for c in self.changes if c.host == host and c.phase == phase]

    def hosts(self) -> list[str]:
        return list(dict.fromkeys(c.host for c in self.changes))

    def phases(self) -> list[str]:
        present = {c.phase for c in self.changes}
        return [p for p in PHASES if p in present]

    def restarts(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for c in self.changes:
            if c.kind in ("unit-restart", "unit-start"):
                out.setdefault(c.host, []).append(c.target)
        return out

    def to_dict(self) -> dict:
        return {"changes": [asdict(c) for c in self.changes], "empty": self.empty}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(tuple(Change(**c) for c in d["changes"]))


def render_block(block: Block) -> str:
    body = block.content if block.content.endswith("\n") else block.content + "\n"
    return f"{BLOCK_BEGIN.format(marker=block.marker)}\n{body}{BLOCK_END.format(marker=block.marker)}\n"


def apply_block(old: str, block: Block) -> str:
    """Return old text with the block inserted or replaced (idempotent)."""
    begin, end = BLOCK_BEGIN.format(marker=block.marker), BLOCK_END.format(marker=block.marker)
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == begin), None)
    if start is not None:
        stop = next((i for i in range(start, len(lines)) if lines[i].rstrip("\n") == end), None)
        if stop is not None:
            return "".join(lines[:start]) + render_block(block) + "".join(lines[stop + 1:])
    if old and not old.endswith("\n"):
        old += "\n"
    return old + render_block(block)


def _diff(path: str, old: bytes | None, new: bytes) -> str | None:
    try:
        a = (old or b"").decode().splitlines(keepends=True)
        b = new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
    return "".join(difflib.unified_diff(a, b, f"a{path}" if old is not None else "/dev/null",
                                        f"b{path}", n=2))


def _drift(st: FileState, mode: int, owner: str, group: str) -> str:
    """What differs in mode/owner/group ('' when nothing); unknown observed values don't count."""
    out = []
    if st.mode is not None and st.mode != mode:
        out.append(f"mode {oct(st.mode)} -> {oct(mode)}")
    if st.owner is not None and st.owner != owner:
        out.append(f"owner {st.owner} -> {owner}")
    if st.group is not None and st.group != group:
        out.append(f"group {st.group} -> {group}")
    return ", ".join(out)


def plan_host(res: HostResources, obs: Observed) -> list[Change]:
    host = res.host
    changes: list[Change] = []
    # units to restart: name -> reason (first cause wins); started units are not restarted too
    restart: dict[str, str] = {}

    def consequence(restarts: Iterable[str], cause: str, run: Iterable[tuple[str, ...]], phase: str):
        for u in restarts:
            restart.setdefault(u, cause)
        for argv in run:
            changes.append(Change(host, phase, "run", shlex.join(argv), "run", f"{cause} changed"))

    for f in res.files:
        st = obs.files.get(f.path)
        if st is None or st.sha256 != f.sha256:
            action = "create" if st is None else "update"
            # diffs for updates only: a created file's content is in `kdeploy render`
            diff = None if f.secret or st is None else _diff(f.path, obs.contents.get(f.path), f.content)
            changes.append(Change(host, f.phase, "file", f.path, action, diff=diff, secret=f.secret,
                                  old_sha256=st.sha256 if st else None, new_sha256=f.sha256))
            consequence(f.restarts, f.path, f.run_on_change, f.phase)
        elif drift := _drift(st, f.mode, f.owner, f.group):
            changes.append(Change(host, f.phase, "mode", f.path, "update", drift, secret=f.secret))

    for b in res.blocks:
        old = obs.contents.get(b.path, b"").decode(errors="replace")
        new = apply_block(old, b)
        if new != old:
            changes.append(Change(host, b.phase, "block", b.path, "update",
                                  diff=_diff(b.path, old.encode(), new.encode())))
            consequence((), b.path, b.run_on_change, b.phase)

    for bn in res.binaries:
        st = obs.files.get(bn.path)
        if st is None or st.sha256 != bn.sha256:
            changes.append(Change(host, bn.phase, "binary", bn.path, "create" if st is None else "update",
                                  old_sha256=st.sha256 if st else None, new_sha256=bn.sha256))
            consequence(bn.restarts, bn.path, bn.run_on_change, bn.phase)
        elif drift := _drift(st, bn.mode, "root", "root"):
            changes.append(Change(host, bn.phase, "mode", bn.path, "update", drift))

    unit_phase = {u.name: u.phase for u in res.units}
    for u in res.units:
        active, enabled = obs.units.get(u.name, ("inactive", "not-found"))
        if u.enabled and enabled != "enabled":
            changes.append(Change(host, u.phase, "unit-enable", u.name, "enable"))
        if u.running and active != "active":
            changes.append(Change(host, u.phase, "unit-start", u.name, "start",
                                  f"{active}" if active != "inactive" else ""))
            restart.pop(u.name, None)
        elif u.name in restart:
            changes.append(Change(host, u.phase, "unit-restart", u.name, "restart",
                                  f"{restart.pop(u.name)} changed"))
    # restarts requested for units kdeploy does not manage as Unit resources
    for name, cause in sorted(restart.items()):
        changes.append(Change(host, unit_phase.get(name, "node"), "unit-restart", name, "restart",
                              f"{cause} changed"))

    # consequences an interrupted run left pending (journal on the host), replayed in the phase
    # of the resource that caused them; entries no longer desired (stale) are ignored
    planned = {c.key() for c in changes}
    run_phase = {shlex.join(argv): r.phase for r in (*res.files, *res.blocks, *res.binaries)
                 for argv in r.run_on_change}
    unit_phase.update({u: r.phase for r in (*res.files, *res.binaries) for u in r.restarts
                       if u not in unit_phase})
    for key in sorted(obs.pending):
        kind, _, target = key.partition(":")
        phase = unit_phase.get(target) if kind == "unit-restart" else run_phase.get(target) if kind == "run" else None
        if phase is None:
            continue
        ch = Change(host, phase, kind, target, "restart" if kind == "unit-restart" else "run",
                    "left pending by an interrupted run")
        if ch.key() not in planned:
            changes.append(ch)
    order = {p: i for i, p in enumerate(PHASES)}
    kinds = ("mode", "binary", "file", "block", "run", "unit-enable", "unit-start", "unit-restart")
    changes.sort(key=lambda c: (order.get(c.phase, 99), kinds.index(c.kind)))
    return changes


def plan(desired: Mapping[str, HostResources], observed: Mapping[str, Observed]) -> Plan:
    """Hosts in inventory (dict) order; within a host, phases in order."""
    out: list[Change] = []
    for name, res in desired.items():
        out.extend(plan_host(res, observed.get(name, Observed())))
    order = {p: i for i, p in enumerate(PHASES)}
    hosts = {h: i for i, h in enumerate(desired)}
    out.sort(key=lambda c: (order.get(c.phase, 99), hosts[c.host]))  # stable: keeps kind order
    return Plan(tuple(out))


def outcome(desired: Mapping[str, HostResources]) -> dict[str, Observed]:
    """The observed state a host has after the plan applied: for the idempotence test and for
    offline re-plans."""
    out = {}
    for name, res in desired.items():
        files = {f.path: FileState(f.sha256, f.mode, f.owner, f.group) for f in res.files}
        files.update({b.path: FileState(b.sha256, b.mode) for b in res.binaries})
        contents = {}
        for b in res.blocks:
            contents[b.path] = apply_block(contents.get(b.path, b"").decode(), b).encode()
        units = {u.name: ("active" if u.running else "inactive", "enabled" if u.enabled else "disabled")
                 for u in res.units}
        out[name] = Observed(files=files, contents=contents, units=units)
    return out
