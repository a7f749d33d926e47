"""HTTP downloads of release files: resumable (a `.part` file continues with a Range request),
several at a time, with byte progress for a terminal bar.

    http_fetch(url, dest)                      -> dest holds the whole body (continues dest if
                                                  it exists and the server honours Range)
    run_parallel(jobs, workers=4)              -> results in order; the first error is raised
                                                  after every job ended

A Fetcher is any callable (url, dest) -> None that raises ArtifactError; tests pass fakes.
HttpFetcher is the real one and also reports bytes to a DownloadProgress.
"""
from __future__ import annotations

import contextvars
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

from kdeploy.errors import ArtifactError

USER_AGENT = "kdeploy-artifacts"
TIMEOUT = 60
CHUNK = 1 << 20
WORKERS = 4

Fetcher = Callable[[str, Path], None]
T = TypeVar("T")


class DownloadProgress(Protocol):
    def start(self, key: str, label: str, total: int | None) -> None: ...
    def advance(self, key: str, n: int) -> None: ...
    def done(self, key: str) -> None: ...


class _Quiet:
    def start(self, key: str, label: str, total: int | None) -> None: pass
    def advance(self, key: str, n: int) -> None: pass
    def done(self, key: str) -> None: pass


_progress: contextvars.ContextVar[DownloadProgress] = contextvars.ContextVar(
    "kdeploy_download_progress", default=_Quiet())


@contextmanager
def showing_progress(progress: DownloadProgress):
    """Downloads started inside report to `progress` (the CLI's terminal bar)."""
    token = _progress.set(progress)
    try:
        yield progress
    finally:
        _progress.reset(token)


def current_progress() -> DownloadProgress:
    return _progress.get()


def _no_network_hint(url: str) -> str:
    return ("this machine may have no internet access: fetch the artifacts elsewhere "
            "(kdeploy artifacts fetch -o DIR), copy DIR here and set spec.artifacts.dir, or serve "
            "them from a mirror (spec.artifacts.mirror, docs/artifacts.md)")


class HttpFetcher:
    """urllib downloads that continue a partial file (HTTP Range) and report bytes."""

    def __call__(self, url: str, dest: Path, label: str | None = None) -> None:
        dest = Path(dest)
        have = dest.stat().st_size if dest.is_file() else 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        req = urllib.request.Request(url, headers=headers)
        prog = current_progress()
        key = str(dest)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                resumed = have > 0 and r.status == 206
                length = r.headers.get("Content-Length")
                total = int(length) + (have if resumed else 0) if length and length.isdigit() else None
                prog.start(key, label or url.rsplit("/", 1)[-1], total)
                if resumed:
                    prog.advance(key, have)
                with open(dest, "ab" if resumed else "wb") as f:
                    while chunk := r.read(CHUNK):
                        f.write(chunk)
                        prog.advance(key, len(chunk))
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # our partial file is not a prefix of theirs: start again
                dest.unlink(missing_ok=True)
                return self(url, dest, label)
            raise ArtifactError(f"download of {url} failed: HTTP {e.code} {e.reason}",
                                "check the version exists there, or use an offline directory "
                                "(spec.artifacts.dir) or a mirror (spec.artifacts.mirror)") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ArtifactError(f"download of {url} failed: {reason} (a rerun continues the "
                                "partial file)", _no_network_hint(url)) from None
        finally:
            prog.done(key)


def fetch_text(fetcher: Fetcher, url: str, scratch: Path) -> str:
    """A small text file (a checksum file) through `fetcher`, via a scratch file."""
    scratch.unlink(missing_ok=True)
    try:
        fetcher(url, scratch)
        return scratch.read_text(errors="replace")
    finally:
        scratch.unlink(missing_ok=True)


def run_parallel(jobs: Iterable[Callable[[], T]], workers: int = WORKERS) -> list[T]:
    """Run jobs on up to `workers` threads; results in job order. Every job runs to its end
    (no half-written cache entry is abandoned); then the first error, in job order, is raised."""
    jobs = list(jobs)
    ctx = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1))) as pool:
        futs = [pool.submit(ctx.copy().run, j) for j in jobs]
        errors = [f.exception() for f in futs]
    for e in errors:
        if e is not None:
            raise e
    return [f.result() for f in futs]
