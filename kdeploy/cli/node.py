"""kdeploy node remove: take hosts out of a running cluster."""
from __future__ import annotations

from typing import Annotated

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, confirm_change, load
from kdeploy.cli.plan import ArtifactsOpt, TransportOpt, factory_for

app = typer.Typer(help="Cluster membership: remove nodes (add one by listing it in the "
                       "inventory and running `kdeploy up`).", no_args_is_help=True)


@app.command("remove")
def remove(
    inventory: InventoryOpt,
    names: Annotated[list[str], typer.Argument(help="Hosts to remove, as the inventory names them.",
                                               show_default=False)],
    force: Annotated[bool, typer.Option(help="Remove a dead host: skip what needs it (drain, "
                                        "reset) and say so.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
    drain_timeout: Annotated[int, typer.Option(help="Seconds the drain may take.", min=1)] = 300,
    artifacts: ArtifactsOpt = None,
    as_json: JsonOpt = False,
    arch: Annotated[str, typer.Option(help="Host architecture.")] = "amd64",
    transport: TransportOpt = "ssh",
) -> None:
    """Remove hosts from the cluster: drain, update the hosts that stay (load balancers, routes,
    apiservers), leave etcd, reset the host, delete its Node, forget its certificates and pod
    CIDR. Then delete the host from the inventory: `up` refuses an inventory that still lists it."""
    from kdeploy.cli.output import console, err_console, progress_printer, show_plan
    from kdeploy.errors import KdeployError
    from kdeploy.execute.session import connect
    from kdeploy.transport.pool import UnreachableHosts, close_all
    from kdeploy.verbs.node import check_removal, run_remove

    cluster = load(inventory, quiet=as_json)
    check_removal(cluster, names)          # unknown names, last control plane: before any connection
    transports, failed = connect(cluster, factory=factory_for(transport))
    dead = {n: e for n, e in failed.items() if n in names}
    others = {n: e for n, e in failed.items() if n not in names}
    if others or (dead and not force):
        close_all(transports)
        err = UnreachableHosts(failed)
        if dead and not others:
            raise KdeployError(err.message, "to remove a dead host without touching it, pass --force")
        raise err
    for n in dead:
        err_console.print(f"[yellow]{n} is unreachable: removing it without touching it (--force)[/yellow]")
    emit = progress_printer(as_json)

    def confirm(p) -> bool:
        return confirm_change(f"Remove {', '.join(names)} from cluster {cluster.name}?",
                              lambda: show_plan(p), yes=yes, as_json=as_json)
    try:
        out = run_remove(cluster, names, transports, artifacts_dir=artifacts, arch=arch,
                         drain_timeout=drain_timeout, confirm=confirm, emit=emit)
    finally:
        close_all(transports)
    if as_json:
        import json
        typer.echo(json.dumps({"removed": out.removed, "skipped": out.skipped,
                               "seconds": round(out.seconds, 2)}))
        return
    for host, what in out.skipped.items():
        console.print(f"{host}: skipped {', '.join(what)}")
    console.print(f"Removed {', '.join(out.removed)} from cluster {cluster.name} in "
                  f"{out.seconds:.1f} s. Now delete them from {inventory}: `kdeploy up` refuses an "
                  "inventory that still lists a removed host.")
