"""kdeploy cis: the CIS Kubernetes benchmark (kube-bench) on every host, one table."""
from __future__ import annotations

import json
import time

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load
from kdeploy.cli.plan import ArtifactsOpt, TransportOpt, factory_for


def register(app: typer.Typer) -> None:
    @app.command()
    def cis(inventory: InventoryOpt, artifacts: ArtifactsOpt = None, as_json: JsonOpt = False,
            transport: TransportOpt = "ssh") -> None:
        """Run the CIS Kubernetes benchmark (kube-bench from the artifact set) on every host:
        master, controlplane and policies targets on control-plane hosts, etcd on etcd members,
        node on workers. Prints PASS/FAIL/WARN/INFO per host and target and every FAIL and
        WARN; exits non-zero when any check FAILs. Nothing stays on the hosts."""
        from kdeploy import cis as bench
        from kdeploy.errors import ArtifactError, VerifyError
        from kdeploy.execute.session import connect
        from kdeploy.model.validate import resolve_path
        from kdeploy.transport.pool import UnreachableHosts, close_all

        cluster = load(inventory, quiet=as_json)
        root = artifacts
        if root is None and cluster.spec.artifacts.dir:
            root = resolve_path(cluster.spec.artifacts.dir, cluster)
        if root is None:
            raise ArtifactError("kdeploy cis needs an artifact set holding kube-bench",
                                "pass --artifacts DIR (or set spec.artifacts.dir) naming a set "
                                "built with `kdeploy artifacts build` (component kube-bench)")
        files = bench.kube_bench_from(root)
        t0 = time.monotonic()
        transports, failed = connect(cluster, factory=factory_for(transport),
                                     hosts=list(bench.targets_for(cluster)))
        if failed:
            close_all(transports)
            raise UnreachableHosts(failed)
        try:
            results = bench.run_all(cluster, transports, files)
        finally:
            close_all(transports)
        n_fail = bench.fails(results)
        if as_json:
            typer.echo(json.dumps({**bench.as_json(results),
                                   "seconds": round(time.monotonic() - t0, 1)}, indent=2))
        else:
            typer.echo(bench.format_table(results))
            typer.echo(f"\n{bench.KUBE_BENCH_BENCHMARK}: {n_fail} FAIL on {len(transports)} hosts "
                       f"in {time.monotonic() - t0:.0f}s")
        if n_fail:
            raise VerifyError(f"{n_fail} CIS check(s) failed",
                              "see the FAIL rows (id and text; remediations: --json)")
