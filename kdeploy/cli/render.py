"""kdeploy render -i INV -o DIR: write every file kdeploy would place on every host.
kdeploy render -i INV --ansible DIR [--artifacts A]: an Ansible project that deploys the
cluster with plain ansible-playbook (kdeploy.render.ansible_project).

DIR/<host>/<absolute path on the host>, e.g. out/cp1/etc/systemd/system/kube-apiserver.service.
Rendered files, the host's PKI material (issued or reused in the state dir beside the
inventory, as `kdeploy certs` does) and, on the first control-plane host, the addon manifests.
Blocks kdeploy owns inside files it does not own (/etc/hosts) are written as the marked block
alone. Secret files are written 0600. Never opens a network connection.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, load
from kdeploy.cli.plan import ArtifactsOpt
from kdeploy.errors import KdeployError

OutOpt = Annotated[Optional[Path], typer.Option("-o", "--output", help="Directory to write DIR/<host>/<path> into.",
                                      show_default=False)]
AnsibleOpt = Annotated[Optional[Path], typer.Option(
    "--ansible", help="Write an Ansible project into DIR instead: ansible-playbook -i DIR/inventory "
    "DIR/cluster.yml deploys the cluster without kdeploy.", show_default=False)]
StateDirOpt = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="PKI state directory (default: <inventory dir>/.kdeploy/<cluster name>).",
    show_default=False)]
NoPkiOpt = Annotated[bool, typer.Option(
    "--no-pki", help="Leave out certificates, keys and kubeconfigs (and do not touch the state dir).")]


def _write(root: Path, host: str, path: str, content: bytes, mode: int) -> None:
    from kdeploy.pki.crypto import write_atomic
    write_atomic(root / host / path.lstrip("/"), content, mode)


def render_command(inventory: InventoryOpt, output: OutOpt = None, state_dir: StateDirOpt = None,
                   no_pki: NoPkiOpt = False, ansible: AnsibleOpt = None,
                   artifacts: ArtifactsOpt = None) -> None:
    """Render every host's files into DIR/<host>/<path> (PKI included unless --no-pki), or an
    Ansible project (--ansible DIR)."""
    if (output is None) == (ansible is None):
        raise KdeployError("pass either -o DIR (the rendered files) or --ansible DIR (an Ansible "
                           "project)", "e.g. kdeploy render -i cluster.yaml --ansible ./ansible")
    if ansible is not None:
        if no_pki:
            raise KdeployError("--no-pki cannot be used with --ansible: the project deploys the "
                               "cluster, certificates included", "leave out --no-pki")
        if state_dir is not None:
            raise KdeployError("--state-dir cannot be used with --ansible",
                               "the project uses the inventory's state dir, as kdeploy up does")
        return _render_ansible(inventory, ansible, artifacts)
    if artifacts is not None:
        raise KdeployError("--artifacts is for --ansible (the project holds the binaries)",
                           "leave it out with -o")
    from kdeploy.execute.run import images_in_use, pin_pod_cidrs, state_dir_for
    from kdeploy.model.validate import resolve_path
    from kdeploy.pki import ensure_pki
    from kdeploy.plan.desired import desired_state
    from kdeploy.plan.planner import render_block
    from kdeploy.render.images import images_of_dir

    cluster = load(inventory)
    pki = None
    state = state_dir or state_dir_for(cluster)
    if not no_pki:  # exactly what `kdeploy up` would place: same pod CIDRs, same PKI
        cluster = pin_pod_cidrs(cluster, state)
        pki = ensure_pki(cluster, state)
        for w in getattr(pki, "warnings", ()):
            typer.secho(f"warning: {w}", fg="yellow", err=True)
    try:
        output.mkdir(parents=True, exist_ok=True)
        if pki is not None:
            output.chmod(0o700)  # holds private keys
    except OSError as e:
        raise KdeployError(f"cannot create output directory {output}: {e.strerror}",
                           "pass a writable directory with -o") from None

    # the image refs of the inventory's artifact directory (its manifest only: no hashing, no
    # network), else those recorded when the hosts got them (kdeploy up), else upstream's
    images = (images_of_dir(resolve_path(cluster.spec.artifacts.dir, cluster), cluster.version)
              if cluster.spec.artifacts.dir else images_in_use(cluster, state, None))
    rows: list[tuple[str, int, int, int]] = []
    try:
        for name, res in desired_state(cluster, pki=pki, images=images).items():
            for f in res.files:
                _write(output, name, f.path, f.content, 0o600 if f.secret else (f.mode & 0o777))
            for b in res.blocks:  # the block as `kdeploy up` writes it into the host's file
                _write(output, name, b.path, render_block(b).encode(), 0o644)
            n_secret = sum(f.secret for f in res.files)
            n_addons = sum(f.phase == "addons" for f in res.files)
            rows.append((name, len(res.files) + len(res.blocks) - n_secret - n_addons, n_secret,
                         n_addons))
    except OSError as e:
        raise KdeployError(f"cannot write into {output}: {e.strerror} ({e.filename})",
                           "pass a writable directory with -o") from None

    typer.echo(f"rendered {cluster.name} into {output}"
               + ("" if pki is not None else " (without PKI files)"))
    width = max(len(r[0]) for r in rows)
    typer.echo(f"  {'HOST':<{width}}  FILES  SECRETS  ADDONS  TOTAL")
    for name, n, p, a in rows:
        typer.echo(f"  {name:<{width}}  {n:>5}  {p:>7}  {a:>6}  {n + p + a:>5}")
    total = sum(r[1] + r[2] + r[3] for r in rows)
    typer.echo(f"  {len(rows)} hosts, {total} files")


def _render_ansible(inventory: Path, out: Path, artifacts: Optional[Path]) -> None:
    from kdeploy.components import gates
    from kdeploy.execute.run import prepare
    from kdeploy.render.ansible_project import check_target, write_project

    cluster = load(inventory)
    if artifacts is None and not cluster.spec.artifacts.dir:
        raise KdeployError("the Ansible project needs the binaries: no artifact directory given",
                           "pass --artifacts DIR (kdeploy artifacts fetch -o DIR) or set "
                           f"spec.artifacts.dir in {inventory}")
    check_target(out)
    # the one rendering path: the state dir's PKI and pod CIDRs, the artifact set, as `up`
    dep = prepare(cluster, artifacts_dir=artifacts, need_artifacts=True)
    for w in getattr(dep.pki, "warnings", ()):
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    try:
        counts = write_project(out, dep.cluster, dep.desired, gates=gates(dep.cluster))
    except OSError as e:
        raise KdeployError(f"cannot write into {out}: {e.strerror} ({e.filename})",
                           "pass a writable directory to --ansible") from None
    # `kdeploy verify` (and plan) of the cluster the project deploys name the artifact set's
    # image refs (as after `kdeploy up`), not upstream's: the project imports these images
    from kdeploy.execute.run import record_images
    record_images(dep)
    typer.echo(f"wrote the Ansible project of {cluster.name} into {out} "
               f"({len(counts)} hosts, {sum(counts.values())} files and binaries)")
    typer.echo(f"  deploy:  ansible-playbook -i {out}/inventory {out}/cluster.yml")


def register(app: typer.Typer) -> None:
    app.command("render")(render_command)
