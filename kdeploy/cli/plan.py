"""kdeploy plan: what would change on which host (exit 0: nothing, 2: changes)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load, with_mirror

ArtifactsOpt = Annotated[Optional[Path], typer.Option(
    "--artifacts", help="Offline artifact directory (kdeploy artifacts fetch -o DIR).")]
MirrorOpt = Annotated[Optional[str], typer.Option(
    "--mirror", help="Base URL of a mirror of the official download URLs (URL/dl.k8s.io/..., "
    "URL/github.com/...); overrides spec.artifacts.mirror.", show_default=False)]
TransportOpt = Annotated[str, typer.Option(
    "--transport", help="How to reach hosts: ssh (paramiko) or ansible (ansible-runner, slower).")]


def factory_for(transport: str):
    from kdeploy.errors import KdeployError
    if transport == "ssh":
        return None
    if transport == "ansible":
        from kdeploy.transport.ansible import ansible_factory
        return ansible_factory
    raise KdeployError(f"unknown transport '{transport}'", "use --transport ssh or --transport ansible")


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(inventory: InventoryOpt, as_json: JsonOpt = False,
             offline: Annotated[bool, typer.Option(
                 "--offline", help="Open no connection: plan against bare hosts.")] = False,
             artifacts: ArtifactsOpt = None,
             diffs: Annotated[bool, typer.Option("--diff/--no-diff", help="Show file diffs.")] = True,
             transport: TransportOpt = "ssh",
             mirror: MirrorOpt = None,
             ) -> None:
        """Show, per host and phase, what `kdeploy up` would create, change or restart."""
        from kdeploy.cli.output import console, err_console, show_plan
        from kdeploy.execute.run import gather, prepare
        from kdeploy.execute.session import DocumentationAddress, connect
        from kdeploy.plan.planner import plan as make_plan
        from kdeploy.transport.pool import UnreachableHosts, close_all

        cluster = with_mirror(load(inventory), mirror)
        dep = prepare(cluster, artifacts_dir=artifacts, need_artifacts=False, write_state=False)
        observed: dict = {}
        if not offline:
            transports, failed = connect(cluster, factory=factory_for(transport))
            documentation_only = all(isinstance(e, DocumentationAddress) for e in failed.values())
            if failed and (transports or not documentation_only):
                close_all(transports)
                raise UnreachableHosts(failed)
            if failed:
                err_console.print("[yellow]every host has a documentation address: planning "
                                  "against bare hosts (everything to create)[/yellow]")
            else:
                try:
                    _, observed = gather(dep, transports)
                finally:
                    close_all(transports)
        from kdeploy.verbs.membership import notes
        p = make_plan(dep.desired, observed)
        if as_json:
            typer.echo(p.to_json())
        else:
            if not dep.artifacts:
                console.print("[dim](binaries not shown: pass --artifacts DIR to include them)[/dim]")
            show_plan(p, diffs=diffs, notes=notes(dep.etcd))
        raise typer.Exit(0 if p.empty else 2)
