"""kdeploy verify: check a live cluster and print a pass/fail table."""
from __future__ import annotations

from typing import Annotated

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load
from kdeploy.cli.plan import TransportOpt, factory_for


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(inventory: InventoryOpt, as_json: JsonOpt = False,
               transport: TransportOpt = "ssh",
               keep_workload: Annotated[bool, typer.Option(
                   "--keep-workload", help="Leave the test workload (namespace kdeploy-verify-…, named "
                   "in the workload check) running after the checks; the next verify deletes it.")] = False) -> None:
        """Check the live cluster: units, etcd, apiserver, nodes, pods, networking, DNS, security.
        The test workload is removed afterwards unless --keep-workload."""
        from kdeploy.cli.up import _verify
        from kdeploy.errors import VerifyError
        from kdeploy.execute import run
        from kdeploy.execute.session import connect
        from kdeploy.transport.pool import UnreachableHosts, close_all

        cluster = load(inventory, quiet=as_json)
        dep = run.prepare(cluster, need_artifacts=False, write_state=False)
        transports, failed = connect(cluster, factory=factory_for(transport))
        if failed:
            close_all(transports)
            raise UnreachableHosts(failed)
        try:
            results = _verify(dep, transports, as_json, keep_workload=keep_workload)
        finally:
            close_all(transports)
        if not all(r.ok for r in results):
            bad = ", ".join(r.name for r in results if not r.ok)
            raise VerifyError(f"{sum(not r.ok for r in results)} check(s) failed: {bad}",
                              "look at the failing rows; `kdeploy up` converges what drifted")
