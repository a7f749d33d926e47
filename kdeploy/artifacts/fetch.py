"""Download official releases (directly or from a mirror of their URL layout), verify each
against its pinned or locked sha256, cache by content, and resolve the artifact set the
deployer installs.

Checksums: kdeploy's pinned table (`_checksums.py`) first; else the cluster's checksum lock
(`lock.py`); else upstream's published checksum file, read once over TLS (or from the mirror)
and recorded in the lock.
Mirror: `spec.artifacts.mirror` / `--mirror URL` serves the official URLs under
`URL/<host>/<path>` (kubespray's files_repo layout): `URL/dl.k8s.io/release/v1.37.2/bin/linux/
amd64/kubelet`, `URL/github.com/etcd-io/etcd/releases/download/...`, checksum files beside.
Download cache (by sha256): ${XDG_CACHE_HOME:-~/.cache}/kdeploy/downloads/sha256/<sha256>
Extracted files: .../downloads/sha256/<sha256>.d/<relpath>

Archives are tarballs or Debian .deb packages (an `ar` archive whose data.tar.* is read with
Python alone); only regular files named in the catalog are extracted from either.
"""
from __future__ import annotations

import fcntl
import io
import json
import lzma
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from kdeploy.artifacts import catalog
from kdeploy.artifacts._checksums import CHECKSUMS
from kdeploy.artifacts.catalog import ComponentVersions, FileSpec, Release
from kdeploy.artifacts.download import Fetcher, HttpFetcher, fetch_text, run_parallel
from kdeploy.artifacts.layout import (MANIFEST, VerifyCache, cache_root, sha256_file, verify_dir,
                                      write_manifest)
from kdeploy.artifacts.lock import PINNED, ChecksumLock
from kdeploy.artifacts.update import parse_sums, release_key
from kdeploy.errors import ArtifactError, ChecksumMismatch

urllib_fetcher = HttpFetcher()


@dataclass(frozen=True)
class ArtifactFile:
    name: str              # "kube-apiserver", "bridge", "pause-image"
    component: str         # "kubernetes", "etcd", "containerd", "runc", "cni-plugins", "crictl", "coredns", "images"
    version: str
    local_path: Path       # verified file on the deployer machine
    sha256: str
    install_path: str      # absolute path on the host
    mode: int              # 0o755 for binaries, 0o644 for image archives
    roles: frozenset[str]  # host roles that need it
    ref: str | None = None # an image archive's image name (what containerd knows it by)


class UnknownChecksum(ArtifactError):
    """No pinned, locked or published sha256 for a download."""


def downloads_dir() -> Path:
    return cache_root() / "downloads" / "sha256"


def mirror_url(url: str, mirror: str | None) -> str:
    """The URL of an official download on a mirror of the official layout (scheme dropped,
    host kept: https://dl.k8s.io/release/x -> MIRROR/dl.k8s.io/release/x)."""
    return f"{mirror.rstrip('/')}/{layout_path(url)}" if mirror else url


def layout_path(url: str) -> str:
    """Where a mirror serves an official URL, relative to its base: dl.k8s.io/release/..."""
    return url.split("://", 1)[1]


def check_mirror(mirror: str) -> None:
    if not mirror.startswith(("http://", "https://")):
        raise ArtifactError(f"artifacts mirror {mirror!r} is not an http(s) URL",
                            "write it as https://HOST[:PORT]/PATH (the official URLs are read "
                            "below it: PATH/dl.k8s.io/release/..., PATH/github.com/...)")


