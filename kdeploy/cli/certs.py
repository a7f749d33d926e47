"""kdeploy certs [generate] | check | renew: the cluster PKI kept beside the inventory, as the
hosts hold it, and its renewal (orchestration in kdeploy.verbs.certs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, confirm_change, load
from kdeploy.cli.plan import ArtifactsOpt, TransportOpt, factory_for

app = typer.Typer(
    help="Issue the cluster's certificates and keys (reusing what is valid), check their expiry "
         "on the hosts, renew them. `kdeploy certs -i INV` issues; `kdeploy certs check -i INV` "
         "reports; `kdeploy certs renew -i INV` reissues and rolls out.",
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
def check(
    inventory: InventoryOpt, state_dir: StateDirOpt = None, as_json: JsonOpt = False,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Open no connection: report the deployer's copies only (state dir).")] = False,
    transport: TransportOpt = "ssh",
) -> None:
    """The expiry of every certificate as placed on every host (read from the hosts, one round
    trip each; never a key), flagged when missing, different from the deployer's copy, or
    expiring within the renewal window: exit 2 then. --offline: the deployer's copies only
    (exit 1 when any is missing, stale or expiring). Writes nothing."""
    if offline:
        _check_offline(inventory, state_dir, as_json)
    else:
        _check_hosts(inventory, state_dir, as_json, transport)


def _check_hosts(inventory: Path, state_dir: Path | None, as_json: bool, transport: str) -> None:
    from kdeploy.execute.session import connect
    from kdeploy.model import defaults
    from kdeploy.pki import load_pki
    from kdeploy.transport.pool import close_all
    from kdeploy.verbs.certs import CertificatesFlagged, check_hosts
    cluster = load(inventory, quiet=as_json)
    pki = load_pki(cluster, state_dir)
    transports, failed = connect(cluster, factory=factory_for(transport))
    try:
        rows = check_hosts(cluster, transports, pki, failed=failed)
    finally:
        close_all(transports)
    flagged = [r for r in rows if r.flagged]
    if as_json:
        typer.echo(json.dumps({"stateDir": str(pki.state_dir), "renewBeforeDays": defaults.RENEW_BEFORE_DAYS,
                               "ok": not flagged, "certificates": [r.to_dict() for r in rows]}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        colors = {"ok": "green", "expiring": "yellow"}
        table = Table(title=f"certificates on the hosts of {cluster.name}")
        for col in ("HOST", "PATH", "NAME", "SUBJECT CN", "EXPIRES (UTC)", "DAYS LEFT", "STATUS"):
            table.add_column(col, justify="right" if col == "DAYS LEFT" else "left",
                             no_wrap=col in ("HOST", "STATUS"), overflow="fold")
        for r in rows:
            status = f"[{colors.get(r.status, 'red')}]{r.status}[/]"
            if r.detail and r.status != "ok":
                status += f" ({r.detail})"
            table.add_row(r.host, r.path, r.name + (" (CA)" if r.is_ca else ""), r.cn or "-",
                          r.not_after.strftime("%Y-%m-%d %H:%M") if r.not_after else "-",
                          str(r.days_left) if r.days_left is not None else "-", status)
        Console().print(table)
        for w in pki.warnings:
            typer.secho(f"warning: {w}", fg="yellow", err=True)
        if not flagged:
            typer.echo(f"all {len(rows)} certificates on {len(cluster.hosts)} hosts match the "
                       f"deployer's copies and are valid for more than {defaults.RENEW_BEFORE_DAYS} days")
    if flagged:
        names = [f"{r.host}:{r.path} ({r.status})" for r in flagged]
        raise CertificatesFlagged(
            f"{len(flagged)} of {len(rows)} certificates on the hosts are flagged: "
            + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
            f"renew and roll out with `kdeploy certs renew -i {inventory}` (unreachable hosts: "
            "check the connection)")


def _check_offline(inventory: Path, state_dir: Path | None, as_json: bool) -> None:
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


@app.command()
def renew(
    inventory: InventoryOpt,
    renew_all: Annotated[bool, typer.Option(
        "--all", help="Reissue every leaf certificate, not only those within the renewal window "
                      "(never the CAs, the service-account key or the encryption key).")] = False,
    artifacts: ArtifactsOpt = None,
    batch: Annotated[str, typer.Option(help="Workers per batch: a count (2) or a percentage (25%).")] = "1",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be reissued and "
                                          "rolled out; change nothing (exit 2: work to do).")] = False,
    force: Annotated[bool, typer.Option(help="Go on although etcd or a node is unhealthy.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    as_json: JsonOpt = False,
    arch: Annotated[str, typer.Option(help="Host architecture.")] = "amd64",
    transport: TransportOpt = "ssh",
) -> None:
    """Reissue leaf certificates expiring within the renewal window (--all: every leaf) and roll
    them out: etcd members one at a time, control-plane hosts one at a time, then the nodes in
    batches; only the units reading a renewed file restart. Nothing to renew: a no-op."""
    from kdeploy.cli.output import console, progress_printer, show_plan, show_steps
    from kdeploy.cli.up import _verify
    from kdeploy.errors import VerifyError
    from kdeploy.execute.session import connect
    from kdeploy.execute.steps import Policy
    from kdeploy.transport.pool import UnreachableHosts, close_all
    from kdeploy.verbs.certs import run_renew

    policy = Policy.parse(batch)
    cluster = load(inventory, quiet=as_json)
    emit = progress_printer(as_json)

    def show(o) -> None:
        if o.renewed:
            console.print(f"Reissue {len(o.renewed)} certificate(s):", markup=False, highlight=False)
            for n, why in o.renewed.items():
                console.print(f"  {n}  ({why})", markup=False, highlight=False)
        show_plan(o.plan, diffs=False)
        show_steps(o.steps)

    def confirm(o) -> bool:
        return confirm_change(f"Renew certificates of cluster {cluster.name}?", lambda: show(o),
                              yes=yes, as_json=as_json)

    transports, failed = connect(cluster, factory=factory_for(transport))
    if failed:
        close_all(transports)
        raise UnreachableHosts(failed)
    try:
        out = run_renew(cluster, transports=transports, renew_all=renew_all, batch=policy,
                        artifacts_dir=artifacts, force=force, dry_run=dry_run, arch=arch, emit=emit,
                        confirm=confirm)
        nothing = out.plan.empty and not out.renewed
        if dry_run:
            if as_json:
                typer.echo(json.dumps({**out.plan.to_dict(), "renewed": out.renewed,
                                       "steps": out.steps}, indent=2))
            elif nothing:
                console.print("Nothing to renew: every certificate on every host is current.")
            else:
                show(out)
            raise typer.Exit(0 if nothing else 2)
        if nothing:
            emit({"event": "no-changes"}) if as_json else console.print(
                "Nothing to renew: no certificate expires within the renewal window and every "
                "host has the deployer's copies.")
            return
        if as_json:
            emit({"event": "renewed", "certificates": out.renewed,
                  "timings": {k: round(v, 2) for k, v in out.timings.items()}})
        if verify and out.deployment is not None:
            results = _verify(out.deployment, transports, as_json)
            if not all(r.ok for r in results):
                raise VerifyError("the certificates were renewed but some checks failed (see the table)",
                                  f"details: kdeploy verify -i {inventory}")
        if not as_json:
            console.print(f"Renewed {len(out.renewed)} certificate(s) of cluster {cluster.name} and "
                          f"rolled them out in {out.timings.get('rollout', 0.0):.1f} s.")
    finally:
        close_all(transports)


@app.command("rotate-ca")
def rotate_ca(
    inventory: InventoryOpt,
    ca: Annotated[Optional[list[str]], typer.Option(
        "--ca", help="Rotate only this CA: cluster, etcd or front-proxy (repeatable; default: all "
                     "three in one rotation).", show_default=False)] = None,
    artifacts: Annotated[Optional[Path], typer.Option(
        "--artifacts", help="Artifact directory (optional: the rotation changes no binary).",
        show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    as_json: JsonOpt = False,
    arch: Annotated[str, typer.Option(help="Host architecture.")] = "amd64",
) -> None:
    """Replace the cluster's CAs while it serves: trust old+new, reissue every certificate with
    the new CA, then trust only the new one; each stage rolled out one host at a time. Run it
    again after a failure: it continues from the stage it reached (docs/lifecycle.md)."""
    from kdeploy.cli.output import console, progress_printer
    from kdeploy.cli.common import confirm_change
    from kdeploy.cli.up import _verify
    from kdeploy.errors import VerifyError
    from kdeploy.execute.session import connect
    from kdeploy.transport.pool import UnreachableHosts, close_all
    from kdeploy.verbs.rotate import parse_cas, run_rotate_ca

    cas = parse_cas(ca) if ca else None
    cluster = load(inventory, quiet=as_json)
    progress = progress_printer(as_json)

    def emit(e: dict) -> None:
        kind = e.get("event")
        if as_json or kind not in ("rotate-stage", "rotate-stage-done", "rotate-ca"):
            progress(e)
        elif kind == "rotate-stage":
            console.print(f"== stage {e['stage']}: {e['changes']} change(s)", style="bold magenta")
        elif kind == "rotate-stage-done":
            console.print(f"== stage {e['stage']} done in {e['seconds']} s", style="magenta")
        else:
            console.print(f"  {e['what']}", markup=False, highlight=False)

    def confirm(names, resumed) -> bool:
        what = ", ".join(names)
        q = (f"Continue the rotation of {what} of cluster {cluster.name} (stage {resumed})?" if resumed
             else f"Rotate {what} of cluster {cluster.name} (three rolling restarts of every host)?")
        return confirm_change(q, lambda: console.print(q), yes=yes, as_json=as_json)

    transports, failed = connect(cluster)
    if failed:
        close_all(transports)
        raise UnreachableHosts(failed)
    try:
        out = run_rotate_ca(cluster, transports=transports, cas=cas, artifacts_dir=artifacts,
                            arch=arch, emit=emit, confirm=confirm)
        if verify:
            results = _verify(out.deployment, transports, as_json)
            if not all(r.ok for r in results):
                raise VerifyError("the CAs were rotated but some checks failed (see the table)",
                                  f"details: kdeploy verify -i {inventory}")
        secs = out.timings.get("total", 0.0)
        if as_json:
            typer.echo(json.dumps({"event": "rotated", "cas": list(out.cas), "stages": out.stages,
                                   "resumedAt": out.resumed_at, "seconds": round(secs, 1),
                                   "archived": [str(p) for p in out.archived]}))
        else:
            stages = ", ".join(f"{s['stage']} {s['seconds']} s" for s in out.stages)
            console.print(f"Rotated {', '.join(out.cas)} of cluster {cluster.name} in {secs:.0f} s "
                          f"({stages}); old CA files kept: "
                          + (", ".join(str(p) for p in out.archived if p.suffix == ".crt") or "-"),
                          markup=False, highlight=False)
    finally:
        close_all(transports)


@app.command("rotate-sa-key")
def rotate_sa_key(
    inventory: InventoryOpt,
    drop_after: Annotated[str, typer.Option(
        "--drop-after", help="How long the old public key stays trusted after the new key signs "
                             "(kubelet refreshes every pod's token within 24 h): 24h, 90m, 0.")] = "24h",
    artifacts: Annotated[Optional[Path], typer.Option(
        "--artifacts", help="Artifact directory (optional: the rotation changes no binary).",
        show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    as_json: JsonOpt = False,
    arch: Annotated[str, typer.Option(help="Host architecture.")] = "amd64",
) -> None:
    """Replace the service-account signing key: the apiservers trust old+new public keys, then
    the new key signs, then (after --drop-after; run the command again) only the new public key
    is trusted. Resumable like rotate-ca."""
    from kdeploy.cli.output import console, progress_printer
    from kdeploy.cli.common import confirm_change
    from kdeploy.cli.up import _verify
    from kdeploy.errors import VerifyError
    from kdeploy.execute.session import connect
    from kdeploy.transport.pool import UnreachableHosts, close_all
    from kdeploy.verbs.rotate import parse_duration, run_rotate_sa_key

    wait = parse_duration(drop_after)
    cluster = load(inventory, quiet=as_json)
    progress = progress_printer(as_json)

    def emit(e: dict) -> None:
        if as_json or e.get("event") not in ("rotate-stage", "rotate-stage-done", "rotate-ca"):
            progress(e)
        elif e["event"] == "rotate-stage":
            console.print(f"== stage {e['stage']}: {e['changes']} change(s)", style="bold magenta")
        elif e["event"] == "rotate-stage-done":
            console.print(f"== stage {e['stage']} done in {e['seconds']} s", style="magenta")
        else:
            console.print(f"  {e['what']}", markup=False, highlight=False)

    def confirm(names, resumed) -> bool:
        q = (f"Continue the service-account key rotation of cluster {cluster.name} (stage {resumed})?"
             if resumed else f"Rotate the service-account key of cluster {cluster.name} "
                             "(rolling restarts of the control plane)?")
        return confirm_change(q, lambda: console.print(q), yes=yes, as_json=as_json)

    transports, failed = connect(cluster)
    if failed:
        close_all(transports)
        raise UnreachableHosts(failed)
    try:
        out = run_rotate_sa_key(cluster, transports=transports, drop_after=wait, artifacts_dir=artifacts,
                                arch=arch, emit=emit, confirm=confirm)
        if verify and out.stages:
            results = _verify(out.deployment, transports, as_json)
            if not all(r.ok for r in results):
                raise VerifyError("the key was rotated but some checks failed (see the table)",
                                  f"details: kdeploy verify -i {inventory}")
        secs = out.timings.get("total", 0.0)
        until = out.waiting_until.isoformat() if out.waiting_until else None
        if as_json:
            typer.echo(json.dumps({"event": "rotated-sa-key", "finished": out.finished,
                                   "stages": out.stages, "resumedAt": out.resumed_at,
                                   "dropNotBefore": until, "seconds": round(secs, 1),
                                   "archived": [str(p) for p in out.archived]}))
        elif out.finished:
            console.print(f"Rotated the service-account key of cluster {cluster.name} in {secs:.0f} s; "
                          "old key kept: " + (", ".join(str(p) for p in out.archived) or "-"),
                          markup=False, highlight=False)
        else:
            console.print(f"The new service-account key signs; the old public key stays trusted "
                          f"until {until} (UTC). Run `kdeploy certs rotate-sa-key -i {inventory}` "
                          "again after that to drop it.", markup=False, highlight=False)
    finally:
        close_all(transports)
