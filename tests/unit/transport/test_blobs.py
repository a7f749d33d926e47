"""The deployer's cache of compressed upload blobs (kdeploy.transport.blobs)."""
import hashlib
import os
import time

import pytest

from kdeploy.errors import TransportError


@pytest.fixture
def blobs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from kdeploy.transport import blobs
    return blobs


def _file(tmp_path, name, size=2 << 20):
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    return p, hashlib.sha256(p.read_bytes()).hexdigest()


def test_blobs_unused_for_a_month_are_pruned_and_used_ones_kept(blobs, tmp_path):
    old, old_sha = _file(tmp_path, "old")
    used, used_sha = _file(tmp_path, "used")
    fresh, fresh_sha = _file(tmp_path, "fresh")
    paths = {n: blobs.blob(p, sha, fmt) for n, p, sha, fmt in
             (("old", old, old_sha, "gzip"), ("used", used, used_sha, "zstd"),
              ("fresh", fresh, fresh_sha, "zstd"))}
    month = time.time() - 31 * 86400
    for n in ("old", "used"):
        os.utime(paths[n], (month, month))
    assert blobs.blob(used, used_sha, "zstd") == paths["used"]   # used again: touched
    assert blobs.prune() == [paths["old"]]
    assert not paths["old"].exists() and paths["used"].exists() and paths["fresh"].exists()
    assert not (paths["old"].parent / f"{old_sha}.lock").exists()


def test_prewarm_keeps_the_blobs_of_the_files_it_is_given(blobs, tmp_path):
    used, used_sha = _file(tmp_path, "used")
    path = blobs.blob(used, used_sha, "zstd")
    month = time.time() - 31 * 86400
    os.utime(path, (month, month))
    blobs.prewarm([(used, used_sha)], fmt="zstd")   # touches it before its background prune
    assert path.stat().st_mtime > month + 86400
    assert path not in blobs.prune() and path.exists()


def test_a_file_that_grows_while_compressed_is_a_clear_error(blobs, tmp_path, monkeypatch):
    p, sha = _file(tmp_path, "kubelet")
    real = blobs._size
    monkeypatch.setattr(blobs, "_size", lambda q: real(q) - 1000)   # as if it grew after its size was read
    with pytest.raises(TransportError, match="cannot compress .*kubelet") as e:
        blobs.blob(p, sha, "zstd")
    assert "changed while kdeploy read it" in e.value.hint
    assert not list(blobs.blob_dir("zstd").glob("*.zst"))


def test_blobs_are_private(blobs, tmp_path):
    """An etcd snapshot goes through the cache on its way to the members (etcd restore)."""
    import stat
    p, sha = _file(tmp_path, "snapshot.db")
    b = blobs.blob(p, sha, "zstd")
    assert stat.S_IMODE(b.stat().st_mode) == 0o600 and stat.S_IMODE(b.parent.stat().st_mode) == 0o700