def expected_sha256(r: Release, lock: ChecksumLock | None = None,
                    published: Callable[[Release], tuple[str, str]] | None = None) -> str:
    """The sha256 a download must have: pinned, else locked, else read from upstream's
    published checksum file by `published` -> (sha256, the URL read), and locked."""
    key = release_key(r)
    pinned = CHECKSUMS.get(key)
    locked = lock.get(key) if lock else None
    if pinned:
        pinned = pinned.lower()
        if locked and locked != pinned:
            raise ArtifactError(
                f"the checksum lock {lock.path} holds sha256 {locked} for {r.asset} "
                f"({r.component} {r.version}, {r.arch}, from {lock.source(key)}), but kdeploy pins "
                f"{pinned}", "one of them is wrong: check upstream's published checksum; delete "
                "the entry from the lock file to use kdeploy's pinned value")
        if lock:
            lock.record(key, pinned, PINNED)
        return pinned
    if locked:
        return locked
    if published is None or not r.sha256_url:
        raise UnknownChecksum(
            f"the sha256 of {r.asset} ({r.component} {r.version}, {r.arch}) is not known, "
            f"so kdeploy refuses to download {r.url}", _unknown_hint([r]))
    sha, source = published(r)
    if lock:
        lock.record(key, sha, source)
    return sha


def _unknown_hint(rels: list[Release]) -> str:
    hints = []
    if any(r.sha256_url for r in rels):
        hints.append("run `kdeploy artifacts update-checksums` on a machine with internet access "
                     "and commit kdeploy/artifacts/_checksums.py")
    debs = sorted({r.asset for r in rels if not r.sha256_url})
    if debs:
        hints.append(f"pin the sha256 of {', '.join(debs)} in kdeploy/artifacts/_checksums.py by "
                     "hand (Debian publishes no checksum file: `apt-get download PACKAGE=VERSION` "
                     "on a Debian 12 host of that architecture checks it against Debian's signed "
                     "index; then sha256sum it)")
    hints.append("or use an offline directory built with `kdeploy artifacts build` (spec.artifacts.dir)")
    return "; ".join(hints)


