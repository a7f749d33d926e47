"""kdeploy render -i INV -o DIR: write every file kdeploy would place on every host.

DIR/<host>/<absolute path on the host>, e.g. out/cp1/etc/systemd/system/kube-apiserver.service.
Rendered files, the host's PKI material (issued or reused in the state dir beside the
inventory, as `kdeploy certs` does) and, on the first control-plane host, the addon manifests.
Blocks kdeploy owns inside files it does not own (/etc/hosts) are written as the marked block
alone. Secret files are written 0600. Never opens a network connection.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeploy.cli.common import InventoryOpt, load
from kdeploy.errors import KdeployError

OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Directory to write DIR/<host>/<path> into.",
                                      show_default=False)]
StateDirOpt = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="PKI state directory (default: <inventory dir>/.kdeploy/<cluster name>).",
    show_default=False)]
NoPkiOpt = Annotated[bool, typer.Option(
    "--no-pki", help="Leave out certificates, keys and kubeconfigs (and do not touch the state dir).")]


def _write(root: Path, host: str, path: str, content: bytes, mode: int) -> None:
    dest = root / host / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


def render_command(inventory: InventoryOpt, output: OutOpt, state_dir: StateDirOpt = None,
                   no_pki: NoPkiOpt = False) -> None:
    """Render every host's files into DIR/<host>/<path> (PKI included unless --no-pki)."""
    from kdeploy.render import addons_host, render_addons, render_host

    cluster = load(inventory)
    pki = None
    if not no_pki:
        try:
            from kdeploy.pki import ensure_pki
        except ImportError:  # pragma: no cover - only while the PKI package is incomplete
            typer.secho("warning: kdeploy.pki is not available: rendering without PKI files",
                        fg="yellow", err=True)
        else:
            pki = ensure_pki(cluster, state_dir)
            for w in getattr(pki, "warnings", ()):
                typer.secho(f"warning: {w}", fg="yellow", err=True)
    try:
        output.mkdir(parents=True, exist_ok=True)
        if pki is not None:
            output.chmod(0o700)  # holds private keys
    except OSError as e:
        raise KdeployError(f"cannot create output directory {output}: {e.strerror}",
                           "pass a writable directory with -o") from None

    first_cp = addons_host(cluster)
    addons = render_addons(cluster)
    rows: list[tuple[str, int, int, int]] = []
    try:
        for host in cluster.hosts:
            res = render_host(cluster, host)
            files = list(res.files)
            n_pki = 0
            if pki is not None:
                pki_files = pki.files_for(host)
                n_pki = len(pki_files)
                files += pki_files
            n_addons = 0
            if host.name == first_cp:
                files += addons
                n_addons = len(addons)
            for f in files:
                _write(output, host.name, f.path, f.content, 0o600 if f.secret else (f.mode & 0o777))
            for b in res.blocks:
                text = f"# BEGIN {b.marker}\n{b.content}# END {b.marker}\n"
                _write(output, host.name, b.path, text.encode(), 0o644)
            rows.append((host.name, len(res.files) + len(res.blocks), n_pki, n_addons))
    except OSError as e:
        raise KdeployError(f"cannot write into {output}: {e.strerror} ({e.filename})",
                           "pass a writable directory with -o") from None

    typer.echo(f"rendered {cluster.name} into {output}"
               + ("" if pki is not None else " (without PKI files)"))
    width = max(len(r[0]) for r in rows)
    typer.echo(f"  {'HOST':<{width}}  FILES  PKI  ADDONS  TOTAL")
    for name, n, p, a in rows:
        typer.echo(f"  {name:<{width}}  {n:>5}  {p:>3}  {a:>6}  {n + p + a:>5}")
    total = sum(r[1] + r[2] + r[3] for r in rows)
    typer.echo(f"  {len(rows)} hosts, {total} files")


def register(app: typer.Typer) -> None:
    app.command("render")(render_command)
