"""Human output: plans, progress events, result tables (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kdeploy.plan.planner import Plan

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)

_SYMBOL = {"create": ("+", "green"), "update": ("~", "yellow"), "start": ("▶", "cyan"),
           "enable": ("●", "cyan"), "restart": ("↻", "magenta"), "run": ("$", "blue")}


def show_plan(p: Plan, *, diffs: bool = True, notes: list[str] = ()) -> None:
    for n in notes:
        console.print(Text(n, style="yellow"))
    if p.empty:
        console.print("No changes. The hosts match the inventory.")
        return
    for host in p.hosts():
        console.print(Text(f"host {host}", style="bold"))
        for phase in p.phases():
            changes = p.for_host_phase(host, phase)
            if not changes:
                continue
            console.print(Text(f"  [{phase}]", style="dim"))
            for c in changes:
                sym, style = _SYMBOL.get(c.action, ("?", "white"))
                what = c.target
                if c.kind == "binary":
                    what += f" (sha256 {(c.new_sha256 or '-')[:12]})"
                elif c.secret and c.new_sha256:
                    what += f"  (secret; sha256 {(c.old_sha256 or '-')[:12]} -> {c.new_sha256[:12]})"
                line = Text(f"    {sym} {c.action:<7} ", style=style)
                line.append(what)
                if c.reason:
                    line.append(f"  ({c.reason})", style="dim")
                console.print(line)
                if diffs and c.diff and c.action == "update":
                    for dl in c.diff.splitlines()[2:]:
                        st = "green" if dl.startswith("+") else "red" if dl.startswith("-") else "dim"
                        console.print(Text("        " + dl, style=st))
    n = len(p.changes)
    restarts = sum(len(v) for v in p.restarts().values())
    console.print(f"\nPlan: {n} change(s) on {len(p.hosts())} host(s), "
                  f"{restarts} service start(s)/restart(s).")


class LiveProgress:
    """phase x host table, updated live (a terminal); the event sink of the engine."""

    def __init__(self, hosts: list[str]):
        from rich.live import Live
        from kdeploy.plan.resources import PHASES
        self.hosts, self.phases = hosts, list(PHASES)
        self.cells: dict[tuple[str, str], str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, float] = {}
        self.now: dict[str, str] = {}   # host -> what it is doing (the last change or gate)
        self.live = Live(self._table(), console=console, refresh_per_second=8, transient=False)
        self.started = False

    def __enter__(self):
        self.live.__enter__()
        self.started = True
        return self

    def __exit__(self, *exc):
        self.live.update(self._table())
        return self.live.__exit__(*exc)

    def __call__(self, e: dict) -> None:
        kind, phase = e.get("event"), e.get("phase")
        if kind == "phase-start":
            for h in e["hosts"]:
                self.cells[(h, phase)] = "running"
        elif kind == "change":
            key = (e["host"], phase)
            self.counts[key] = self.counts.get(key, 0) + 1
            target = e["target"]
            self.now[e["host"]] = f"{e['action']} " + (target.rsplit("/", 1)[-1] if target.startswith("/")
                                                        else target)[:40]
        elif kind == "gate":
            self.cells[(e["host"], phase)] = "waiting"
            self.now[e["host"]] = f"waiting: {e.get('what', '')}"[:48]
        elif kind == "host-failed":
            self.cells[(e["host"], phase)] = "failed"
        elif kind == "phase-done":
            self.seconds[phase] = e["seconds"]
            for (h, p), v in list(self.cells.items()):
                if p == phase and v in ("running", "waiting"):
                    self.cells[(h, p)] = "done"
                    if not any(st in ("running", "waiting") for (h2, _), st in self.cells.items() if h2 == h):
                        self.now.pop(h, None)
        self.live.update(self._table())

    def _table(self) -> Table:
        t = Table(title="kdeploy up", show_lines=False)
        t.add_column("host")
        for p in self.phases:
            t.add_column(p + (f" {self.seconds[p]:.0f}s" if p in self.seconds else ""), justify="center")
        t.add_column("now", no_wrap=True, overflow="ellipsis", max_width=48)
        style = {"running": "yellow", "waiting": "cyan", "done": "green", "failed": "red"}
        for h in self.hosts:
            row = []
            for p in self.phases:
                st = self.cells.get((h, p))
                n = self.counts.get((h, p), 0)
                label = {"done": f"✓ {n}", "running": f"… {n}", "waiting": "⧗", "failed": "✗"}.get(st, "·")
                row.append(Text(label, style=style.get(st, "dim")))
            t.add_row(h, *row, Text(self.now.get(h, ""), style="dim"))
        return t


def show_steps(steps: list[dict]) -> None:
    """A lifecycle verb's rollout (upgrade, certs renew) as its dry run lists it."""
    console.print("Rollout:")
    for s in steps:
        hooks = f"  [{', '.join(s['hooks'])}]" if s["hooks"] else ""
        console.print(f"  {s['step']:<20} {s['policy']:<14} {', '.join(s['hosts'])}{hooks}",
                      markup=False, highlight=False)


