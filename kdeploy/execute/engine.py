"""The engine: the only part of kdeploy that acts on hosts.

Runs a Plan as an ordered list of Steps (kdeploy.execute.steps: `up` is one step per phase;
`upgrade` rolls etcd and the control plane one host at a time and the nodes in batches with
drain hooks). Within a step, hosts under its policy. Per host and phase:
journal the consequences, write binaries/files/blocks atomically, daemon-reload if unit files
changed, run commands, enable/start/restart units, clear the journal, then pass the phase's
gate (etcd healthy, apiserver ready) before the next host or step. Fail fast: the first step
with a failing host stops the run with one error listing every failed host, after the cleanup
stack (uncordon what a hook cordoned) ran in reverse order.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, KdeployError, TransportError
from kdeploy.execute import journal
from kdeploy.facts.parse import SHA_PRIME
from kdeploy.plan.planner import Change, Plan, apply_block
from kdeploy.execute.steps import SERIAL, Gate, Lanes, Step, converge_steps  # noqa: F401 (Gate: re-export)
from kdeploy.plan.resources import ENABLE, INDEPENDENT_RUNS, PHASES, Binary, Block, HostResources
from kdeploy.transport.base import Put, Transport, put_many

UPLOADS_PER_HOST = 4   # a host's files at once, when at most WIDE_HOSTS hosts upload in a phase
WIDE_HOSTS = 2         # more hosts: one file at a time each (they share the deployer's streams,
                       # and a host done with its files moves on to its restarts and imports)


def _work(plan: Plan, step: Step, host: str) -> int:
    """A rough cost of a host's share of a step: an upload weighs ten other changes."""
    return sum(10 if c.kind == "binary" else 1 for p in step.phases for c in plan.for_host_phase(host, p))

Event = dict
EventSink = Callable[[Event], None]


@dataclass
class PhaseResult:
    phase: str
    seconds: float = 0.0
    changed_hosts: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    phases: list[PhaseResult] = field(default_factory=list)
    changes: int = 0

    @property
    def ok(self) -> bool:
        return all(not p.failed for p in self.phases)


