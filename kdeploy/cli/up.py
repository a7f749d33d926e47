"""kdeploy up (alias apply): converge the hosts to the inventory, then verify."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load
from kdeploy.cli.plan import ArtifactsOpt, TransportOpt, factory_for


def _up(inventory: Path, artifacts: Optional[Path], as_json: bool, dry_run: bool,
        verify: bool, arch: str, transport: str = "ssh") -> None:
    from kdeploy.cli.output import console, progress_printer, show_plan
    from kdeploy.errors import ApplyError, VerifyError
    from kdeploy.execute import run
    from kdeploy.execute.session import connect
    from kdeploy.plan.planner import plan as make_plan
    from kdeploy.transport.pool import UnreachableHosts, close_all

    timings: dict[str, float] = {}
    t_all = time.monotonic()
    emit = progress_printer(as_json)
    cluster = load(inventory, quiet=as_json)
    # connect first: an unreachable host fails the run before anything is downloaded
    t = time.monotonic()
    transports, failed = connect(cluster, factory=factory_for(transport))
    if failed:
        close_all(transports)
        raise UnreachableHosts(failed)
    timings["connect"] = time.monotonic() - t
    record = None
    from kdeploy.execute.lock import RunLock
    run_lock = RunLock(run.state_dir_for(cluster), "up")
    try:
        run_lock.__enter__()
        t = time.monotonic()
        dep = run.prepare(cluster, artifacts_dir=artifacts, arch=arch)
        timings["prepare (pki, artifacts, render)"] = time.monotonic() - t
        record = run.RunRecord(dep.state_dir, "up")
        t = time.monotonic()
        facts, observed = run.gather(dep, transports)
        record.write("facts.json", {h: f.to_dict() for h, f in facts.items()})
        run.preflight(dep, facts, arch)
        _refuse_version_change(cluster, facts, inventory)
        _finish_cordons(dep, transports, emit)
        timings["facts + preflight"] = time.monotonic() - t
        p = make_plan(dep.desired, observed)
        record.write("plan.json", p.to_dict())
        if p.empty:
            emit({"event": "no-changes"}) if as_json else console.print(
                "No changes: every host matches the inventory; nothing was restarted.")
        elif dry_run:
            show_plan(p) if not as_json else typer.echo(p.to_json())
            raise typer.Exit(2)
        else:
            if not as_json:
                console.print(f"Applying {len(p.changes)} change(s) on {len(p.hosts())} host(s)…")

            live = None
            if not as_json and console.is_terminal:
                from kdeploy.cli.output import LiveProgress
                live = LiveProgress(list(dep.desired))

            lock = threading.Lock()  # the engine emits from its worker threads

            def both(e):
                with lock:
                    record.event(e)
                    (live or emit)(e)
            result = None
            try:
                if live:
                    with live:
                        result = run.apply(dep, transports, p, both)
                else:
                    result = run.apply(dep, transports, p, both)
            except ApplyError as e:
                result = e.result
                raise
            finally:  # what ran is recorded, also when a phase failed
                for ph in (result.phases if result else ()):
                    timings[f"phase {ph.phase}"] = ph.seconds
                if result:
                    record.write("results.json", {"phases": [ph.__dict__ for ph in result.phases]})
                record.write("timings.json", timings)
        admin = run.write_admin_kubeconfig(dep)
        ok = True
        if verify and not p.empty:
            t = time.monotonic()
            results = _verify(dep, transports, as_json)
            timings["verify"] = time.monotonic() - t
            ok = all(r.ok for r in results)
        timings["total"] = time.monotonic() - t_all
        record.write("timings.json", timings)
        if as_json:
            emit({"event": "done", "admin_kubeconfig": str(admin), "changes": len(p.changes),
                  "timings": {k: round(v, 2) for k, v in timings.items()}})
        else:
            _summary(cluster, admin, timings, len(p.changes))
        if not ok:
            raise VerifyError("the cluster was deployed but some checks failed (see the table)",
                              f"details: kdeploy verify -i {inventory}")
    finally:
        if record:
            record.close()
        run_lock.__exit__(None, None, None)
        close_all(transports)


def _refuse_version_change(cluster, facts, inventory) -> None:
    """`up` never changes the version a cluster runs: that is `kdeploy upgrade`'s rollout."""
    from kdeploy.errors import PreflightError
    from kdeploy.verbs.upgrade import version_drift
    drift = version_drift(cluster, facts)
    if drift:
        lines = "\n".join(f"  {h}: {', '.join(d)}" for h, d in drift.items())
        raise PreflightError(
            f"these hosts run other versions than the inventory's {cluster.version}; "
            f"nothing was changed:\n{lines}",
            f"upgrade the running cluster with: kdeploy upgrade -i {inventory} --to {cluster.version}")


def _finish_cordons(dep, transports, emit) -> None:
    """Uncordon the nodes an interrupted upgrade left cordoned."""
    from kdeploy.execute.cordons import CordonLedger
    from kdeploy.verbs.upgrade import api_runner, finish_cordons
    ledger = CordonLedger(dep.state_dir)
    if ledger.nodes():
        finish_cordons(ledger, api_runner(dep.cluster, transports), emit)


def _verify(dep, transports, as_json):
    from kdeploy.cli.output import checks_table, console
    from kdeploy.verify.checks import Verifier
    from kdeploy.artifacts import versions_for
    v = Verifier(dep.cluster, transports, dep.desired,
                 workload_image=versions_for(dep.cluster.version).agnhost_image)
    results = v.run()
    if as_json:
        import json
        for r in results:
            print(json.dumps({"event": "check", **r.__dict__}), flush=True)
    else:
        console.print(checks_table(results))
    return results


def _summary(cluster, admin, timings, n_changes):
    from rich.table import Table
    from kdeploy.cli.output import console
    t = Table(title=f"cluster {cluster.name}: Kubernetes {cluster.version}", show_header=True)
    t.add_column("node")
    t.add_column("address")
    t.add_column("roles")
    for h in cluster.hosts:
        t.add_row(h.name, h.address, ", ".join(r.value for r in h.roles))
    console.print(t)
    console.print(f"API endpoint: {cluster.api_server_url}")
    console.print(f"admin kubeconfig (0600): {admin}   e.g. kubectl --kubeconfig {admin} get nodes")
    console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def register(app: typer.Typer) -> None:
    def up(inventory: InventoryOpt, artifacts: ArtifactsOpt = None, as_json: JsonOpt = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")] = False,
           verify: Annotated[bool, typer.Option("--verify/--no-verify",
                                                help="Run kdeploy verify after changes.")] = True,
           arch: Annotated[str, typer.Option(help="Host architecture.")] = "amd64",
           transport: TransportOpt = "ssh") -> None:
        """Converge the hosts to the inventory: a working cluster (alias: apply)."""
        _up(inventory, artifacts, as_json, dry_run, verify, arch, transport)

    app.command("up")(up)
    app.command("apply", hidden=True)(up)
