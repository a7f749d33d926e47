"""kdeploy upgrade: roll a running cluster to the inventory's Kubernetes version."""
from __future__ import annotations

from typing import Annotated

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, confirm_change, load, with_mirror
from kdeploy.cli.plan import ArtifactsOpt, MirrorOpt, TransportOpt, factory_for


def register(app: typer.Typer) -> None:
    def upgrade(
        inventory: InventoryOpt,
        to: Annotated[str, typer.Option("--to", help="The target version; must match the "
                                        "inventory's spec.kubernetes.version.")],
        artifacts: ArtifactsOpt = None,
        batch: Annotated[str, typer.Option(help="Workers per batch: a count (2) or a "
                                           "percentage (25%).")] = "1",
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the rollout; change nothing.")] = False,
        force: Annotated[bool, typer.Option(help="Go on although etcd or a node is unhealthy.")] = False,
        drain_timeout: Annotated[int, typer.Option(help="Seconds a node's drain may take (PodDisruption"
                                                   "Budgets respected) before the rollout stops.",
                                                   min=1)] = 300,
        verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
        as_json: JsonOpt = False,
        arch: Annotated[str, typer.Option(help="Host architecture.")] = "amd64",
        transport: TransportOpt = "ssh",
        mirror: MirrorOpt = None,
    ) -> None:
        """Upgrade a running cluster: etcd and the control plane one host at a time, then the
        nodes in batches (cordon, drain, upgrade, Ready, uncordon). Exit 2 with --dry-run
        when there is something to do."""
        from kdeploy.cli.output import (console, download_progress, progress_printer, show_plan,
                                        show_steps)
        from kdeploy.cli.up import _verify
        from kdeploy.errors import VerifyError
        from kdeploy.execute.session import connect
        from kdeploy.execute.steps import Policy
        from kdeploy.transport.pool import UnreachableHosts, close_all
        from kdeploy.verbs.upgrade import check_target, run_upgrade

        policy = Policy.parse(batch)
        cluster = with_mirror(load(inventory, quiet=as_json), mirror)
        check_target(cluster, to)
        emit = progress_printer(as_json)

        def confirm(p, steps) -> bool:
            return confirm_change(f"Upgrade cluster {cluster.name} to {cluster.version}?",
                                  lambda: _show(p, steps), yes=yes, as_json=as_json)

        def _show(p, steps):
            show_plan(p)
            show_steps(steps)

        transports, failed = connect(cluster, factory=factory_for(transport))
        if failed:
            close_all(transports)
            raise UnreachableHosts(failed)
        try:
            with download_progress(as_json):
                out = run_upgrade(cluster, to=to, transports=transports, artifacts_dir=artifacts,
                                  batch=policy, force=force, dry_run=dry_run, arch=arch, emit=emit,
                                  confirm=confirm, drain_timeout=drain_timeout)
            if dry_run:
                if as_json:
                    import json
                    typer.echo(json.dumps({**out.plan.to_dict(), "steps": out.steps}, indent=2))
                elif out.plan.empty:
                    console.print(f"Nothing to upgrade: every host runs {cluster.version}.")
                else:
                    _show(out.plan, out.steps)
                raise typer.Exit(0 if out.plan.empty else 2)
            if out.plan.empty:
                emit({"event": "no-changes"}) if as_json else console.print(
                    f"Nothing to upgrade: every host runs {cluster.version} as the inventory says.")
                return
            if verify:
                results = _verify(out.deployment, transports, as_json)
                if not all(r.ok for r in results):
                    raise VerifyError("the cluster was upgraded but some checks failed (see the table)",
                                      f"details: kdeploy verify -i {inventory}")
            if not as_json:
                console.print(f"Upgraded cluster {cluster.name} to {cluster.version}; etcd snapshot "
                              f"taken before: {out.snapshot}")
        finally:
            close_all(transports)

    app.command("upgrade")(upgrade)
