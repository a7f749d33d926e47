"""Fakes for the artifact tests: an upstream of fake release files and a counting fetcher."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from kdeploy.artifacts import catalog
from kdeploy.artifacts._checksums import CHECKSUMS
from kdeploy.artifacts.update import release_key
from kdeploy.errors import ArtifactError


def _tar(members: dict[str, bytes], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o755
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    """An `ar` archive (the container of a .deb) in the common (GNU/BSD) format."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        hdr = (f"{name + '/':<16}" f"{0:<12}" f"{0:<6}" f"{0:<6}" f"{'100644':<8}" f"{len(data):<10}")
        out += hdr.encode() + b"`\n" + data
        if len(data) % 2:
            out += b"\n"
    return bytes(out)


def make_deb(files: dict[str, bytes], compression: str = "xz", modes: dict[str, int] | None = None,
             extra: dict[str, tarfile.TarInfo] | None = None) -> bytes:
    """A tiny Debian binary package: debian-binary, control.tar.xz, data.tar.<compression>.
    files are paths without a leading ./ (they are stored as ./path like dpkg-deb does)."""
    def tar(entries: dict[str, bytes], comp: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=f"w:{comp}" if comp else "w") as tf:
            dirs = sorted({"/".join(p.split("/")[:i]) for p in entries for i in range(1, p.count("/") + 1)})
            for d in dirs:
                ti = tarfile.TarInfo(f"./{d}")
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            for name, data in entries.items():
                ti = tarfile.TarInfo(f"./{name}")
                ti.size, ti.mode = len(data), (modes or {}).get(name, 0o755)
                tf.addfile(ti, io.BytesIO(data))
            for ti in (extra or {}).values():
                tf.addfile(ti)
        return buf.getvalue()
    control = tar({"control": b"Package: fake\nVersion: 1\nArchitecture: amd64\n"}, "xz")
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": control,
                f"data.tar.{compression}" if compression else "data.tar": tar(files, compression)})


def fake_content(rel: str, version: str) -> bytes:
    return f"#!fake {rel} {version}\n".encode() * 50


class FakeUpstream:
    """url -> bytes for every official download of one version/arch, plus checksum files."""

    def __init__(self, kubernetes_version: str = "1.37.2", arch: str = "amd64"):
        self.v = catalog.versions_for(kubernetes_version)
        self.arch = arch
        self.files: dict[str, bytes] = {}
        self.sums: dict[str, str] = {}        # release key -> sha256
        self.expected: dict[str, bytes] = {}  # layout relpath -> content
        for r in catalog.releases(self.v, arch):
            if all(m == "" for m in r.members.values()):
                (rel,) = r.members
                data = fake_content(rel, r.version)
                self.expected[rel] = data
            else:
                members = {}
                for rel, member in r.members.items():
                    members[member] = fake_content(rel, r.version)
                    self.expected[rel] = members[member]
                members["README.md" if not r.asset.endswith(".deb") else "usr/share/doc/x"] = \
                    b"not extracted"
                data = make_deb(members) if r.asset.endswith(".deb") else _tar(members)
            self.files[r.url] = data
            sha = hashlib.sha256(data).hexdigest()
            self.sums[release_key(r)] = sha
            if r.sha256_url:  # Debian publishes none (the sum is pinned by hand)
                self.files[r.sha256_url] = (self.files.get(r.sha256_url, b"")
                                            + f"{sha}  {r.asset}\n".encode())
        self.calls: list[str] = []

    def __call__(self, url: str, dest: Path) -> None:
        self.calls.append(url)
        if url not in self.files:
            raise ArtifactError(f"download of {url} failed: HTTP 404 Not Found", "fake")
        Path(dest).write_bytes(self.files[url])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def upstream(monkeypatch):
    up = FakeUpstream()
    for k, sha in up.sums.items():
        monkeypatch.setitem(CHECKSUMS, k, sha)
    return up