def progress_printer(as_json: bool):
    import json

    def emit(e: dict) -> None:
        if as_json:
            print(json.dumps(e), flush=True)
            return
        kind = e.get("event")
        if kind == "phase-start":
            how = f" ({e['policy']})" if e.get("policy", "parallel") != "parallel" else ""
            console.print(Text(f"▶ {e['phase']}{how}: {', '.join(e['hosts'])}", style="bold"))
        elif kind == "hook":
            console.print(Text(f"  {e['host']:<12} · {e['hook']}", style="cyan"))
        elif kind == "cleanup":
            console.print(Text(f"  cleanup: {e['what']}" + ("" if e["ok"] else f" failed: {e['error']}"),
                               style="yellow"))
        elif kind == "note":      # what a hook did or skipped: etcd member add, reset, ...
            console.print(Text(f"  {e['host']:<12} · {e['what']}", style="yellow" if e.get("skipped") else None))
        elif kind == "snapshot":
            console.print(Text(f"  etcd snapshot from {e['host']}: {e['path']} ({e['bytes']} bytes)"))
        elif kind == "change":
            sym, style = _SYMBOL.get(e["action"], ("?", "white"))
            console.print(Text(f"  {e['host']:<12} {sym} {e['action']:<7} {e['target']}", style=style))
        elif kind == "gate":
            console.print(Text(f"  {e['host']:<12} … waiting: {e['what']}", style="dim"))
        elif kind == "host-failed":
            console.print(Text(f"  {e['host']:<12} ✗ {e['error']}", style="red"))
        elif kind == "phase-done":
            console.print(Text(f"  done in {e['seconds']:.1f} s", style="dim"))
    return emit


def checks_table(results) -> Table:
    t = Table(title="kdeploy verify")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail", overflow="fold")
    t.add_column("s", justify="right")
    for r in results:
        t.add_row(r.name, Text("PASS", style="green") if r.ok else Text("FAIL", style="red"),
                  r.detail, f"{r.seconds:.1f}")
    return t


class DownloadBar:
    """Byte progress of artifact downloads on a terminal (stderr), one line per file,
    gone when the downloads end. Thread-safe (rich's Progress is)."""

    def __init__(self):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(),
                                  console=err_console, transient=True)
        self._tasks: dict[str, object] = {}
        self._running = 0

    def start(self, key: str, label: str, total: int | None) -> None:
        if not self._running:
            self._progress.start()
        self._running += 1
        self._tasks[key] = self._progress.add_task(label, total=total)

    def advance(self, key: str, n: int) -> None:
        self._progress.advance(self._tasks[key], n)

    def done(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is None:
            return
        self._progress.remove_task(task)
        self._running -= 1
        if not self._running:
            self._progress.stop()


def download_progress(as_json: bool = False):
    """A context in which artifact downloads show a bar on a terminal (nothing otherwise)."""
    from contextlib import nullcontext
    from kdeploy.artifacts.download import showing_progress
    if as_json or not err_console.is_terminal:
        return nullcontext()
    return showing_progress(DownloadBar())
