"""Shared CLI pieces: option aliases, inventory loading with warnings printed once."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdeploy.model import Cluster, load_inventory

InventoryOpt = Annotated[
    Path, typer.Option("-i", "--inventory", help="Inventory file (kdeploy YAML or Ansible INI/YAML).",
                       show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def with_mirror(cluster: Cluster, mirror: str | None) -> Cluster:
    """The cluster with --mirror in place of spec.artifacts.mirror (validated like the field)."""
    if not mirror:
        return cluster
    from pydantic import ValidationError
    from kdeploy.errors import KdeployError
    from kdeploy.model.cluster import ArtifactSettings
    try:
        arts = ArtifactSettings.model_validate({**cluster.spec.artifacts.model_dump(by_alias=True),
                                                "mirror": mirror})
    except ValidationError as e:
        raise KdeployError(f"--mirror: {e.errors()[0]['msg'].removeprefix('Value error, ')}",
                           "e.g. --mirror http://files.example.internal/k8s") from None
    return cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"artifacts": arts})})


def load(inventory: Path, *, quiet: bool = False) -> Cluster:
    cluster, warnings = load_inventory(inventory)
    if not quiet:
        for w in warnings:
            where = f"{inventory}:{w.line}" if w.line else str(inventory)
            typer.secho(f"warning: {where}: {w}", fg="yellow", err=True)
    return cluster


def confirm_change(question: str, show, *, yes: bool, as_json: bool) -> bool:
    """--yes (or --json) confirms; a terminal is asked after `show()`; otherwise refused."""
    from kdeploy.cli.output import console
    from kdeploy.errors import KdeployError
    if yes or as_json:
        return True
    if not console.is_terminal:
        raise KdeployError(f"{question.rstrip('?')}: pass --yes to confirm (no terminal to ask on)")
    show()
    return typer.confirm(question)
