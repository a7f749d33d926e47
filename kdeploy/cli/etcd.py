"""kdeploy etcd backup | restore: the cluster's store saved to and restored from the deployer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, confirm_change, load
from kdeploy.cli.plan import TransportOpt, factory_for

app = typer.Typer(help="etcd snapshots: backup to the deployer, restore the whole cluster from one.",
                  no_args_is_help=True)


def _connect(cluster, transport: str, hosts=None, *, partial: bool = False):
    """partial: go on with the hosts reached (a backup needs one healthy member), saying which
    were not."""
    from kdeploy.cli.output import err_console
    from kdeploy.execute.session import connect
    from kdeploy.transport.pool import UnreachableHosts, close_all
    transports, failed = connect(cluster, factory=factory_for(transport), hosts=hosts)
    if failed and not (partial and transports):
        close_all(transports)
        raise UnreachableHosts(failed)
    for name, e in failed.items():
        err_console.print(f"[yellow]{name} unreachable, left out: {e.message}[/yellow]")
    return transports


@app.command()
def backup(
    inventory: InventoryOpt,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Snapshot file (default: "
                      ".kdeploy/<cluster>/backups/etcd-<cluster>-<time>.db beside the inventory).",
                      show_default=False)] = None,
    keep: Annotated[int, typer.Option(help="Snapshots kept in the state dir (older ones pruned).",
                                      min=1)] = 10,
    as_json: JsonOpt = False,
    transport: TransportOpt = "ssh",
) -> None:
    """Take a snapshot on a healthy etcd member, check it, and stream it to this machine
    (0600, with its sha256 and the cluster's identity beside it)."""
    from kdeploy.cli.output import console
    from kdeploy.execute.run import state_dir_for
    from kdeploy.transport.pool import close_all
    from kdeploy.verbs.etcd import backup as take
    cluster = load(inventory, quiet=as_json)
    transports = _connect(cluster, transport, hosts=[h.name for h in cluster.etcd], partial=True)
    try:
        b = take(cluster, transports, state_dir_for(cluster), out=output, keep=keep)
    finally:
        close_all(transports)
    if as_json:
        typer.echo(json.dumps({"path": str(b.path), "sha256": b.sha256, "bytes": b.bytes,
                               "seconds": round(b.seconds, 2), "pruned": b.pruned, **b.identity}))
        return
    console.print(f"etcd snapshot from {b.host}: {b.path} ({b.bytes} bytes, revision "
                  f"{b.identity['revision']}, {b.identity['keys']} keys) in {b.seconds:.1f} s")
    console.print(f"sha256 {b.sha256} (in {b.path.name}.sha256; identity in {b.path.name}.json)")
    for p in b.pruned:
        console.print(f"pruned {p}")


@app.command()
def restore(
    inventory: InventoryOpt,
    snapshot: Annotated[Path, typer.Argument(help="A snapshot taken by `kdeploy etcd backup` "
                                             "(its .sha256 beside it).", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
    force: Annotated[bool, typer.Option(help="Restore although etcd and the API are healthy.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    as_json: JsonOpt = False,
    transport: TransportOpt = "ssh",
) -> None:
    """Restore every etcd member from a snapshot: the cluster goes back to it. Stops the
    control plane and etcd, restores, starts them, verifies. Re-run an interrupted restore to
    finish it."""
    from kdeploy.cli.output import console, progress_printer
    from kdeploy.cli.up import _verify
    from kdeploy.errors import VerifyError
    from kdeploy.execute import run
    from kdeploy.transport.pool import close_all
    from kdeploy.verbs.etcd import check_snapshot, restore as do_restore
    cluster = load(inventory, quiet=as_json)
    check_snapshot(snapshot)                       # before any connection
    transports = _connect(cluster, transport)
    try:
        with run.locked(cluster, transports, "etcd-restore"):
            out = do_restore(cluster, transports, run.state_dir_for(cluster), snapshot, force=force,
                             confirm=lambda: confirm_change(
                                 f"Restore cluster {cluster.name} from {snapshot.name}? Everything "
                                 "written since the snapshot is lost", lambda: None, yes=yes,
                                 as_json=as_json),
                             emit=progress_printer(as_json))
        if as_json:
            typer.echo(json.dumps({"restored": str(snapshot), "sha256": out.sha256, "token": out.token,
                                   "resumed": out.resumed, "seconds": round(out.seconds, 2),
                                   "timings": {k: round(v, 2) for k, v in out.timings.items()}}))
        else:
            console.print(f"Restored cluster {cluster.name} from {snapshot} in {out.seconds:.1f} s"
                          + (" (finished an interrupted restore)" if out.resumed else ""))
        if verify:
            dep = run.prepare(cluster, need_artifacts=False, write_state=False)
            results = _verify(dep, transports, as_json)
            if not all(r.ok for r in results):
                raise VerifyError("the cluster was restored but some checks failed (see the table)",
                                  f"details: kdeploy verify -i {inventory}")
    finally:
        close_all(transports)
