"""kdeploy certs [generate] | check: the cluster PKI kept beside the inventory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load

app = typer.Typer(
    help="Issue the cluster's certificates and keys (reusing what is valid) or check their expiry. "
         "`kdeploy certs -i INV` issues; `kdeploy certs check -i INV` reports.",
    invoke_without_command=True,
)

StateDirOpt = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="State directory (default: <inventory dir>/.kdeploy/<cluster name>).",
    show_default=False)]


def _generate(inventory: Path, state_dir: Path | None) -> None:
    from kdeploy.pki import ensure_pki
    cluster = load(inventory)
    pki = ensure_pki(cluster, state_dir)
    for w in pki.warnings:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    if not pki.issued:
        typer.echo(f"all certificates up to date ({pki.state_dir})")
        return
    typer.echo(f"issued {len(pki.issued)} in {pki.state_dir}:")
    for name in pki.issued:
        typer.echo(f"  {name}  ({pki.reasons[name]})")


@app.callback()
def _certs(
    ctx: typer.Context,
    inventory: Annotated[Optional[Path], typer.Option(
        "-i", "--inventory", help="Inventory file (kdeploy YAML or Ansible INI/YAML).",
        show_default=False)] = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Issue what is missing, changed or expiring (with -i and no sub-command)."""
    if ctx.invoked_subcommand is not None:
        return
    if inventory is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _generate(inventory, state_dir)


@app.command()
def generate(inventory: InventoryOpt, state_dir: StateDirOpt = None) -> None:
    """Issue what is missing, changed or expiring; reuse everything else."""
    _generate(inventory, state_dir)


@app.command()
def check(inventory: InventoryOpt, state_dir: StateDirOpt = None, as_json: JsonOpt = False) -> None:
    """List every certificate with its expiry; exit 1 if any is missing, stale or expires
    within the renewal window. Writes nothing."""
    from kdeploy.model import defaults
    from kdeploy.pki import PKIError, load_pki
    cluster = load(inventory, quiet=as_json)
    pki = load_pki(cluster, state_dir)
    certs = pki.certificates()
    bad = [c for c in certs if c.needs_action]
    if as_json:
        typer.echo(json.dumps({"stateDir": str(pki.state_dir), "renewBeforeDays": defaults.RENEW_BEFORE_DAYS,
                               "ok": not bad, "certificates": [c.to_dict() for c in certs]}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        colors = {"ok": "green", "expiring": "yellow"}
        table = Table(title=f"certificates of {cluster.name} ({pki.state_dir})")
        for col in ("NAME", "SUBJECT CN", "ISSUER", "EXPIRES (UTC)", "DAYS LEFT", "STATUS"):
            table.add_column(col, justify="right" if col == "DAYS LEFT" else "left",
                             no_wrap=col in ("NAME", "STATUS"))
        for c in certs:
            table.add_row(c.name + (" (CA)" if c.is_ca else ""), c.cn or "-", c.issuer or "-",
                          c.not_after.strftime("%Y-%m-%d %H:%M") if c.not_after else "-",
                          str(c.days_left) if c.days_left is not None else "-",
                          f"[{colors.get(c.status, 'red')}]{c.status}[/]")
        console = Console()
        console.print(table)
        for w in pki.warnings:
            typer.secho(f"warning: {w}", fg="yellow", err=True)
        if not bad:
            typer.echo(f"all {len(certs)} certificates valid for more than "
                       f"{defaults.RENEW_BEFORE_DAYS} days")
    if bad:
        # an error, not typer.Exit: kdeploy's main() runs click with standalone_mode=False,
        # where a typer.Exit code is returned and lost
        raise PKIError(f"{len(bad)} of {len(certs)} certificates are missing, stale or expire within "
                       f"{defaults.RENEW_BEFORE_DAYS} days: " + ", ".join(c.name for c in bad[:5])
                       + (" ..." if len(bad) > 5 else ""),
                       f"run `kdeploy certs -i {inventory}` and deploy the result")
