"""kdeploy inventory validate|show"""
from __future__ import annotations

import json

import typer

from kdeploy.cli.common import InventoryOpt, JsonOpt, load
from kdeploy.model import load_inventory

app = typer.Typer(help="Check and show inventories.", no_args_is_help=True)


@app.command()
def validate(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Check an inventory without connecting anywhere; exit non-zero on the first error list."""
    if as_json:
        cluster, warnings = load_inventory(inventory)
        typer.echo(json.dumps({"valid": True, "hosts": len(cluster.hosts),
                               "warnings": [str(w) for w in warnings]}))
        return
    cluster = load(inventory)
    roles = {r: len(cluster.with_role(r)) for r in ("control-plane", "etcd", "worker")}
    typer.echo(f"{inventory}: valid — cluster {cluster.name}, Kubernetes {cluster.version}, "
               f"{len(cluster.hosts)} hosts ({roles['control-plane']} control-plane, "
               f"{roles['etcd']} etcd, {roles['worker']} worker)")


@app.command()
def show(inventory: InventoryOpt) -> None:
    """Print the effective inventory (defaults filled in) as YAML."""
    import yaml
    cluster = load(inventory)
    typer.echo(yaml.safe_dump(cluster.model_dump(mode="json", by_alias=True), sort_keys=False))
