"""Download official releases (or a mirror), verify pinned sha256, cache by version, and resolve
the artifact set the deployer installs.

Download cache: ${XDG_CACHE_HOME:-~/.cache}/kdeploy/downloads/<component>/<version>/<arch>/<asset>
Extracted files: ${XDG_CACHE_HOME:-~/.cache}/kdeploy/downloads/<component>/<version>/<arch>/<asset>.d/<relpath>

Archives are tarballs or Debian .deb packages (an `ar` archive whose data.tar.* is read with
Python alone); only regular files named in the catalog are extracted from either.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdeploy.artifacts import catalog
from kdeploy.artifacts._checksums import CHECKSUMS
from kdeploy.artifacts.catalog import ComponentVersions, FileSpec, Release
from kdeploy.artifacts.layout import (MANIFEST, VerifyCache, cache_root, read_manifest, sha256_file,
                                      verify_dir, write_manifest)
from kdeploy.errors import ArtifactError, ChecksumMismatch

# A fetcher downloads URL into the file DEST (raising ArtifactError on failure).
Fetcher = Callable[[str, Path], None]

USER_AGENT = "kdeploy-artifacts"
TIMEOUT = 60


def urllib_fetcher(url: str, dest: Path) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except urllib.error.HTTPError as e:
        raise ArtifactError(f"download of {url} failed: HTTP {e.code} {e.reason}",
                            "check the version exists upstream, or use an offline directory "
                            "(artifacts.dir) or a mirror (artifacts.mirror)") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise ArtifactError(f"download of {url} failed: {reason}",
                            "this machine may have no internet access: fetch the artifacts "
                            "elsewhere (kdeploy artifacts fetch -o DIR), copy DIR here and set "
                            "spec.artifacts.dir, or set spec.artifacts.mirror") from None


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


def downloads_dir() -> Path:
    return cache_root() / "downloads"


def expected_sha256(r: Release) -> str:
    key = f"{r.component}/{r.version}/{r.arch}/{r.asset}"
    if key not in CHECKSUMS:
        raise ArtifactError(
            f"no checksum entry for {r.asset} ({r.component} {r.version}, {r.arch})",
            "run `kdeploy artifacts update-checksums` on a machine with internet access "
            "and commit the result")
    sha = CHECKSUMS[key]
    if not sha:
        raise ArtifactError(
            f"the sha256 of {r.asset} ({r.component} {r.version}, {r.arch}) is not known, "
            f"so kdeploy refuses to download {r.url}", _unknown_hint([r]))
    return sha.lower()


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


def _download_release(r: Release, fetcher: Fetcher, cache: VerifyCache) -> Path:
    """The verified download of r in the cache (downloading it only when missing or bad)."""
    want = expected_sha256(r)
    d = downloads_dir() / r.component / r.version / r.arch
    d.mkdir(parents=True, exist_ok=True)
    path = d / r.asset
    if path.is_file():
        if cache.sha256(path) == want:
            return path
        cache.forget(path)
        path.unlink()  # corrupt or stale: fetch again
    fd, tmpname = tempfile.mkstemp(dir=d, prefix=f".{r.asset}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmpname)
    try:
        fetcher(r.url, tmp)
        actual = sha256_file(tmp)
        if actual != want:
            raise ChecksumMismatch(r.url, want, actual)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
    files = doc["files"]
    return [_artifact(s, v, root / s.relpath, files[s.relpath]["sha256"].lower())
            for s in catalog.file_specs() if s.relpath in files]


def _from_official(v: ComponentVersions, arch: str, fetcher: Fetcher,
                   cache: VerifyCache) -> list[ArtifactFile]:
    rels = catalog.releases(v, arch)
    # refuse before downloading anything when a checksum is unknown
    unknown, unknown_rels = [], []
    for r in rels:
        try:
            expected_sha256(r)
        except ArtifactError:
            unknown.append(f"{r.asset} ({r.component} {r.version})")
            unknown_rels.append(r)
    if unknown:
        raise ArtifactError(
            f"the sha256 of {len(unknown)} official download(s) for Kubernetes {v.kubernetes} "
            f"{arch} is not known, so kdeploy refuses to download them: {', '.join(unknown)}",
            _unknown_hint(unknown_rels))
    paths: dict[str, Path] = {}
    for r in rels:
        archive = _download_release(r, fetcher, cache)
        paths.update(_extract(r, archive, cache))
    out = []
    for s in catalog.file_specs(images=False):
        p = paths[s.relpath]
        out.append(_artifact(s, v, p, cache.sha256(p)))
    return out


def _layout_mode(rel: str) -> int:
    """The mode of a file of the offline layout: the catalog's, else 0644 for images/ and lib/
    (data, shared objects) and 0755 for bin/ and cni/ (executables)."""
    modes = {s.relpath: s.mode for s in catalog.file_specs()}
    return modes.get(rel, 0o644 if rel.startswith(("images/", "lib/")) else 0o755)


def _from_mirror(mirror: str, v: ComponentVersions, arch: str, fetcher: Fetcher,
                 cache: VerifyCache) -> list[ArtifactFile]:
    base = mirror.rstrip("/")
    key = hashlib.sha256(base.encode()).hexdigest()[:16]
    root = cache_root() / "mirror" / key / f"{v.kubernetes}-{arch}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (MANIFEST + ".part")
    fetcher(f"{base}/{MANIFEST}", tmp)
    tmp.replace(root / MANIFEST)
    doc = read_manifest(root)
    for rel, ent in doc["files"].items():
        p = root / rel
        if p.is_file() and p.stat().st_size == ent["size"] and cache.sha256(p) == ent["sha256"].lower():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        part = p.with_name(p.name + ".part")
        fetcher(f"{base}/{urllib.parse.quote(rel)}", part)
        actual = sha256_file(part)
        if actual != ent["sha256"].lower():
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{base}/{rel}", ent["sha256"], actual)
        part.replace(p)
        os.chmod(p, _layout_mode(rel))
    return _from_dir(root, v, arch, cache)


def resolve(kubernetes_version: str, arch: str = "amd64", *, offline_dir: Path | None = None,
            mirror: str | None = None, fetcher: Fetcher | None = None) -> list[ArtifactFile]:
    """The verified files to install for one Kubernetes version and arch.

    offline_dir: validate its manifest and checksums and return files from it (image archives
    included when the directory has them). mirror: download DIR-layout files from that base URL
    into the cache, verify against its manifest. Otherwise download the official releases into
    the cache and verify the pinned sha256 (binaries only: hosts then pull the images of
    versions_for() from their registries). Raises ArtifactError with a hint on any problem."""
    catalog.check_arch(arch)
    v = catalog.versions_for(kubernetes_version)
    cache = VerifyCache()
    try:
        if offline_dir is not None:
            return _from_dir(Path(offline_dir).expanduser(), v, arch, cache)
        if mirror:
            return _from_mirror(mirror, v, arch, fetcher or urllib_fetcher, cache)
        return _from_official(v, arch, fetcher or urllib_fetcher, cache)
    finally:
        cache.save()


def fetch_to_dir(out: Path, kubernetes_version: str, arch: str = "amd64", *,
                 mirror: str | None = None, fetcher: Fetcher | None = None,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Fill `out` with the offline layout (binaries) from the official releases or a mirror;
    write its manifest. Returns the manifest."""
    files = resolve(kubernetes_version, arch, mirror=mirror, fetcher=fetcher)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
    specs = {s.name: s for s in catalog.file_specs()}
    for f in files:
        dest = out / specs[f.name].relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(f.local_path, tmp)
        os.chmod(tmp, f.mode)
        tmp.replace(dest)
        if progress:
            progress(f"{specs[f.name].relpath}  {f.component} {f.version}")
    v = catalog.versions_for(kubernetes_version)
    comps = {k: val for k, val in v.as_dict().items() if not k.endswith("_image")}
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