def _safe_member(tf: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    for cand in (name, f"./{name}"):
        try:
            m = tf.getmember(cand)
        except KeyError:
            continue
        if m.isfile():
            return m
    return None


AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def _ar_members(data: bytes, where: str) -> dict[str, bytes]:
    """The members of an `ar` archive (a .deb): name -> content. Raises ArtifactError on
    anything malformed (bad magic or header, a member running past the end)."""
    def bad(why: str) -> ArtifactError:
        return ArtifactError(f"{where} is not a valid .deb (ar archive): {why}",
                             "delete it and fetch again")
    if not data.startswith(AR_MAGIC):
        raise bad("no !<arch> magic")
    out: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos < len(data):
        hdr = data[pos:pos + _AR_HEADER]
        if len(hdr) < _AR_HEADER or hdr[58:60] != b"`\n":
            raise bad(f"truncated or bad member header at offset {pos}")
        name = hdr[0:16].decode("ascii", "replace").rstrip(" ").rstrip("/")
        size_field = hdr[48:58].decode("ascii", "replace").strip()
        if not size_field.isdigit():
            raise bad(f"bad size {size_field!r} of member {name!r}")
        size = int(size_field)
        start = pos + _AR_HEADER
        if start + size > len(data):
            raise bad(f"member {name!r} runs past the end of the file")
        if name in out:
            raise bad(f"member {name!r} appears twice")
        out[name] = data[start:start + size]
        pos = start + size + (size & 1)  # members start at even offsets ("\n" padding)
    return out


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The data.tar.{xz,gz,zst} (or plain data.tar) of a .deb, opened for reading."""
    members = _ar_members(archive.read_bytes(), archive.name)
    if not members.get("debian-binary", b"").startswith(b"2."):
        raise ArtifactError(f"{archive.name} is not a Debian binary package (no debian-binary 2.x)",
                            "delete it and fetch again")
    data_names = [n for n in members if n == "data.tar" or n.startswith("data.tar.")]
    if len(data_names) != 1:
        raise ArtifactError(f"{archive.name} has {len(data_names)} data.tar members, not one",
                            "delete it and fetch again")
    name = data_names[0]
    raw = members[name]
    if name == "data.tar.zst":
        raw = _unzstd(raw, archive.name)
        mode = "r:"
    else:
        mode = {"data.tar": "r:", "data.tar.xz": "r:xz", "data.tar.gz": "r:gz",
                "data.tar.bz2": "r:bz2"}.get(name, "")
        if not mode:
            raise ArtifactError(f"{archive.name}: unsupported {name}", "use a .deb with an xz, "
                                "gzip, zstd or uncompressed data.tar")
    return tarfile.open(fileobj=io.BytesIO(raw), mode=mode)


def _unzstd(raw: bytes, where: str) -> bytes:
    try:
        from compression import zstd  # Python >= 3.14
        decompress = zstd.decompress
    except ImportError:
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise ArtifactError(f"{where} holds a zstd-compressed data.tar and this Python cannot "
                                "decompress zstd",
                                "use Python >= 3.14 or pip install zstandard") from None
        decompress = zstandard.ZstdDecompressor().decompressobj().decompress
    try:
        return decompress(raw)
    except Exception as e:  # noqa: BLE001 - zstd's error types differ between the two modules
        raise ArtifactError(f"cannot read the data.tar.zst of {where}: {e}",
                            "delete it and fetch again") from None


def _open_archive(archive: Path) -> tarfile.TarFile:
    """A tar archive (any compression tarfile reads) or a .deb's data.tar."""
    with open(archive, "rb") as f:
        head = f.read(len(AR_MAGIC))
    if head == AR_MAGIC:
        return _deb_data_tar(archive)
    return tarfile.open(archive)


def _download(r: Release, want: str, fetcher: Fetcher, cache: VerifyCache,
              mirror: str | None = None) -> Path:
    """The verified download of r in the content-addressed cache, downloaded only when missing
    or bad. A partial download (`<sha>.part`) is continued by the next run."""
    d = downloads_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / want
    url = mirror_url(r.url, mirror)
    with open(d / f"{want}.lock", "w") as lk:  # another kdeploy fetching the same file waits
        fcntl.flock(lk, fcntl.LOCK_EX)
        if path.is_file():
            if cache.sha256(path) == want:
                return path
            cache.forget(path)
            path.unlink()  # corrupt: fetch again
        part = d / f"{want}.part"
        for attempt in (1, 2):
            resumed = part.is_file() and part.stat().st_size > 0
            try:
                if isinstance(fetcher, HttpFetcher):
                    fetcher(url, part, f"{r.asset} ({r.component} {r.version})")
                else:
                    part.unlink(missing_ok=True)
                    fetcher(url, part)
            except BaseException:
                if not isinstance(fetcher, HttpFetcher):
                    part.unlink(missing_ok=True)
                raise  # an http .part stays for the next run to continue
            actual = sha256_file(part)
            if actual == want:
                part.replace(path)
                return path
            part.unlink(missing_ok=True)
            if not (resumed and attempt == 1):  # a continued file may hold a stale prefix: once more whole
                raise _mismatch(r, url, want, actual)
    raise AssertionError("unreachable")


def _mismatch(r: Release, url: str, want: str, actual: str) -> ChecksumMismatch:
    e = ChecksumMismatch(url, want, actual)
    e.hint = (f"the file served at {url} is not the one kdeploy pinned or locked for {r.asset} "
              f"({r.component} {r.version}, {r.arch}); nothing was installed. If it was replaced "
              "on purpose, remove its entry from the cluster's artifacts.lock.json (state dir) and "
              "run again; otherwise find out who changed it")
    return e


def _extract(r: Release, archive: Path, cache: VerifyCache) -> dict[str, Path]:
    """relpath -> verified extracted file. Extraction happens once per archive."""
    d = archive.parent / f"{archive.name}.d"
    stamp = d / ".extracted.json"
    archive_sha = cache.sha256(archive)
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        info = {}
    out = {rel: d / rel for rel in r.members}
    if (info.get("archive") == archive_sha
            and all(rel in info.get("files", {}) and p.is_file() and cache.sha256(p) == info["files"][rel]
                    for rel, p in out.items())):
        return out
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    files: dict[str, str] = {}
    if all(m == "" for m in r.members.values()):
        for rel, p in out.items():
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, p)
            os.chmod(p, 0o755)
            files[rel] = archive_sha
    else:
        try:
            with _open_archive(archive) as tf:
                for rel, member in r.members.items():
                    m = _safe_member(tf, member)
                    if m is None:
                        raise ArtifactError(f"{archive.name} has no file {member}",
                                            "upstream changed the archive layout; update "
                                            "kdeploy/artifacts/catalog.py")
                    src = tf.extractfile(m)
                    assert src is not None
                    p = out[rel]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    with src, open(p, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
                    os.chmod(p, 0o755)
                    files[rel] = sha256_file(p)
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise ArtifactError(f"cannot read {archive}: {e}", "delete it and fetch again") from None
    stamp.write_text(json.dumps({"archive": archive_sha, "files": files}))
    return out


def _artifact(spec: FileSpec, v: ComponentVersions, path: Path, sha: str) -> ArtifactFile:
    return ArtifactFile(name=spec.name, component=spec.component,
                        version=catalog.component_version(v, spec.component, spec.name),
                        local_path=path, sha256=sha, install_path=spec.install_path,
                        mode=spec.mode, roles=spec.roles)


def _from_dir(root: Path, v: ComponentVersions, arch: str, cache: VerifyCache) -> list[ArtifactFile]:
    binaries = [s.relpath for s in catalog.file_specs(images=False)]
    doc = verify_dir(root, kubernetes_version=v.kubernetes, arch=arch, required=binaries, cache=cache)
    files, refs = doc["files"], doc.get("images") or {}
    return [replace(_artifact(s, v, root / s.relpath, files[s.relpath]["sha256"].lower()),
                    ref=refs.get(s.relpath))
            for s in catalog.file_specs() if s.relpath in files]


def _from_images_dir(root: Path, v: ComponentVersions, cache: VerifyCache) -> list[ArtifactFile]:
    """Image archives an operator provides (spec.artifacts.images): pause.tar, coredns.tar and
    optionally agnhost.tar, each naming its image inside (docker save, ctr export, skopeo
    docker-archive/oci-archive with a full name)."""
    from kdeploy.artifacts.oci import archive_refs
    if not root.is_dir():
        raise ArtifactError(f"image directory {root} does not exist",
                            "set spec.artifacts.images to a directory holding pause.tar and "
                            "coredns.tar (docs/artifacts.md)")
    specs = {Path(s.relpath).name: s for s in catalog.file_specs() if s.component == "images"}
    extra = sorted(p.name for p in root.iterdir() if p.name not in specs)
    if extra:
        raise ArtifactError(f"image directory {root} holds files kdeploy does not import: "
                            f"{', '.join(extra)}", f"keep only {', '.join(sorted(specs))} there")
    out = []
    for fname, s in specs.items():
        p = root / fname
        if not p.is_file():
            continue
        try:
            ref = archive_refs(p)[0]
        except ValueError as e:
            raise ArtifactError(f"{p}: {e}", "export it again with `ctr images export` or "
                                "`docker save` (the archive must carry the image's full name)") from None
        out.append(replace(_artifact(s, v, p, cache.sha256(p)), ref=ref))
    return out


def _downloads(v: ComponentVersions, arch: str, fetcher: Fetcher, cache: VerifyCache,
               lock: ChecksumLock | None, mirror: str | None = None, *,
               rels: list[Release] | None = None) -> list[tuple[Release, Path, str]]:
    """Every official download of (v, arch) (or just `rels`), verified, in the cache:
    (release, file, sha256)."""
    rels = catalog.releases(v, arch) if rels is None else rels
    # every checksum first (pinned, locked or published): refuse before downloading anything
    texts: dict[str, str] = {}
    scratch = downloads_dir()
    scratch.mkdir(parents=True, exist_ok=True)

    def published(r: Release) -> tuple[str, str]:
        url = mirror_url(r.sha256_url, mirror)
        if url not in texts:
            texts[url] = fetch_text(fetcher, url, scratch / f".sums.{os.getpid()}.{len(texts)}")
        sha = parse_sums(texts[url], r.asset)
        if sha is None:
            raise ArtifactError(f"{url} has no sha256 for {r.asset}",
                                "the mirror's checksum file is incomplete; fill the mirror again "
                                "(kdeploy artifacts fetch --layout mirror)" if mirror else
                                "upstream changed its checksum file; report it to kdeploy")
        return sha, url

    unknown: list[Release] = []
    wants: dict[str, str] = {}
    for r in rels:
        try:
            wants[release_key(r)] = expected_sha256(r, lock, published)
        except UnknownChecksum:
            unknown.append(r)
    if unknown:
        raise ArtifactError(
            f"the sha256 of {len(unknown)} official download(s) for Kubernetes {v.kubernetes} "
            f"{arch} is not known, so kdeploy refuses to download them: "
            + ", ".join(f"{r.asset} ({r.component} {r.version})" for r in unknown),
            _unknown_hint(unknown))
    if lock:
        lock.save()
    archives = run_parallel(
        (lambda r=r: _download(r, wants[release_key(r)], fetcher, cache, mirror)) for r in rels)
    return [(r, a, wants[release_key(r)]) for r, a in zip(rels, archives)]


def _from_official(v: ComponentVersions, arch: str, fetcher: Fetcher, cache: VerifyCache,
                   lock: ChecksumLock | None, mirror: str | None = None) -> list[ArtifactFile]:
    paths: dict[str, Path] = {}
    for r, archive, _ in _downloads(v, arch, fetcher, cache, lock, mirror):
        paths.update(_extract(r, archive, cache))
    out = []
    for s in catalog.file_specs(images=False):
        p = paths[s.relpath]
        out.append(_artifact(s, v, p, cache.sha256(p)))
    return out


def resolve(kubernetes_version: str, arch: str = "amd64", *, offline_dir: Path | None = None,
            mirror: str | None = None, fetcher: Fetcher | None = None,
            lock: ChecksumLock | None = None, images_dir: Path | None = None) -> list[ArtifactFile]:
    """The verified files to install for one Kubernetes version and arch.

    offline_dir: validate its manifest and checksums and return files from it (image archives
    included when the directory has them). Otherwise download the official releases (from
    `mirror`, a base URL serving their URL layout, when given) into the cache and verify each
    against its pinned or locked sha256 (binaries only: hosts then pull the images of
    versions_for() from their registries). `lock`: the cluster's checksum lock (sums read from
    upstream's checksum files are recorded there). images_dir: image archives to import on
    the nodes (in place of the offline directory's). Raises ArtifactError with a hint."""
    catalog.check_arch(arch)
    v = catalog.versions_for(kubernetes_version)
    cache = VerifyCache()
    try:
        if offline_dir is not None:
            files = _from_dir(Path(offline_dir).expanduser(), v, arch, cache)
        else:
            if mirror:
                check_mirror(mirror)
            files = _from_official(v, arch, fetcher or urllib_fetcher, cache, lock, mirror)
        if images_dir is not None:
            files = [f for f in files if f.component != "images"] + \
                _from_images_dir(Path(images_dir).expanduser(), v, cache)
        return files
    finally:
        cache.save()


def _copy_in(out: Path, rel: str, src: Path, mode: int) -> None:
    dest = out / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, mode)
    tmp.replace(dest)


