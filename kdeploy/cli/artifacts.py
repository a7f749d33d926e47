"""`kdeploy artifacts`: fetch or build, verify, list the pinned binaries and images; refresh
checksums."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kdeploy.errors import ArtifactError

app = typer.Typer(
    help="Binaries and images a cluster needs: fetch (official releases, pinned sha256) or "
         "build (upstream Go modules), verify an offline directory, list the catalog, refresh "
         "the checksum table.",
    no_args_is_help=True,
)

VersionOpt = Annotated[str | None, typer.Option(
    "--k8s-version", help="Kubernetes version (default: the inventory's, else the newest supported).",
    show_default=False)]
ArchOpt = Annotated[str, typer.Option("--arch", help="Host architecture: amd64 or arm64.")]
InvOpt = Annotated[Path | None, typer.Option(
    "-i", "--inventory", help="Take the Kubernetes version (and mirror) from this inventory.",
    show_default=False)]


def _version_from(inventory: Path | None, version: str | None) -> tuple[str, str | None, Path | None]:
    """(kubernetes version, mirror from the inventory, the cluster's state dir)."""
    from kdeploy.artifacts import DEFAULT_KUBERNETES_VERSION, check_kubernetes_version
    mirror = state = None
    if inventory is not None:
        from kdeploy.cli.common import load
        from kdeploy.execute.run import state_dir_for
        cluster = load(inventory)
        if version is None:
            version = cluster.spec.kubernetes.version
        mirror = cluster.spec.artifacts.mirror
        state = state_dir_for(cluster)
    version = (version or DEFAULT_KUBERNETES_VERSION).lstrip("v")
    check_kubernetes_version(version)
    return version, mirror, state


@app.command()
def fetch(
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to fill.")],
    inventory: InvOpt = None,
    k8s_version: VersionOpt = None,
    arch: ArchOpt = "amd64",
    mirror: Annotated[str | None, typer.Option(
        "--mirror", help="Base URL of a mirror of the official download URLs (default: the "
        "inventory's spec.artifacts.mirror, else the official releases).", show_default=False)] = None,
    layout: Annotated[str, typer.Option(
        "--layout", help="offline: the offline directory kdeploy installs from (--artifacts DIR, "
        "spec.artifacts.dir). mirror: the official URL layout (DIR/dl.k8s.io/..., DIR/github.com/"
        "..., checksum files beside) for a web server to serve as spec.artifacts.mirror.")] = "offline",
    lock: Annotated[Path | None, typer.Option(
        "--lock", help="Checksum lock to read and extend (default: the inventory's state dir "
        "<inventory dir>/.kdeploy/<cluster>/artifacts.lock.json, else "
        "~/.cache/kdeploy/artifacts.lock.json).", show_default=False)] = None,
    kube_bench: Annotated[bool, typer.Option(
        "--kube-bench", help="Also kube-bench's official release (tools/kube-bench/, for "
        "`kdeploy cis`; hosts do not install it).")] = False,
) -> None:
    """Download the official releases (or from a mirror), verify each against its pinned or
    locked sha256 and fill DIR.

    A sum kdeploy does not pin is read from upstream's published checksum file at the first
    download and recorded in the lock; later downloads must match it. Downloads are cached by
    sha256 in ${XDG_CACHE_HOME:-~/.cache}/kdeploy/downloads/, four at a time, and a broken
    download continues where it stopped. A checksum mismatch is a hard error."""
    from kdeploy.artifacts import check_arch
    from kdeploy.artifacts.fetch import fetch_mirror_layout, fetch_to_dir
    from kdeploy.artifacts.layout import cache_root
    from kdeploy.artifacts.lock import LOCK_NAME, ChecksumLock
    from kdeploy.cli.output import download_progress
    if layout not in ("offline", "mirror"):
        raise ArtifactError(f"--layout {layout!r}: unknown layout", "use --layout offline or --layout mirror")
    version, inv_mirror, state = _version_from(inventory, k8s_version)
    check_arch(arch)
    lock_path = lock or (state / LOCK_NAME if state else cache_root() / LOCK_NAME)
    the_lock = ChecksumLock(lock_path)
    echo = lambda s: typer.echo(f"  {s}")  # noqa: E731
    with download_progress():
        if layout == "mirror":
            n = len(fetch_mirror_layout(output, version, arch, mirror=mirror or inv_mirror,
                                        lock=the_lock, progress=echo, kube_bench=kube_bench))
            typer.echo(f"{output}: {n} files for Kubernetes {version} {arch} in the official URL "
                       f"layout, verified; serve DIR over HTTP and set spec.artifacts.mirror")
            return
        doc = fetch_to_dir(output, version, arch, mirror=mirror or inv_mirror, lock=the_lock,
                           progress=echo, kube_bench=kube_bench)
    typer.echo(f"{output}: {len(doc['files'])} files for Kubernetes {version} {arch}, "
               f"verified; manifest.json written")


@app.command()
def build(
    inventory: InvOpt = None,
    k8s_version: VersionOpt = None,
    arch: Annotated[str | None, typer.Option(
        "--arch", help="amd64 or arm64 (default: this machine's; no cross builds).",
        show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Also copy the finished set to DIR (hard links when possible).",
        show_default=False)] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Build just these components (comma-separated or repeated; no manifest): "
                       "kubernetes, etcd, containerd, runc, cni, crictl, coredns, api-lb, images, "
                       "kube-bench.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Ignore the cache and the stamps: "
                                        "rebuild everything.")] = False,
) -> None:
    """Build the offline artifact set from the upstream Go modules at the catalog's pins.

    The set lands in ${XDG_CACHE_HOME:-~/.cache}/kdeploy/artifacts-build/<version>-<arch>/
    (offline layout; use it with --artifacts DIR or spec.artifacts.dir). A rerun with a valid
    manifest takes seconds; an interrupted build resumes at the first unfinished component.
    Needs Go 1.26+, gcc, libc6-dev and libseccomp-dev (installed with apt-get when run as root),
    and a Debian 12 host for the api-lb step (apt-get download). Cold: about 25 min on 2 cores."""
    from kdeploy.artifacts import check_arch
    from kdeploy.artifacts.build import preflight, run_build
    version = _version_from(inventory, k8s_version)[0]
    if arch is not None:
        check_arch(arch)
    preflight()
    components = [c.strip() for item in (only or []) for c in item.split(",") if c.strip()]
    rc = run_build(version, arch=arch, output=output, only=components, force=force)
    if rc != 0:
        raise ArtifactError(f"the artifact build for Kubernetes {version} failed (exit {rc})",
                            "see its output above; a rerun resumes at the first unfinished "
                            "component")


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="Offline artifact directory.")],
    k8s_version: VersionOpt = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Require this architecture.",
                                             show_default=False)] = None,
) -> None:
    """Check every file of DIR against its manifest.json (size and sha256; no extra files)."""
    from kdeploy.artifacts import catalog
    from kdeploy.artifacts.layout import read_manifest, verify_dir
    doc = read_manifest(directory)
    version = (k8s_version or doc.get("kubernetesVersion") or "").lstrip("v")
    if not version:
        raise ArtifactError(f"{directory}/manifest.json has no kubernetesVersion",
                            "pass --k8s-version or re-create the directory")
    catalog.check_kubernetes_version(version)
    required = [s.relpath for s in catalog.file_specs(images=False)]
    doc = verify_dir(directory, kubernetes_version=version, arch=arch, required=required)
    n_img = sum(1 for r in doc["files"] if r.startswith("images/"))
    typer.echo(f"{directory}: ok: {len(doc['files'])} files ({n_img} image archives) match "
               f"manifest.json (Kubernetes {doc['kubernetesVersion']}, {doc['arch']}, "
               f"source: {doc.get('source', 'unknown')})")


