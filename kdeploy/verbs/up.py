"""`kdeploy up`: converge the hosts to the inventory. prepare (PKI, artifacts, rendering) ->
facts -> preflight (host checks; the running version is the inventory's; cordons an
interrupted upgrade left are finished) -> plan -> engine (one step per phase) -> verify.
Holds the cluster's run lock; every run leaves a record in the state dir."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from kdeploy.errors import ApplyError, PreflightError
from kdeploy.execute import run
from kdeploy.model import Cluster


@dataclass
class UpOutcome:
    plan: object = None
    deployment: object = None
    result: object = None
    admin: Path | None = None
    checks: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def refuse_version_change(cluster: Cluster, facts: Mapping, inventory) -> None:
    """`up` never changes the version a cluster runs: that is `kdeploy upgrade`'s rollout."""
    from kdeploy.verbs.upgrade import version_drift
    drift = version_drift(cluster, facts)
    if drift:
        lines = "\n".join(f"  {h}: {', '.join(d)}" for h, d in drift.items())
        raise PreflightError(
            f"these hosts run other versions than the inventory's {cluster.version}; "
            f"nothing was changed:\n{lines}",
            f"upgrade the running cluster with: kdeploy upgrade -i {inventory} --to {cluster.version}")


def finish_interrupted_cordons(dep, transports: Mapping, emit: Callable) -> None:
    from kdeploy.execute.cordons import CordonLedger
    from kdeploy.verbs.upgrade import api_runner, finish_cordons
    ledger = CordonLedger(dep.state_dir)
    if ledger.nodes():
        finish_cordons(ledger, api_runner(dep.cluster, transports), emit)


def verify(dep, transports: Mapping, *, keep_workload: bool = False,
           focus: tuple[str, ...] | None = None, on_result=lambda r: None) -> list:
    """The checks of kdeploy.verify; the test workload runs the agnhost image of the artifact
    set in use (dep.images) and is removed afterwards unless keep_workload; with a focus, on
    the nodes a run changed and one it did not (Verifier.workload_nodes). on_result(each
    CheckResult), in order."""
    from kdeploy.verify.checks import Verifier
    return Verifier(dep.cluster, transports, dep.desired, workload_image=dep.images.agnhost,
                    keep_workload=keep_workload, focus=focus).run(on_result)


def check_event(r) -> dict:
    """A check's verdict as the run record (events.jsonl) and `--json` carry it."""
    return {"event": "check", "name": r.name, "ok": r.ok, "seconds": r.seconds, "detail": r.detail}


def verify_recorded(dep, transports: Mapping, **kw) -> list:
    """verify() with each check in a run record of its own (runs/<stamp>-verify/events.jsonl)
    when the cluster has a state dir; without one (a cluster kdeploy has not deployed from
    here), nothing is written."""
    if not dep.state_dir.is_dir():
        return verify(dep, transports, **kw)
    record = run.RunRecord(dep.state_dir, "verify")
    try:
        return verify(dep, transports, on_result=lambda r: record.event(check_event(r)), **kw)
    finally:
        record.close()


def up_steps(dep, transports: Mapping) -> tuple:
    """One step per phase; etcd hosts joining a running cluster get their own step after the
    members': one at a time, each added as a learner first and promoted once caught up. The
    control plane's steps and the nodes' runtime/images steps run side by side (Lanes)."""
    from dataclasses import replace
    from kdeploy.execute.steps import SERIAL, Hook, Step, converge_steps, with_lanes
    from kdeploy.plan.resources import PHASES, Phase
    from kdeploy.verbs.membership import Join
    steps = converge_steps(PHASES)
    joiners = dep.etcd.joiners if dep.etcd is not None else ()
    if not joiners:
        return with_lanes(steps)
    join = Join(dep.cluster, transports,
                members=tuple(h.name for h in dep.cluster.etcd if h.name not in joiners))
    out = []
    for s in steps:
        if s.name != Phase.etcd:
            out.append(s)
            continue
        out.append(replace(s, hosts=tuple(h for h in dep.desired if h not in joiners)))
        out.append(Step("etcd-join", (Phase.etcd,), SERIAL, hosts=joiners,
                        before=(Hook("etcd member add", join.add),),
                        after=(Hook("etcd member promote", join.promote),),
                        gates=(),    # a learner answers no health check: promote() waits instead
                        always=True))  # a learner left unpromoted has no file to change
    return with_lanes(tuple(out))


def run_up(cluster: Cluster, transports: Mapping, *, inventory, artifacts_dir: Path | None = None,
           arch: str = "amd64", dry_run: bool = False, check: bool = True,
           emit: Callable[[dict], None] = lambda e: None,
           on_apply: Callable[[object], None] = lambda p: None,
           timings: dict[str, float] | None = None) -> UpOutcome:
    """Everything `kdeploy up` does on connected transports. on_apply(plan) is called just
    before the first change (the CLI announces it); dry_run stops after the plan."""
    out = UpOutcome(timings=timings if timings is not None else {})
    tm = out.timings
    t_all = time.monotonic()
    with run.locked(cluster, transports, "up", hosts=not dry_run):
        t = time.monotonic()
        dep = out.deployment = run.prepare(cluster, artifacts_dir=artifacts_dir, arch=arch)
        tm["prepare (pki, artifacts, render)"] = time.monotonic() - t
        record = run.RunRecord(dep.state_dir, "up")
        try:
            t = time.monotonic()
            facts, observed = run.gather_checked(dep, transports, record, arch)
            refuse_version_change(cluster, facts, inventory)
            if not dry_run:
                finish_interrupted_cordons(dep, transports, emit)
            tm["facts + preflight"] = time.monotonic() - t
            from kdeploy.plan.planner import plan as make_plan
            p = out.plan = make_plan(dep.desired, observed)
            record.write("plan.json", p.to_dict())
            if dry_run:
                return out
            joining = bool(dep.etcd is not None and dep.etcd.joiners)   # a learner to promote
            if not p.empty or joining:
                on_apply(p)
                try:
                    out.result = run.apply(dep, transports, p, record.tee(emit),
                                           steps=up_steps(dep, transports))
                except ApplyError as e:
                    out.result = getattr(e, "result", None)
                    raise
                finally:  # what ran is recorded, also when a phase failed
                    for ph in (out.result.phases if out.result else ()):
                        tm[f"phase {ph.phase}"] = ph.seconds
                    if out.result:
                        record.write("results.json", {"phases": [ph.__dict__ for ph in out.result.phases]})
            run.record_images(dep)   # the hosts have this set's images now
            out.admin = run.write_admin_kubeconfig(dep)
            if check and not p.empty:
                t = time.monotonic()
                from kdeploy.verify.checks import node_stack_changed
                # every cluster-wide check, and the workload on the nodes this run changed
                # each check's verdict and seconds in the run's record (events.jsonl)
                out.checks = verify(dep, transports, focus=node_stack_changed(p),
                                    on_result=lambda r: record.event(check_event(r)))
                tm["verify"] = time.monotonic() - t
            return out
        finally:
            tm["total"] = tm.get("connect", 0.0) + time.monotonic() - t_all
            record.write("timings.json", tm)
            record.close()
