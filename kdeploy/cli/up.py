"""kdeploy up (alias apply): converge the hosts to the inventory, then verify."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load, with_mirror
from kdeploy.cli.plan import ArtifactsOpt, MirrorOpt, TransportOpt, factory_for


def _up(inventory: Path, artifacts: Optional[Path], as_json: bool, dry_run: bool,
        verify: bool, arch: str, transport: str = "ssh", mirror: str | None = None) -> None:
    from kdeploy.cli.output import console, download_progress, progress_printer, show_plan
    from kdeploy.errors import VerifyError
    from kdeploy.execute.session import connect
    from kdeploy.transport.pool import UnreachableHosts, close_all
    from kdeploy.verbs.up import run_up

    timings: dict[str, float] = {}
    emit = progress_printer(as_json)
    cluster = with_mirror(load(inventory, quiet=as_json), mirror)
    # connect first: an unreachable host fails the run before anything is downloaded
    t = time.monotonic()
    transports, failed = connect(cluster, factory=factory_for(transport))
    if failed:
        close_all(transports)
        raise UnreachableHosts(failed)
    timings["connect"] = time.monotonic() - t
    live = None
    if not as_json and console.is_terminal:
        from kdeploy.cli.output import LiveProgress
        live = LiveProgress([h.name for h in cluster.hosts])

    def announce(p) -> None:
        if not as_json:
            console.print(f"Applying {len(p.changes)} change(s) on {len(p.hosts())} host(s)…")
        if live:
            live.__enter__()

    try:
        try:
            with download_progress(as_json):
                out = run_up(cluster, transports, inventory=inventory, artifacts_dir=artifacts,
                             arch=arch, dry_run=dry_run, check=verify, emit=live or emit,
                             on_apply=announce, timings=timings)
        finally:
            if live and live.started:
                live.__exit__(None, None, None)
    finally:
        close_all(transports)
    p = out.plan
    if p.empty:
        emit({"event": "no-changes"}) if as_json else console.print(
            "No changes: every host matches the inventory; nothing was restarted.")
    if dry_run:
        if not p.empty:
            from kdeploy.verbs.membership import notes
            show_plan(p, notes=notes(out.deployment.etcd)) if not as_json else typer.echo(p.to_json())
        raise typer.Exit(0 if p.empty else 2)
    if out.checks:
        _print_checks(out.checks, as_json)
    if as_json:
        emit({"event": "done", "admin_kubeconfig": str(out.admin), "changes": len(p.changes),
              "timings": {k: round(v, 2) for k, v in timings.items()}})
    else:
        _summary(cluster, out.admin, timings, len(p.changes))
    if not out.ok:
        raise VerifyError("the cluster was deployed but some checks failed (see the table)",
                          f"details: kdeploy verify -i {inventory}")


def _print_checks(results, as_json: bool) -> None:
    from kdeploy.cli.output import checks_table, console
    if as_json:
        import json
        from kdeploy.verbs.up import check_event
        for r in results:
            print(json.dumps(check_event(r)), flush=True)
    else:
        console.print(checks_table(results))


def _verify(dep, transports, as_json, *, keep_workload: bool = False):
    """verify (each check recorded in the state dir's runs/<stamp>-verify), then the table."""
    from kdeploy.verbs.up import verify_recorded
    results = verify_recorded(dep, transports, keep_workload=keep_workload)
    _print_checks(results, as_json)
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
           transport: TransportOpt = "ssh", mirror: MirrorOpt = None) -> None:
        """Converge the hosts to the inventory: a working cluster (alias: apply)."""
        _up(inventory, artifacts, as_json, dry_run, verify, arch, transport, mirror)

    app.command("up")(up)
    app.command("apply", hidden=True)(up)