@app.command("list")
def list_(
    inventory: InvOpt = None,
    k8s_version: VersionOpt = None,
    arch: ArchOpt = "amd64",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Show the catalog for a Kubernetes version: component versions, image refs, every file
    with its install path, roles, download URL and pinned sha256 (or 'unknown')."""
    from kdeploy.artifacts import catalog
    from kdeploy.artifacts._checksums import CHECKSUMS
    from kdeploy.artifacts.update import release_key
    version, _, _ = _version_from(inventory, k8s_version)
    catalog.check_arch(arch)
    v = catalog.versions_for(version)
    by_rel = {}
    for r in catalog.releases(v, arch):
        for rel in r.members:
            by_rel[rel] = r
    rows = []
    for s in catalog.file_specs():
        r = by_rel.get(s.relpath)
        rows.append({
            "name": s.name, "component": s.component,
            "version": catalog.component_version(v, s.component, s.name),
            "path": s.relpath, "installPath": s.install_path, "mode": oct(s.mode),
            "roles": sorted(s.roles),
            "url": r.url if r else None,
            "sha256": (CHECKSUMS.get(release_key(r)) if r else None),
            "shaOf": (r.asset if r else None),
        })
    if as_json:
        typer.echo(json.dumps({"kubernetesVersion": v.kubernetes, "arch": arch,
                               "versions": v.as_dict(), "files": rows}, indent=2))
        return
    typer.echo(f"Kubernetes {v.kubernetes} ({arch})")
    for k, val in v.as_dict().items():
        if k != "kubernetes":
            typer.echo(f"  {k:<14} {val}")
    typer.echo("")
    for row in rows:
        src = row["url"] or "image archive (offline directory only; else pulled by the hosts)"
        sha = row["sha256"] or ("read from upstream at first download, then locked" if row["url"] else "-")
        typer.echo(f"{row['path']:<32} {row['version']:<9} -> {row['installPath']}  "
                   f"[{','.join(row['roles'])}]")
        typer.echo(f"    {src}")
        if row["url"]:
            typer.echo(f"    sha256({row['shaOf']}): {sha}")


@app.command("update-checksums")
def update_checksums(
    check: Annotated[bool, typer.Option("--check", help="Only report differences; write nothing "
                                        "(exit 1 when the table is out of date).")] = False,
) -> None:
    """Regenerate kdeploy/artifacts/_checksums.py from upstream's published checksum files
    (needs internet access). Sums that cannot be fetched keep their old value and are listed."""
    from kdeploy.artifacts._checksums import CHECKSUMS
    from kdeploy.artifacts.fetch import urllib_fetcher
    from kdeploy.artifacts.update import CHECKSUMS_MODULE, fetch_text_with, render
    from kdeploy.artifacts.update import update_checksums as run
    res = run(fetch_text_with(urllib_fetcher), dict(CHECKSUMS))
    for k in res.changed:
        typer.echo(f"updated  {k}")
    for f in res.failed:
        typer.secho(f"failed   {f}", fg="yellow", err=True)
    for k in res.skipped:
        typer.echo(f"kept     {k} (no published checksum file; pinned by hand)")
    unknown = sum(1 for v in res.table.values() if v is None)
    if check:
        if res.changed:
            raise ArtifactError(f"{len(res.changed)} checksum(s) differ from upstream",
                                "run `kdeploy artifacts update-checksums` and commit the result")
        typer.echo(f"checksum table up to date ({unknown} unknown)")
        return
    CHECKSUMS_MODULE.write_text(render(res.table))
    typer.echo(f"wrote {CHECKSUMS_MODULE}: {len(res.table)} entries, {len(res.changed)} changed, "
               f"{unknown} still unknown")
    if res.failed and len(res.failed) == len(res.table) - len(res.skipped):
        raise ArtifactError("no checksum could be fetched",
                            "this needs internet access to dl.k8s.io and github.com")