def fetch_to_dir(out: Path, kubernetes_version: str, arch: str = "amd64", *,
                 mirror: str | None = None, fetcher: Fetcher | None = None,
                 lock: ChecksumLock | None = None,
                 progress: Callable[[str], None] | None = None, kube_bench: bool = False) -> dict:
    """Fill `out` with the offline layout (binaries) from the official releases or a mirror;
    write its manifest. kube_bench: add kube-bench's official release under tools/kube-bench/
    (for `kdeploy cis`). Returns the manifest."""
    files = resolve(kubernetes_version, arch, mirror=mirror, fetcher=fetcher, lock=lock)
    v = catalog.versions_for(kubernetes_version)
    tools: dict[str, Path] = {}
    if kube_bench:
        cache = VerifyCache()
        try:
            for r, archive, _ in _downloads(v, arch, fetcher or urllib_fetcher, cache, lock,
                                            mirror, rels=[catalog.kube_bench_release(arch)]):
                tools = _extract(r, archive, cache)
        finally:
            cache.save()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
    specs = {s.name: s for s in catalog.file_specs()}
    for f in files:
        _copy_in(out, specs[f.name].relpath, f.local_path, f.mode)
        if progress:
            progress(f"{specs[f.name].relpath}  {f.component} {f.version}")
    for rel, p in tools.items():
        _copy_in(out, rel, p, 0o755 if rel == catalog.KUBE_BENCH_BIN else 0o644)
        if progress:
            progress(f"{rel}  kube-bench {catalog.KUBE_BENCH_VERSION}")
    comps = {k: val for k, val in v.as_dict().items() if not k.endswith("_image")}
    if tools:
        comps["kube_bench"] = f"{catalog.KUBE_BENCH_VERSION}/{catalog.KUBE_BENCH_BENCHMARK}"
    images = {f"images/{fn}": getattr(v, attr) for fn, _, attr in catalog.IMAGES.values()
              if (out / "images" / fn).is_file()}
    doc = write_manifest(out, kubernetes_version=v.kubernetes, arch=arch,
                         source=f"mirror {mirror}" if mirror else "official-releases",
                         components=comps, images=images)
    # the files in out must be exactly the resolved ones
    for f in files:
        if doc["files"][specs[f.name].relpath]["sha256"] != f.sha256:
            raise ChecksumMismatch(str(out / specs[f.name].relpath), f.sha256,
                                   doc["files"][specs[f.name].relpath]["sha256"])
    return doc


