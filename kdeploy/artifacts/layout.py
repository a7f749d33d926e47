"""The offline artifact layout (docs/artifacts.md) and its verification.

    DIR/manifest.json   {"kubernetesVersion", "arch", "source", "components", "images",
                         "files": {relpath: {"sha256", "size"}}}
    DIR/bin/<binary>    DIR/cni/<plugin>    DIR/lib/<shared object>    DIR/images/<name>.tar
    DIR/tools/<tool>/...  files the deployer uses but hosts do not install (optional:
                        tools/kube-bench/{kube-bench,cfg/...} for `kdeploy cis`)

Verification results are cached by (absolute path, size, mtime_ns) in
${XDG_CACHE_HOME:-~/.cache}/kdeploy/verified.json so a re-run does not hash gigabytes again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from kdeploy.errors import ArtifactError, ChecksumMismatch

MANIFEST = "manifest.json"
LAYOUT_DIRS = ("bin", "cni", "lib", "images", "tools")
_IGNORED = {MANIFEST, ".stamps", ".build-times.tsv"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdeploy"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


class VerifyCache:
    """sha256 of files keyed by (path, size, mtime_ns); stale entries are ignored."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / "verified.json"
        self._data: dict[str, list] | None = None
        self.hashed: int = 0  # files actually hashed (tests and --verbose read it)

    def _load(self) -> dict[str, list]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text())
                if not isinstance(self._data, dict):
                    self._data = {}
            except (OSError, ValueError):
                self._data = {}
        return self._data

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        key = str(path)
        ent = self._load().get(key)
        if ent and ent[0] == st.st_size and ent[1] == st.st_mtime_ns:
            return ent[2]
        digest = sha256_file(path)
        self.hashed += 1
        self._load()[key] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def forget(self, path: Path) -> None:
        self._load().pop(str(Path(path).resolve()), None)

    def save(self) -> None:
        if self._data is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".verified.")
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def _layout_files(root: Path) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in _IGNORED]
        for fn in filenames:
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
            if rel in _IGNORED or fn.endswith(".tmp"):
                continue
            out.add(rel.replace(os.sep, "/"))
    return out


def write_manifest(root: Path, *, kubernetes_version: str, arch: str, source: str,
                   components: dict[str, str] | None = None,
                   images: dict[str, str] | None = None) -> dict:
    """Hash every file under root and write root/manifest.json."""
    root = Path(root)
    files = {}
    for rel in sorted(_layout_files(root)):
        p = root / rel
        files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    doc = {
        "kubernetesVersion": kubernetes_version.lstrip("v"),
        "arch": arch,
        "source": source,
        "components": components or {},
        "images": images or {},
        "files": files,
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)
    return doc


def read_manifest(root: Path) -> dict:
    root = Path(root)
    mp = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {root} does not exist",
                            "create it with `kdeploy artifacts fetch -o DIR` "
                            "(or kdeploy artifacts build -o DIR)")
    if not mp.is_file():
        raise ArtifactError(f"{mp} is missing: {root} is not an artifact directory",
                            "create it with `kdeploy artifacts fetch -o DIR` "
                            "(or kdeploy artifacts build -o DIR)")
    try:
        doc = json.loads(mp.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{mp} is not valid JSON: {e}",
                            "re-create the directory with `kdeploy artifacts fetch -o DIR`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise ArtifactError(f"{mp} has no \"files\" map", "re-create the directory with "
                            "`kdeploy artifacts fetch -o DIR`")
    for rel, ent in doc["files"].items():
        if (not isinstance(ent, dict) or not isinstance(ent.get("sha256"), str)
                or not isinstance(ent.get("size"), int)):
            raise ArtifactError(f"{mp}: entry {rel!r} needs \"sha256\" and \"size\"",
                                "re-create the directory with `kdeploy artifacts fetch -o DIR`")
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ArtifactError(f"{mp}: entry {rel!r} is not a relative path inside the directory",
                                "the manifest was edited by hand or is hostile; re-create it")
    return doc


def verify_dir(root: Path, *, kubernetes_version: str | None = None, arch: str | None = None,
               required: list[str] | None = None, cache: VerifyCache | None = None) -> dict:
    """Check root against its manifest: every listed file exists with the listed size and
    sha256, no file is unlisted, and (if given) version, arch and required files match.
    Returns the manifest. Raises ArtifactError / ChecksumMismatch."""
    root = Path(root)
    doc = read_manifest(root)
    mp = root / MANIFEST
    if kubernetes_version and doc.get("kubernetesVersion") != kubernetes_version.lstrip("v"):
        raise ArtifactError(
            f"{root} holds artifacts for Kubernetes {doc.get('kubernetesVersion')}, "
            f"not {kubernetes_version.lstrip('v')}",
            "point artifacts.dir at a directory built or fetched for this version "
            f"(kdeploy artifacts fetch -o DIR --k8s-version {kubernetes_version.lstrip('v')})")
    if arch and doc.get("arch") != arch:
        raise ArtifactError(f"{root} holds {doc.get('arch')} artifacts, the hosts need {arch}",
                            f"fetch the {arch} set: kdeploy artifacts fetch -o DIR --arch {arch}")
    listed: dict[str, dict] = doc["files"]
    missing_req = [r for r in (required or []) if r not in listed]
    if missing_req:
        raise ArtifactError(f"{mp} does not list {', '.join(missing_req)}",
                            "the directory is incomplete; re-create it with "
                            "`kdeploy artifacts fetch -o DIR`")
    present = _layout_files(root)
    extra = sorted(present - set(listed))
    if extra:
        raise ArtifactError(f"{root} holds files the manifest does not list: {', '.join(extra)}",
                            "remove them, or regenerate the manifest if you added them on purpose")
    cache = cache or VerifyCache()
    try:
        for rel in sorted(listed):
            ent = listed[rel]
            p = root / rel
            if not p.is_file():
                raise ArtifactError(f"{p} is listed in {mp} but missing",
                                    "the directory is incomplete; re-create it with "
                                    "`kdeploy artifacts fetch -o DIR`")
            size = p.stat().st_size
            if size != ent["size"]:
                raise ArtifactError(f"{p} has {size} bytes, {mp} says {ent['size']}",
                                    "the file is truncated or replaced; delete it and fetch again")
            actual = cache.sha256(p)
            if actual != ent["sha256"].lower():
                cache.forget(p)
                raise ChecksumMismatch(str(p), ent["sha256"], actual)
    finally:
        cache.save()
    return doc
