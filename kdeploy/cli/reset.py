"""kdeploy reset: tear down what kdeploy made on hosts (options -> verb -> output)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load
from kdeploy.cli.plan import TransportOpt, factory_for
from kdeploy.errors import ApplyError, KdeployError

HostOpt = Annotated[Optional[List[str]], typer.Option(
    "--host", help="Reset only this inventory host (repeatable). Default: every host.",
    show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def confirm(cluster, hosts: list[str], yes: bool) -> None:
    """A terminal is asked (listing the hosts); without one, --yes is required."""
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise KdeployError("kdeploy reset removes the cluster from the hosts and needs confirmation, "
                           "but there is no terminal to ask on",
                           "pass --yes to reset without asking")
    typer.echo(f"This removes Kubernetes, etcd data and kdeploy's files from {len(hosts)} host(s) "
               f"of cluster {cluster.name}:")
    for name in hosts:
        h = cluster.host(name)
        typer.echo(f"  {h.name:<16} {h.address:<18} {', '.join(r.value for r in h.roles)}")
    if not typer.confirm("Reset these hosts?", default=False):
        raise typer.Abort()


def _printer(as_json: bool):
    from kdeploy.cli.output import progress_printer
    if as_json:
        return progress_printer(True)
    from rich.text import Text
    from kdeploy.cli.output import console

    def emit(e: dict) -> None:
        kind = e.get("event")
        if kind == "reset":
            removed = e["removed"]
            if not removed:
                console.print(Text(f"{e['host']}: nothing to reset", style="green"))
                return
            counts = Counter(r.split(" ", 1)[0] for r in removed)
            console.print(Text(f"{e['host']}: removed {len(removed)} item(s) in {e['seconds']:.1f} s ("
                               + ", ".join(f"{n} {k}" for k, n in counts.items()) + ")", style="bold"))
            for r in removed:
                console.print(Text(f"  - {r}"), highlight=False)
        elif kind == "reset-failed":
            console.print(Text(f"{e['host']}: FAILED: {e['error']}", style="red"))
            for r in e.get("removed") or ():
                console.print(Text(f"  - {r}"), highlight=False)
        elif kind == "warning":
            console.print(Text(f"warning: {e['message']}", style="yellow"))
        elif kind == "forget":
            console.print(Text(f"deployer: forgot the {e['what']}"))
    return emit


def _reset(inventory: Path, hosts: Optional[List[str]], yes: bool, as_json: bool,
           transport: str = "ssh") -> None:
    from kdeploy.execute.session import connect
    from kdeploy.transport.pool import close_all
    from kdeploy.verbs.reset import check_hosts, run_reset

    cluster = load(inventory, quiet=as_json)
    names = check_hosts(cluster, hosts)
    confirm(cluster, names, yes)
    emit = _printer(as_json)
    transports, failed = connect(cluster, factory=factory_for(transport), hosts=names)
    try:
        out = run_reset(cluster, transports, names, unreachable=failed, emit=emit)
    finally:
        close_all(transports)
    if as_json:
        emit({"event": "done", "hosts": len(names), "failed": out.failed,
              "nothing_to_reset": out.nothing, "seconds": round(out.seconds, 2)})
    else:
        from kdeploy.cli.output import console
        if out.nothing:
            console.print(f"Nothing to reset on {len(names)} host(s).")
        else:
            console.print(f"Reset {len(names) - len(out.failed)} of {len(names)} host(s) in "
                          f"{out.seconds:.1f} s; the cluster's PKI stays in the state dir "
                          f"(`kdeploy up` deploys it again).")
    if out.failed:
        raise ApplyError(f"reset failed on {len(out.failed)} host(s): {', '.join(out.failed)}",
                         "fix what is named above and run `kdeploy reset` again (it is idempotent)")


def register(app: typer.Typer) -> None:
    def reset(inventory: InventoryOpt, host: HostOpt = None, yes: YesOpt = False,
              as_json: JsonOpt = False, transport: TransportOpt = "ssh") -> None:
        """Tear down what kdeploy made on the hosts: they are bare again for `kdeploy up`."""
        _reset(inventory, host, yes, as_json, transport)

    app.command("reset")(reset)
