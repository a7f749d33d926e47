import json
import os

import pytest

from kdeploy.artifacts.layout import VerifyCache, verify_dir, write_manifest
from kdeploy.errors import ArtifactError, ChecksumMismatch


@pytest.fixture
def adir(tmp_path):
    d = tmp_path / "art"
    (d / "bin").mkdir(parents=True)
    (d / "cni").mkdir()
    (d / "bin" / "etcd").write_bytes(b"etcd binary" * 100)
    (d / "cni" / "bridge").write_bytes(b"bridge plugin")
    write_manifest(d, kubernetes_version="1.37.2", arch="amd64", source="test")
    return d


def test_valid_dir_passes_and_second_run_hashes_nothing(adir, tmp_path):
    c1 = VerifyCache(tmp_path / "v.json")
    doc = verify_dir(adir, kubernetes_version="1.37.2", arch="amd64", cache=c1)
    assert set(doc["files"]) == {"bin/etcd", "cni/bridge"} and c1.hashed == 2
    c2 = VerifyCache(tmp_path / "v.json")
    verify_dir(adir, cache=c2)
    assert c2.hashed == 0


def test_missing_manifest(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json is missing") as e:
        verify_dir(tmp_path / "d")
    assert "kdeploy artifacts fetch" in e.value.hint


def test_missing_dir(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_dir(tmp_path / "nope")


def test_missing_file(adir):
    (adir / "cni" / "bridge").unlink()
    with pytest.raises(ArtifactError, match=r"cni/bridge is listed in .* but missing"):
        verify_dir(adir)


def test_extra_file(adir):
    (adir / "bin" / "evil").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="does not list: bin/evil"):
        verify_dir(adir)


def test_wrong_size(adir):
    (adir / "bin" / "etcd").write_bytes(b"short")
    with pytest.raises(ArtifactError, match=r"bin/etcd has 5 bytes, .* says 1100"):
        verify_dir(adir)


def test_corrupted_same_size_is_checksum_mismatch_even_after_cached_ok(adir, tmp_path):
    cache = VerifyCache(tmp_path / "v.json")
    verify_dir(adir, cache=cache)
    p = adir / "bin" / "etcd"
    data = bytearray(p.read_bytes())
    data[0] ^= 0xFF
    st = p.stat()
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime
    want = json.loads((adir / "manifest.json").read_text())["files"]["bin/etcd"]["sha256"]
    with pytest.raises(ChecksumMismatch) as e:
        verify_dir(adir, cache=VerifyCache(tmp_path / "v.json"))
    msg = str(e.value)
    assert "bin/etcd" in msg and want in msg and e.value.actual in msg
    assert e.value.actual != want
    assert e.value.exit_code == 5


def test_wrong_version_or_arch(adir):
    with pytest.raises(ArtifactError, match="Kubernetes 1.37.2, not 1.36.3"):
        verify_dir(adir, kubernetes_version="1.36.3")
    with pytest.raises(ArtifactError, match="amd64 artifacts, the hosts need arm64"):
        verify_dir(adir, arch="arm64")


def test_required_files(adir):
    with pytest.raises(ArtifactError, match="does not list bin/kubelet"):
        verify_dir(adir, required=["bin/etcd", "bin/kubelet"])


@pytest.mark.parametrize("bad", ["{not json", '{"files": []}', '{"files": {"bin/etcd": {"sha256": "x"}}}',
                                 '{"files": {"../etc/passwd": {"sha256": "x", "size": 1}}}'])
def test_bad_manifest(adir, bad):
    (adir / "manifest.json").write_text(bad)
    with pytest.raises(ArtifactError):
        verify_dir(adir)