def fetch_mirror_layout(out: Path, kubernetes_version: str, arch: str = "amd64", *,
                        mirror: str | None = None, fetcher: Fetcher | None = None,
                        lock: ChecksumLock | None = None,
                        progress: Callable[[str], None] | None = None,
                        kube_bench: bool = False) -> list[str]:
    """Fill `out` with the official downloads of (version, arch) in their URL layout
    (out/dl.k8s.io/release/..., out/github.com/...), each with a checksum file at the path of
    upstream's (holding the verified sums), so any web server serving `out` is a mirror for
    spec.artifacts.mirror. Several versions and arches can share one `out`. kube_bench: kube-bench's
    release too (what `fetch --kube-bench` then reads from the mirror). Returns the paths
    written, relative to out."""
    catalog.check_arch(arch)
    v = catalog.versions_for(kubernetes_version)
    cache = VerifyCache()
    out = Path(out)
    written: list[str] = []
    try:
        if mirror:
            check_mirror(mirror)
        rels = catalog.releases(v, arch) + ([catalog.kube_bench_release(arch)] if kube_bench else [])
        for r, archive, sha in _downloads(v, arch, fetcher or urllib_fetcher, cache, lock, mirror,
                                          rels=rels):
            rel = layout_path(r.url)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not (dest.is_file() and cache.sha256(dest) == sha):
                tmp = dest.with_name(dest.name + ".tmp")
                shutil.copyfile(archive, tmp)
                tmp.replace(dest)
            written.append(rel)
            if r.sha256_url:
                add_sum(out / layout_path(r.sha256_url), r, sha)
                written.append(layout_path(r.sha256_url))
            if progress:
                progress(f"{rel}  {r.component} {r.version}")
    finally:
        cache.save()
    return sorted(set(written))


def add_sum(path: Path, r: Release, sha: str) -> None:
    """Put `sha  asset` into a checksum file (a bare digest for one-file .sha256 files, the form
    dl.k8s.io publishes), keeping the lines of other assets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == f"{r.asset}.sha256" and r.component == "kubernetes":
        path.write_text(sha + "\n")
        return
    old = path.read_text() if path.is_file() else ""
    if parse_sums(old, r.asset) == sha:
        return
    keep = [ln for ln in old.splitlines() if ln.strip() and ln.split()[-1].lstrip("*") != r.asset]
    path.write_text("\n".join(keep + [f"{sha}  {r.asset}"]) + "\n")