class Engine:
    def __init__(self, desired: Mapping[str, HostResources], transports: Mapping[str, Transport],
                 *, roles: Mapping[str, set[str]], gates: tuple[Gate, ...] = (),
                 emit: EventSink = lambda e: None, parallel: int = 32,
                 api_runner: Callable | None = None, batch=None):
        self.desired = desired
        # kdeploy.execute.batch.BatchApplier: a whole batch of hosts per transport call
        # (ansible: one ansible-runner run per step); None: the per-host path below
        self.batch = batch
        self.api_runner = api_runner
        self._lock = threading.Lock()
        self._cleanups: list[tuple[str, str, Callable[[], None]]] = []
        self.t = transports
        self.roles = roles
        self.gates = gates
        self.emit = emit
        # hosts acting at once in a step, as many as facts and connections (32): when a node joins
        # 24 others, their /etc/hosts and route updates go in one wave, not two; uploads stay
        # bounded by the transport (its streams)
        self.parallel = parallel
        self._stop = threading.Event()
        self._prefetch: dict[tuple[str, str], Future] = {}   # (host, path) -> its early upload
        self._uploaders: dict[str, set[str]] = {}
        # one host may be acted on by two lanes at once: its journal and hash cache are
        # read-modify-write files
        self._host_locks = {h: threading.Lock() for h in transports}
        self._journals: dict[str, set[str]] = {}   # host -> its journal as last read or written

    # -- public ----------------------------------------------------------------------------
    def apply(self, plan: Plan, steps: tuple[Step, ...] | None = None) -> RunResult:
        """Run the plan step by step (default: `up`'s one step per phase). On failure run the
        cleanup stack (LIFO) and raise ApplyError carrying `.result` (what ran, per step)."""
        steps = steps if steps is not None else converge_steps(PHASES)
        result = RunResult(changes=len(plan.changes))
        self._stop = threading.Event()
        self._cleanups: list[tuple[str, str, Callable[[], None]]] = []
        self._prewarm(plan)
        self._prefetch = {}
        self._journals = {}   # read again by each apply: a run may apply more than once
        self._uploaders = {}   # phase -> hosts uploading in it
        for c in plan.changes:
            if c.kind == "binary":
                self._uploaders.setdefault(c.phase, set()).add(c.host)
        pools: list[ThreadPoolExecutor] = []
        try:
            self._journal_consequences(plan)   # before any change, a prefetched one too
            pools = self._start_prefetch(plan)
            for step in steps:
                if isinstance(step, Lanes):
                    self._lanes(plan, step, result)
                else:
                    self._step(plan, step, result)
        except BaseException:
            self._stop.set()  # running host steps finish their current command, gates give up
            self._run_cleanups()
            raise
        finally:
            for ex in pools:   # no upload outlives the run (and its host locks)
                ex.shutdown(wait=True, cancel_futures=True)
        return result

    def _start_prefetch(self, plan: Plan) -> list[ThreadPoolExecutor]:
        """Hosts joining a running cluster get every binary they lack from the start of the run,
        UPLOADS_PER_HOST at a time, while their earlier phases run (a new worker's kubelet
        uploads while containerd starts and its images import); each phase waits for its own.
        Only new files on new hosts: nothing runs them before their phase, and a run that
        stops early leaves files the next one finds in place. A first deploy (no host runs a
        kubelet yet) keeps the phase order, which brings the control plane up first."""
        if self.batch is not None:
            return []
        from kdeploy.components import kubelet
        # every host is a node: one whose kubelet the plan starts is joining the cluster
        starting = {c.host for c in plan.changes
                    if c.kind == "unit-start" and c.target in kubelet.COMPONENT.units}
        if not starting or starting >= set(self.desired):
            return []
        order = {ph: i for i, ph in enumerate(PHASES)}
        pools = []
        width = UPLOADS_PER_HOST if len(starting) <= WIDE_HOSTS else 1
        for h in sorted(starting):
            creates = sorted((c for c in plan.changes if c.host == h and c.kind == "binary"
                              and c.action == "create"), key=lambda c: order.get(c.phase, 99))
            if len(creates) < 2:
                continue
            ex = ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"kdeploy-prefetch-{h}")
            pools.append(ex)
            for c in creates:
                self._prefetch[(h, c.target)] = ex.submit(self._put_binary, h, c.target)
        return pools

    def _put_binary(self, host: str, path: str) -> None:
        if self._stop.is_set():
            raise ApplyError("interrupted", "run `kdeploy up` again")
        b: Binary = next(x for x in self.desired[host].binaries if x.path == path)
        self.t[host].put_file(b.path, b.local_path, mode=b.mode, sha256=b.sha256)

    def _prewarm(self, plan: Plan) -> None:
        """Start compressing the binaries this plan uploads (kdeploy.transport.blobs) while the
        first steps run; only transports that send compressed blobs ask for it."""
        if not any(getattr(t, "compresses_uploads", False) for t in self.t.values()):
            return
        from kdeploy.transport import blobs
        want: dict[str, object] = {}
        targets: dict[str, set[str]] = {}
        for c in plan.changes:
            if c.kind == "binary":
                targets.setdefault(c.host, set()).add(c.target)
        for h, paths in targets.items():
            want.update({b.sha256: b.local_path for b in self.desired[h].binaries if b.path in paths})
        blobs.prewarm([(p, sha) for sha, p in want.items()])

    # -- the hooks' context ------------------------------------------------------------------
    def api(self, argv: list[str], *, timeout: float = 60, check: bool = True):
        """Run kubectl against the cluster's API (on a control-plane host, through its LB)."""
        if self.api_runner is None:
            raise ApplyError("this step needs the cluster's API but no API host was given")
        return self.api_runner(argv, timeout=timeout, check=check)

    def push_cleanup(self, key: str, what: str, fn: Callable[[], None]) -> None:
        with self._lock:
            self._cleanups.append((key, what, fn))

    def pop_cleanup(self, key: str) -> None:
        with self._lock:
            self._cleanups = [c for c in self._cleanups if c[0] != key]

    def _run_cleanups(self) -> None:
        while True:
            with self._lock:
                if not self._cleanups:
                    return
                key, what, fn = self._cleanups.pop()
            try:
                fn()
                self.emit({"event": "cleanup", "what": what, "ok": True})
            except Exception as e:  # noqa: BLE001 - report every cleanup, keep undoing the rest
                msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
                self.emit({"event": "cleanup", "what": what, "ok": False, "error": msg})

    # -- steps -------------------------------------------------------------------------------
    def _lanes(self, plan: Plan, lanes: Lanes, result: RunResult) -> None:
        """Each lane's steps in order, the lanes side by side; the first failure stops the other
        lanes at their next command and is the one raised."""
        if any(c.kind == "unit-restart" and c.phase in lanes.phases for c in plan.changes):
            for step in lanes.steps:  # a running cluster changes: one lane after the other
                self._step(plan, step, result)
            return
        errors: list[BaseException] = []

        def lane(steps: tuple[Step, ...]) -> None:
            try:
                for step in steps:
                    if self._stop.is_set():
                        return
                    self._step(plan, step, result)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                with self._lock:
                    errors.append(e)
                self._stop.set()

        threads = [threading.Thread(target=lane, args=(steps,), name=f"kdeploy-lane-{i}", daemon=True)
                   for i, steps in enumerate(lanes.lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _step(self, plan: Plan, step: Step, result: RunResult) -> None:
        hosts = [h for h in step.hosts_with_changes(plan, tuple(self.desired)) if h in self.desired]
        if not hosts:
            return
        pr = PhaseResult(step.name)
        result.phases.append(pr)
        policy = step.policy
        restarting = {h for h in hosts for p in step.phases for c in plan.for_host_phase(h, p)
                      if c.kind == "unit-restart"}
        if step.serial_when_restarting and restarting:
            policy = SERIAL
            # new capacity before old goes down: hosts starting fresh (a control-plane host
            # joining) take their turn before running ones restart
            hosts = [h for h in hosts if h not in restarting] + [h for h in hosts if h in restarting]
        t0 = time.monotonic()
        self.emit({"event": "phase-start", "phase": step.name, "hosts": hosts,
                   "policy": policy.describe(), "rolling": policy.mode != "parallel"})
        try:
            if self.batch is not None:
                self._batched(plan, step, hosts, policy, pr)
            else:
                for batch in policy.batches(hosts):
                    self._batch(plan, step, batch, pr, per_host_gates=policy.mode != "parallel")
                    if pr.failed:
                        break  # never take more hosts down while one failed
                if not pr.failed and policy.mode == "parallel":
                    self._gates(step, hosts, pr)
        finally:
            pr.seconds = time.monotonic() - t0
            self.emit({"event": "phase-done", "phase": step.name, "seconds": round(pr.seconds, 2),
                       "failed": pr.failed})
        if pr.failed:
            what = f"phase {step.name}" if step.name in PHASES else f"step {step.name}"
            lines = "\n".join(f"  {h}: {msg}" for h, msg in pr.failed.items())
            err = ApplyError(f"{what} failed on {len(pr.failed)} host(s):\n{lines}",
                             "fix the cause and run the same command again: it resumes where "
                             "this run stopped")
            err.result = result
            raise err

    def _batch(self, plan: Plan, step: Step, batch: list[str], pr: PhaseResult,
               per_host_gates: bool) -> None:
        ex = ThreadPoolExecutor(max_workers=min(self.parallel, len(batch)))
        # the most work first: at most `parallel` hosts act at once, and a host added to a
        # running cluster (its binaries, its units) must not queue behind many small changes
        order = sorted(batch, key=lambda h: -_work(plan, step, h))
        try:
            futs = {h: ex.submit(self._host_step, plan, step, h, per_host_gates) for h in order}
            futs = {h: futs[h] for h in batch}   # results (and failures) in the step's order
            for h, f in futs.items():
                try:
                    f.result()
                    pr.changed_hosts.append(h)
                except KdeployError as e:
                    pr.failed[h] = e.message
                    self.emit({"event": "host-failed", "phase": step.name, "host": h,
                               "error": e.message})
        except BaseException:
            self._stop.set()
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        ex.shutdown(wait=True)

    def _host_step(self, plan: Plan, step: Step, host: str, per_host_gates: bool) -> None:
        for hook in step.before:
            self.emit({"event": "hook", "phase": step.name, "host": host, "hook": hook.name})
            hook(self, host)
        for phase in step.phases:
            self._host_phase(host, phase, plan.for_host_phase(host, phase))
        if per_host_gates:
            for g in self._gates_of(step):
                if g.role in self.roles[host]:
                    self._wait(host, g)
        for hook in step.after:
            self.emit({"event": "hook", "phase": step.name, "host": host, "hook": hook.name})
            hook(self, host)

    def _gates_of(self, step: Step) -> tuple[Gate, ...]:
        gates = step.gates if step.gates is not None else self.gates
        return tuple(g for g in gates if g.phase in step.phases)

    def _journal_consequences(self, plan: Plan) -> None:
        """Before anything changes, journal every restart/command of each host's whole plan: a
        file written in one phase may restart a unit of a later phase (a new kubelet binary in
        `artifacts` restarts kubelet in `node`); a run stopped in between must not forget it."""
        per_host: dict[str, set[str]] = {}
        for c in plan.changes:
            if c.kind in ("unit-restart", "run"):
                per_host.setdefault(c.host, set()).add(c.key())
        if not per_host:
            return
        if self.batch is not None:  # every host's journal in one call
            from kdeploy.execute.batch import HostWork, journal_known
            work = {h: HostWork(h, journal_add=frozenset(keys), known=journal_known(self.desired[h]))
                    for h, keys in per_host.items()}
            failed = self._batch_apply(work, "journal")
            if failed:
                raise ApplyError("cannot write the journal of pending restarts on "
                                 + ", ".join(f"{h} ({m})" for h, m in failed.items()),
                                 "nothing was changed; fix the cause and run again")
            return
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(per_host))) as ex:
            for f in [ex.submit(self._journal, self.t[h], h, keys) for h, keys in per_host.items()]:
                f.result()

    # -- batched (self.batch: one transport call per batch of hosts) ----------------------------
    def _batched(self, plan: Plan, step: Step, hosts: list[str], policy, pr: PhaseResult) -> None:
        """The batch path: per batch, the before hooks (per host), ONE batch.apply with every
        host's operations (kdeploy.execute.batch.host_ops: what _host_phase does) and the gates
        (rolling: each changed host's; parallel: every host of the gate's role, after all the
        hosts' changes, as _gates does), then the after hooks."""
        from kdeploy.execute.batch import host_work
        rolling = policy.mode != "parallel"
        gates = self._gates_of(step)
        for batch in policy.batches(hosts):
            if self._stop.is_set():
                raise ApplyError("interrupted", "run `kdeploy up` again")
            ready = self._hooks(step, step.before, batch, pr)
            work = {}
            for h in ready:
                changes = [c for p in step.phases for c in plan.for_host_phase(h, p)]
                for c in changes:
                    self.emit({"event": "change", "host": h, "phase": c.phase, "kind": c.kind,
                               "target": c.target, "action": c.action})
                if changes:  # a hooks-only step's host (etcd-join) has nothing to apply
                    work[h] = host_work(h, self.desired[h], changes, phase=step.name)
            for g in gates:
                targets = self._gate_hosts(g, ready if rolling else self.desired, hosts)
                if not rolling and not any(h in hosts for h in targets):
                    continue
                for h in targets:
                    work.setdefault(h, host_work(h, self.desired[h], [], phase=step.name)).gates.append(g)
            failed = self._batch_apply(work, step.name) if work else {}
            for h, msg in failed.items():
                pr.failed[h] = msg
                self.emit({"event": "host-failed", "phase": step.name, "host": h, "error": msg})
            done = [h for h in ready if h not in failed]
            pr.changed_hosts += done
            self._hooks(step, step.after, done, pr)
            if pr.failed:
                break  # never take more hosts down while one failed

    def _batch_apply(self, work: dict, step: str) -> dict[str, str]:
        """batch.apply. Lanes may act on one host at once: the applier updates the host's
        journal and hash cache under a lock on the host itself (apply.py's host_lock)."""
        return self.batch.apply(work, emit=self.emit, stop=self._stop.is_set, step=step)

    def _hooks(self, step: Step, hooks, batch: list[str], pr: PhaseResult) -> list[str]:
        """Run hooks for each host of a batch (hosts in parallel); the hosts they passed."""
        if not hooks or not batch:
            return list(batch)

        def one(h: str) -> None:
            for hook in hooks:
                self.emit({"event": "hook", "phase": step.name, "host": h, "hook": hook.name})
                hook(self, h)
        ok = []
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(batch))) as ex:
            futs = {h: ex.submit(one, h) for h in batch}
            for h, f in futs.items():
                try:
                    f.result()
                    ok.append(h)
                except KdeployError as e:
                    pr.failed[h] = e.message
                    self.emit({"event": "host-failed", "phase": step.name, "host": h,
                               "error": e.message})
        return ok

    # -- per host ----------------------------------------------------------------------------
    def _host_phase(self, host: str, phase: str, changes: list[Change]) -> None:
        t = self.t[host]
        res = self.desired[host]
        files = {f.path: f for f in res.files}
        bins = {b.path: b for b in res.binaries}
        blocks = {b.path: b for b in res.blocks}
        pending = {c.key() for c in changes if c.kind in ("unit-restart", "run")}  # journaled in apply()
        reload_needed = False
        uploads = [c for c in changes if c.kind == "binary"]
        writes = [c for c in changes if c.kind in ("file", "block")]
        for c in changes:
            if self._stop.is_set():
                raise ApplyError("interrupted", "run `kdeploy up` again")
            if c.kind == "binary":
                if c is uploads[0]:
                    self._upload(host, phase, uploads)
                continue
            if c.kind in ("file", "block"):
                if c is writes[0]:   # the phase's files and blocks together: one write (ssh)
                    for w in writes:
                        self.emit({"event": "change", "host": host, "phase": phase, "kind": w.kind,
                                   "target": w.target, "action": w.action})
                    put_many(t, [self._put_of(t, w, files, blocks) for w in writes])
                    reload_needed = any("/systemd/system/" in w.target for w in writes)
                continue
            self.emit({"event": "change", "host": host, "phase": phase, "kind": c.kind,
                       "target": c.target, "action": c.action})
            if c.kind == "mode":
                r = files.get(c.target) or bins[c.target]
                owner = getattr(r, "owner", "root")
                group = getattr(r, "group", "root")
                t.run(["chown", f"{owner}:{group}", r.path])
                t.run(["chmod", format(r.mode, "o"), r.path])
        pushed = [bins[c.target] for c in changes if c.kind == "binary"]
        if pushed:  # prime the facts' hash cache with the sums the upload checked on the host:
            # neither this run's gate nor the next run hashes them again
            with self._host_locks.setdefault(host, threading.Lock()):
                t.run(SHA_PRIME.replace("@PAIRS@", "\n".join(f"{b.sha256} {b.path}" for b in pushed)),
                      check=False)
        if reload_needed:
            t.run(["systemctl", "daemon-reload"])
        done: set[str] = set()
        runs = [c for c in changes if c.kind == "run"]
        if phase in INDEPENDENT_RUNS and len(runs) > 1:
            done |= self._runs_at_once(t, runs, pending)
            changes = [c for c in changes if c.kind != "run"]
        for c in changes:
            if c.kind == "run":
                t.run(c.target)
            elif c.kind == "unit-enable":
                t.run([*ENABLE, c.target])
            elif c.kind == "unit-start":
                t.run(["systemctl", "start", c.target], timeout=180)
            elif c.kind == "unit-restart":
                t.run(["systemctl", "restart", c.target], timeout=180)
            else:
                continue
            if c.key() in pending:
                done.add(c.key())
        if pending:
            self._journal(t, host, remove=done)

    @staticmethod
    def _put_of(t: Transport, c: Change, files: dict, blocks: dict) -> Put:
        """A file change's write; a block's: the file as it is now with the block in place."""
        if c.kind == "file":
            f = files[c.target]
            return Put(f.path, f.content, f.mode, f.owner, f.group)
        bl: Block = blocks[c.target]
        old = (t.get(bl.path) or b"").decode(errors="replace")
        return Put(bl.path, apply_block(old, bl).encode(), 0o644)

    def _runs_at_once(self, t: Transport, runs: list[Change], pending: set[str]) -> set[str]:
        """A phase's independent commands side by side (INDEPENDENT_RUNS), their journaled keys;
        every one ends before the first failure, in plan order, is raised (the journal keeps
        them all then, as after a failed command in order)."""
        with ThreadPoolExecutor(max_workers=len(runs)) as ex:   # a few: one per image archive
            futures = [ex.submit(t.run, c.target) for c in runs]
        for f in futures:
            f.result()
        return {c.key() for c in runs if c.key() in pending}

    def _upload(self, host: str, phase: str, uploads: list[Change]) -> None:
        """A phase's binaries for one host: UPLOADS_PER_HOST at a time when few hosts upload in
        this phase (a host added to a running cluster: one file after the other left its CPUs
        and the deployer's idle), else one at a time (a first deploy of many hosts: the
        transport's streams are shared, and files at once on every host would finish every
        host late)."""
        def announce(c: Change) -> None:
            self.emit({"event": "change", "host": host, "phase": phase, "kind": c.kind,
                       "target": c.target, "action": c.action})

        def put(c: Change) -> None:
            with self._lock:
                early = self._prefetch.pop((host, c.target), None)
            if early is not None:   # uploading since the run started (_start_prefetch)
                return early.result()
            self._put_binary(host, c.target)
        width = UPLOADS_PER_HOST if len(self._uploaders.get(phase, ())) <= WIDE_HOSTS else 1
        if width == 1 or len(uploads) == 1:
            for c in uploads:   # each announced as it starts
                if self._stop.is_set():
                    raise ApplyError("interrupted", "run `kdeploy up` again")
                announce(c)
                put(c)
            return
        for c in uploads:
            announce(c)
        with ThreadPoolExecutor(max_workers=min(width, len(uploads))) as ex:
            futures = [ex.submit(put, c) for c in uploads]
        for f in futures:  # every upload has ended: the first failure, in plan order
            f.result()

    def _journal(self, t: Transport, host: str, add: set[str] = frozenset(),
                 remove: set[str] = frozenset()):
        with self._host_locks.setdefault(host, threading.Lock()):
            self._journal_locked(t, host, add, remove)

    def _journal_locked(self, t: Transport, host: str, add: set[str], remove: set[str]):
        """Read once per run, then kept here: this run holds the host's lock, nothing else
        writes the journal meanwhile (a read per update was a round trip on every host's path)."""
        from kdeploy.execute.batch import journal_known
        cur = self._journals.get(host)
        if cur is None:
            cur = self._journals[host] = set(journal.parse(t.get(journal.PATH)))
        known = journal_known(self.desired[host])
        new = {k for k in (cur | set(add)) - set(remove) if k in known}  # stale entries dropped
        if new != cur:
            t.put(journal.PATH, journal.dump(new), mode=0o600)
            self._journals[host] = new

    def _gates(self, step: Step, hosts: list[str], pr: PhaseResult) -> None:
        for g in self._gates_of(step):
            targets = self._gate_hosts(g, self.desired, hosts)
            if not any(h in hosts for h in targets):
                continue
            # a gate runs where the role lives (a per-host one on the changed hosts), after every
            # changed host of this step
            with ThreadPoolExecutor(max_workers=max(1, len(targets))) as ex:
                futs = {h: ex.submit(self._wait, h, g) for h in targets}
                for h, f in futs.items():
                    try:
                        f.result()
                    except KdeployError as e:
                        pr.failed[h] = e.message

    def _gate_hosts(self, g: Gate, pool, changed) -> list[str]:
        """The hosts of `pool` a gate runs on: those of its role; a per-host gate (a check of the
        host itself) only on the `changed` ones."""
        return [h for h in pool if g.role in self.roles[h] and (h in changed or not g.per_host)]

    def _wait(self, host: str, g: Gate) -> None:
        t = self.t[host]
        deadline = time.monotonic() + g.timeout
        self.emit({"event": "gate", "host": host, "phase": g.phase, "what": g.what})
        last = ""
        while True:
            try:
                r = t.run(g.cmd, check=False, timeout=30)
                if r.ok:
                    return
                last = ((r.err or r.out).splitlines()[-1:] or [""])[0]
            except TransportError as e:  # a reset or timeout while a service restarts: retry
                last = e.message
            if self._stop.is_set():
                raise ApplyError(f"{g.what}: interrupted")
            if time.monotonic() > deadline:
                raise TransportError(f"{g.what or g.cmd} did not pass within {int(g.timeout)} s: {last}",
                                     f"look at the host's logs: kdeploy lab ssh {host} -- journalctl -u ...")
            time.sleep(1.0)
