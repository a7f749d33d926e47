"""Compressed upload blobs: each file content compressed once per deployer, sent to every host.

Binaries and image archives are most of what a deploy sends (about 300 MB per worker, 600 MB per
control-plane host for Kubernetes 1.37); gzip takes Go binaries to about 28 %. A file with a
known sha256 of at least MIN_SIZE bytes is compressed once into

    ${XDG_CACHE_HOME:-~/.cache}/kdeploy/blobs/gzip/<sha256>.gz

(hashed while it is compressed: a source that does not match its sha256 is refused before any
host sees it; flock'ed so concurrent kdeploy processes and hosts take turns), then streamed to
each host, which decompresses with gzip (Debian essential, on every host) and checks the sha256
of what it wrote before renaming it into place: the check stays end to end. A cached blob is
trusted by name; one whose output does not verify on a host is deleted and rebuilt once
(kdeploy.transport.ssh). Nothing here is secret: secrets are small files written by put().
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import zlib
from pathlib import Path

from kdeploy.errors import TransportError

MIN_SIZE = 1 << 20     # smaller files go as they are: compressing them saves nothing worth a round trip
LEVEL = 6              # gzip -6: 28 % on kubelet, 3.5 s per 92 MB once; -1 is 32 % and slower to inflate
_CHUNK = 1 << 20

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def blob_dir() -> Path:
    from kdeploy.artifacts.layout import cache_root
    return cache_root() / "blobs" / "gzip"


def wanted(size: int, sha256: str | None) -> bool:
    """Whether a file of this size is sent compressed (its sha256 must be known: the host checks it)."""
    return bool(sha256) and size >= MIN_SIZE


def gzip_blob(local_path: Path, sha256: str) -> Path:
    """The cached gzip blob of local_path (whose content must hash to sha256), built if missing."""
    sha256 = sha256.lower()
    d = blob_dir()
    path = d / f"{sha256}.gz"
    if path.is_file():
        return path
    with _lock_for(sha256):
        if path.is_file():
            return path
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{sha256}.lock", "w") as lk:  # another kdeploy compressing the same content
            fcntl.flock(lk, fcntl.LOCK_EX)
            if not path.is_file():
                _compress(Path(local_path), sha256, path)
    return path


def prewarm(files: list[tuple[Path, str]], workers: int = 2) -> None:
    """Compress the blobs of files (local path, sha256) that will be uploaded, in the background
    (zlib releases the GIL): a deploy's early phases overlap the first compression of a new
    artifact set. Errors are left to the upload that needs the blob, which raises them."""
    todo = {sha: p for p, sha in files
            if wanted(_size(p), sha) and not (blob_dir() / f"{sha.lower()}.gz").is_file()}
    if not todo:
        return

    def work() -> None:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=workers) as ex:
            for sha, p in todo.items():
                ex.submit(_quiet, p, sha)

    threading.Thread(target=work, name="kdeploy-blobs", daemon=True).start()


def _quiet(path: Path, sha256: str) -> None:
    try:
        gzip_blob(path, sha256)
    except Exception:  # noqa: BLE001 - the upload that needs it raises the same error
        pass


def _size(p: Path) -> int:
    try:
        return Path(p).stat().st_size
    except OSError:
        return 0


def forget(sha256: str) -> None:
    """Drop a cached blob (its output did not verify on a host)."""
    (blob_dir() / f"{sha256.lower()}.gz").unlink(missing_ok=True)


def _compress(src: Path, sha256: str, out: Path) -> None:
    h = hashlib.sha256()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # wbits 31: a gzip stream (header, deflate, crc32), what `gzip -dc` reads
    z = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
    try:
        with open(src, "rb") as f, open(tmp, "wb") as w:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                w.write(z.compress(chunk))
            w.write(z.flush())
        if h.hexdigest() != sha256:
            raise TransportError(f"local file {src} does not match its sha256: expected {sha256}, "
                                 f"got {h.hexdigest()}",
                                 "the artifact cache is corrupt: delete the file and fetch or build it again")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _lock_for(sha256: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(sha256, threading.Lock())
