import hashlib
import json
import os
import shutil

import pytest

from kdeploy.artifacts import ArtifactFile, catalog, fetch_to_dir, resolve
from kdeploy.artifacts._checksums import CHECKSUMS
from kdeploy.artifacts.fetch import downloads_dir, fetch_mirror_layout
from kdeploy.artifacts.lock import ChecksumLock
from kdeploy.artifacts.layout import write_manifest
from kdeploy.errors import ArtifactError, ChecksumMismatch


def test_resolve_official_downloads_verifies_and_extracts(upstream):
    files = resolve("1.37.2", "amd64", fetcher=upstream)
    by = {f.name: f for f in files}
    assert set(by) == {s.name for s in catalog.file_specs(images=False)}
    api = by["kube-apiserver"]
    assert isinstance(api, ArtifactFile)
    assert api.component == "kubernetes" and api.version == "1.37.2"
    assert api.install_path == "/usr/local/bin/kube-apiserver" and api.mode == 0o755
    assert api.roles == frozenset({"control-plane"})
    for rel, data in upstream.expected.items():
        f = next(f for f in files if f.local_path.as_posix().endswith("/" + rel))
        assert f.local_path.read_bytes() == data
        assert f.sha256 == hashlib.sha256(data).hexdigest()
    assert by["etcd"].version == "3.7.0" and by["bridge"].component == "cni-plugins"


def test_cache_hit_downloads_nothing_twice(upstream):
    resolve("1.37.2", fetcher=upstream)
    n = len(upstream.calls)
    assert n == len(catalog.releases(catalog.versions_for("1.37.2"), "amd64"))
    resolve("1.37.2", fetcher=upstream)
    assert len(upstream.calls) == n


def _release(asset):
    return next(r for r in catalog.releases(catalog.versions_for("1.37.2"), "amd64") if r.asset == asset)


def test_corrupted_download_is_rejected_and_not_kept(upstream):
    r = _release("kube-apiserver")
    good = upstream.files[r.url]
    upstream.files[r.url] = good[:-1] + b"X"
    with pytest.raises(ChecksumMismatch) as e:
        resolve("1.37.2", fetcher=upstream)
    want = upstream.sums["kubernetes/1.37.2/amd64/kube-apiserver"]
    assert r.url in str(e.value) and want in str(e.value)
    assert "nothing was installed" in e.value.hint
    assert not list(downloads_dir().glob(want + "*[!k]"))  # neither the file nor a .part (only its .lock)
    upstream.files[r.url] = good
    assert resolve("1.37.2", fetcher=upstream)  # a good download afterwards works


def test_corrupted_cache_file_is_downloaded_again(upstream, tmp_path):
    files = resolve("1.37.2", fetcher=upstream)
    n = len(upstream.calls)
    cached = downloads_dir() / upstream.sums["runc/1.4.3/amd64/runc.amd64"]
    cached.write_bytes(b"tampered")
    again = {f.name: f for f in resolve("1.37.2", fetcher=upstream)}
    assert len(upstream.calls) == n + 1 and upstream.calls[-1].endswith("runc.amd64")
    assert again["runc"].sha256 == {f.name: f for f in files}["runc"].sha256


def test_unpinned_sum_is_read_from_upstream_and_locked(upstream, monkeypatch, tmp_path):
    monkeypatch.setitem(CHECKSUMS, "runc/1.4.3/amd64/runc.amd64", None)
    lock_path = tmp_path / "state" / "artifacts.lock.json"
    by = {f.name: f for f in resolve("1.37.2", fetcher=upstream, lock=ChecksumLock(lock_path))}
    r = _release("runc.amd64")
    assert r.sha256_url in upstream.calls
    doc = json.loads(lock_path.read_text())
    ent = doc["files"]["runc/1.4.3/amd64/runc.amd64"]
    assert ent["sha256"] == upstream.sums["runc/1.4.3/amd64/runc.amd64"] == by["runc"].sha256
    assert ent["source"] == r.sha256_url
    assert doc["files"]["kubernetes/1.37.2/amd64/kubelet"]["source"] == "pinned"
    # later runs (a fresh cache: another deployer) take the locked value, not upstream's file
    shutil.rmtree(downloads_dir())
    upstream.calls.clear()
    resolve("1.37.2", fetcher=upstream, lock=ChecksumLock(lock_path))
    assert r.sha256_url not in upstream.calls and r.url in upstream.calls


def test_file_changed_upstream_after_locking_is_refused(upstream, monkeypatch, tmp_path):
    monkeypatch.setitem(CHECKSUMS, "runc/1.4.3/amd64/runc.amd64", None)
    lock_path = tmp_path / "artifacts.lock.json"
    resolve("1.37.2", fetcher=upstream, lock=ChecksumLock(lock_path))
    r = _release("runc.amd64")
    evil = b"#!evil\n" * 40
    upstream.files[r.url] = evil
    upstream.files[r.sha256_url] = f"{hashlib.sha256(evil).hexdigest()}  runc.amd64\n".encode()
    shutil.rmtree(downloads_dir())
    with pytest.raises(ChecksumMismatch) as e:
        resolve("1.37.2", fetcher=upstream, lock=ChecksumLock(lock_path))
    assert upstream.sums["runc/1.4.3/amd64/runc.amd64"] in e.value.message
    assert "artifacts.lock.json" in e.value.hint
    assert json.loads(lock_path.read_text())["files"]["runc/1.4.3/amd64/runc.amd64"]["sha256"] \
        == upstream.sums["runc/1.4.3/amd64/runc.amd64"]  # never re-locked


def test_lock_disagreeing_with_a_pinned_sum_is_an_error(upstream, tmp_path):
    lock = ChecksumLock(tmp_path / "l.json")
    lock.record("kubernetes/1.37.2/amd64/kubelet", "ab" * 32, "https://x")
    with pytest.raises(ArtifactError, match="kdeploy pins"):
        resolve("1.37.2", fetcher=upstream, lock=lock)
    assert upstream.calls == []


def test_no_published_sum_anywhere_refuses_before_downloading(upstream, monkeypatch):
    monkeypatch.setitem(CHECKSUMS, "runc/1.4.3/amd64/runc.amd64", None)
    r = _release("runc.amd64")
    del upstream.files[r.sha256_url]
    with pytest.raises(ArtifactError, match="HTTP 404"):
        resolve("1.37.2", fetcher=upstream)
    assert r.url not in upstream.calls and not any(u.endswith("kubelet") for u in upstream.calls)


def test_fetch_to_dir_writes_offline_layout_then_resolve_offline(upstream, tmp_path):
    out = tmp_path / "offline"
    doc = fetch_to_dir(out, "1.37.2", "amd64", fetcher=upstream)
    assert doc["kubernetesVersion"] == "1.37.2" and doc["arch"] == "amd64"
    assert (out / "bin" / "kube-apiserver").is_file() and (out / "cni" / "bridge").is_file()
    assert os.stat(out / "bin" / "kubelet").st_mode & 0o111
    files = resolve("1.37.2", offline_dir=out)
    assert {f.local_path.parent.name for f in files} == {"bin", "cni", "lib"}
    assert all(str(f.local_path).startswith(str(out)) for f in files)


def _offline_dir(tmp_path, with_images=True):
    d = tmp_path / "off"
    for s in catalog.file_specs(images=with_images):
        p = d / s.relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s.name.encode() * 10)
    write_manifest(d, kubernetes_version="1.37.2", arch="amd64", source="test")
    return d


def test_offline_dir_includes_images(tmp_path):
    d = _offline_dir(tmp_path)
    by = {f.name: f for f in resolve("1.37.2", offline_dir=d)}
    assert by["pause-image"].install_path == "/var/lib/kdeploy/images/pause.tar"
    assert by["pause-image"].mode == 0o644 and by["pause-image"].version == "3.10.2"
    assert by["coredns-image"].version == "v1.14.6"


def test_offline_dir_corrupted_file_not_returned(tmp_path):
    d = _offline_dir(tmp_path)
    (d / "bin" / "kubelet").write_bytes(b"KUBELET" * 10)  # same size, other content
    with pytest.raises(ChecksumMismatch, match="bin/kubelet"):
        resolve("1.37.2", offline_dir=d)


def test_offline_dir_incomplete(tmp_path):
    d = _offline_dir(tmp_path)
    (d / "bin" / "kubelet").unlink()
    write_manifest(d, kubernetes_version="1.37.2", arch="amd64", source="test")
    with pytest.raises(ArtifactError, match="does not list bin/kubelet"):
        resolve("1.37.2", offline_dir=d)


def test_offline_dir_wrong_version(tmp_path):
    d = _offline_dir(tmp_path)
    with pytest.raises(ArtifactError, match="not 1.36.3"):
        resolve("1.36.3", offline_dir=d)


def _serve_dir(root, base):
    calls = []

    def fetcher(url, dest):
        calls.append(url)
        p = root / url.removeprefix(base.rstrip("/") + "/")
        if not url.startswith(base) or not p.is_file():
            raise ArtifactError(f"download of {url} failed: HTTP 404 Not Found", "fake")
        dest.write_bytes(p.read_bytes())
    fetcher.calls = calls
    return fetcher


def test_mirror_of_the_official_layout_filled_by_fetch(upstream, monkeypatch, tmp_path):
    monkeypatch.setitem(CHECKSUMS, "etcd/3.7.0/amd64/etcd-v3.7.0-linux-amd64.tar.gz", None)
    written = fetch_mirror_layout(tmp_path / "www", "1.37.2", "amd64", fetcher=upstream)
    assert "dl.k8s.io/release/v1.37.2/bin/linux/amd64/kubelet" in written
    assert "dl.k8s.io/release/v1.37.2/bin/linux/amd64/kubelet.sha256" in written
    assert "github.com/etcd-io/etcd/releases/download/v3.7.0/SHA256SUMS" in written
    shutil.rmtree(downloads_dir())
    serve = _serve_dir(tmp_path / "www", "http://mirror.lab:8080/files")
    lock_path = tmp_path / "lock.json"
    files = resolve("1.37.2", mirror="http://mirror.lab:8080/files/", fetcher=serve,
                    lock=ChecksumLock(lock_path))
    assert len(files) == len(catalog.file_specs(images=False))
    assert "http://mirror.lab:8080/files/dl.k8s.io/release/v1.37.2/bin/linux/amd64/kubelet" in serve.calls
    ent = json.loads(lock_path.read_text())["files"]["etcd/3.7.0/amd64/etcd-v3.7.0-linux-amd64.tar.gz"]
    assert ent["source"] == ("http://mirror.lab:8080/files/github.com/etcd-io/etcd/releases/"
                             "download/v3.7.0/SHA256SUMS")
    n = len(serve.calls)
    resolve("1.37.2", mirror="http://mirror.lab:8080/files", fetcher=serve, lock=ChecksumLock(lock_path))
    assert len(serve.calls) == n  # sums locked, files cached by content


def test_mirror_corrupt_file(upstream, tmp_path):
    fetch_mirror_layout(tmp_path / "www", "1.37.2", "amd64", fetcher=upstream)
    shutil.rmtree(downloads_dir())
    r = _release("etcd-v3.7.0-linux-amd64.tar.gz")
    p = tmp_path / "www" / r.url.split("://")[1]
    p.write_bytes(b"x" * p.stat().st_size)
    with pytest.raises(ChecksumMismatch, match="https://m/github.com/etcd-io/etcd/.*etcd-v3.7.0"):
        resolve("1.37.2", mirror="https://m", fetcher=_serve_dir(tmp_path / "www", "https://m"))


def test_mirror_must_be_a_url():
    with pytest.raises(ArtifactError, match="not an http"):
        resolve("1.37.2", mirror="mirror.lab/files")


def test_unsupported_version_and_arch():
    with pytest.raises(ArtifactError.__mro__[1], match="not supported"):
        resolve("1.30.1")
    with pytest.raises(ArtifactError.__mro__[1], match="architecture"):
        resolve("1.37.2", "s390x")


# ---------------------------------------------------------------------------- .deb archives

from kdeploy.artifacts import fetch as fetch_mod  # noqa: E402
from kdeploy.artifacts.catalog import Release  # noqa: E402
from kdeploy.artifacts.layout import VerifyCache  # noqa: E402

from .conftest import _ar, make_deb  # noqa: E402

NGINX = b"\x7fELF fake nginx" * 30
MOD = b"\x7fELF fake module" * 7  # odd size: the ar member gets a padding byte


def _deb_release(members):
    return Release("api-lb", "1", "amd64", "https://example.invalid/x.deb", "", "x.deb", members)


def _extract_deb(tmp_path, data: bytes, members: dict[str, str]):
    p = tmp_path / "dl" / "x.deb"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return fetch_mod._extract(_deb_release(members), p, VerifyCache(tmp_path / "v.json"))


@pytest.mark.parametrize("compression", ["xz", "gz", ""])
def test_deb_members_extracted_with_python_only(tmp_path, compression):
    deb = make_deb({"usr/sbin/nginx": NGINX, "usr/lib/nginx/modules/ngx_stream_module.so": MOD,
                    "usr/share/doc/nginx/copyright": b"c"}, compression=compression)
    out = _extract_deb(tmp_path, deb, {"bin/nginx": "usr/sbin/nginx",
                                       "lib/ngx_stream_module.so": "./usr/lib/nginx/modules/ngx_stream_module.so"})
    assert out["bin/nginx"].read_bytes() == NGINX
    assert out["lib/ngx_stream_module.so"].read_bytes() == MOD
    assert sorted(p.name for p in out["bin/nginx"].parent.parent.rglob("*") if p.is_file()) == \
        [".extracted.json", "nginx", "ngx_stream_module.so"]  # nothing else extracted


def test_deb_member_must_be_a_regular_file(tmp_path):
    import tarfile
    link = tarfile.TarInfo("./usr/sbin/nginx")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    deb = make_deb({"usr/lib/x.so": MOD}, extra={"l": link})
    with pytest.raises(ArtifactError, match="has no file usr/sbin/nginx"):
        _extract_deb(tmp_path, deb, {"bin/nginx": "usr/sbin/nginx"})
    deb = make_deb({"usr/lib/x.so": MOD})
    with pytest.raises(ArtifactError, match="has no file usr/sbin/nginx"):
        _extract_deb(tmp_path, deb, {"bin/nginx": "usr/sbin/nginx"})


@pytest.mark.parametrize("mangle,msg", [
    (lambda d: d[:-5], "runs past the end"),                       # truncated member
    (lambda d: d[:8] + b"X" * 60 + d[68:], "bad member header"),    # broken header
    (lambda d: b"!<arch>\n" + b"debian-binary/".ljust(48) + b"12x".ljust(10) + b"`\n", "bad size"),
])
def test_malformed_ar_is_refused(tmp_path, mangle, msg):
    deb = make_deb({"usr/sbin/nginx": NGINX})
    with pytest.raises(ArtifactError, match=msg):
        _extract_deb(tmp_path, mangle(deb), {"bin/nginx": "usr/sbin/nginx"})


def test_deb_without_data_tar_or_debian_binary_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="0 data.tar members"):
        _extract_deb(tmp_path, _ar({"debian-binary": b"2.0\n", "control.tar.xz": b""}),
                     {"bin/nginx": "usr/sbin/nginx"})
    with pytest.raises(ArtifactError, match="not a Debian binary package"):
        _extract_deb(tmp_path, _ar({"data.tar": b""}), {"bin/nginx": "usr/sbin/nginx"})


def test_deb_with_corrupt_data_tar_is_an_artifact_error(tmp_path):
    deb = _ar({"debian-binary": b"2.0\n", "data.tar.xz": b"\xfd7zXZ\x00garbage" * 20})
    with pytest.raises(ArtifactError, match="cannot read"):
        _extract_deb(tmp_path, deb, {"bin/nginx": "usr/sbin/nginx"})


def test_deb_zstd_data_tar(tmp_path):
    import io
    import tarfile
    try:
        import zstandard
    except ImportError:
        zstandard = None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("./usr/sbin/nginx")
        ti.size = len(NGINX)
        tf.addfile(ti, io.BytesIO(NGINX))
    raw = buf.getvalue()
    packed = zstandard.ZstdCompressor().compress(raw) if zstandard else b"(\xb5/\xfd" + raw
    deb = _ar({"debian-binary": b"2.0\n", "data.tar.zst": packed})
    try:
        from compression import zstd  # noqa: F401
        have = True
    except ImportError:
        have = zstandard is not None
    if have and zstandard:
        assert _extract_deb(tmp_path, deb, {"bin/nginx": "usr/sbin/nginx"})["bin/nginx"].read_bytes() == NGINX
    elif not have:
        with pytest.raises(ArtifactError, match="zstd"):
            _extract_deb(tmp_path, deb, {"bin/nginx": "usr/sbin/nginx"})


def test_official_api_lb_debs_resolve_to_nginx_and_module(upstream):
    by = {f.name: f for f in resolve("1.37.2", "amd64", fetcher=upstream)}
    ng, mod = by["nginx"], by["ngx_stream_module"]
    assert ng.component == mod.component == "api-lb" and ng.version == "1.22.1-9+deb12u11"
    assert ng.install_path == catalog.NGINX_BIN and ng.mode == 0o755
    assert mod.install_path == catalog.NGINX_STREAM_MODULE and mod.mode == 0o644
    assert ng.roles == mod.roles == catalog.ALL_ROLES
    assert ng.local_path.read_bytes() == upstream.expected["bin/nginx"]
    assert any(u.endswith("/nginx_1.22.1-9+deb12u11_amd64.deb") for u in upstream.calls)


def test_fetch_to_dir_writes_lib_with_module_mode(upstream, tmp_path):
    out = tmp_path / "offline"
    doc = fetch_to_dir(out, "1.37.2", "amd64", fetcher=upstream)
    assert "lib/ngx_stream_module.so" in doc["files"] and "bin/etcdutl" in doc["files"]
    assert os.stat(out / "lib" / "ngx_stream_module.so").st_mode & 0o777 == 0o644
    assert os.stat(out / "bin" / "nginx").st_mode & 0o777 == 0o755


def test_unknown_deb_sum_hints_pinning_by_hand(upstream, monkeypatch):
    key = "api-lb/1.22.1-9+deb12u11/amd64/nginx_1.22.1-9+deb12u11_amd64.deb"
    monkeypatch.setitem(CHECKSUMS, key, None)
    with pytest.raises(ArtifactError) as e:
        resolve("1.37.2", fetcher=upstream)
    assert "nginx_1.22.1-9+deb12u11_amd64.deb" in e.value.message
    assert "apt-get download" in e.value.hint and "update-checksums" not in e.value.hint
    assert upstream.calls == []


def test_fetch_mirror_layout_keeps_other_arches_sums(upstream, tmp_path):
    p = tmp_path / "www" / "github.com/opencontainers/runc/releases/download/v1.4.3/runc.sha256sum"
    p.parent.mkdir(parents=True)
    p.write_text("aa" * 32 + "  runc.arm64\n")
    fetch_mirror_layout(tmp_path / "www", "1.37.2", "amd64", fetcher=upstream)
    lines = p.read_text().splitlines()
    assert "aa" * 32 + "  runc.arm64" in lines
    assert f"{upstream.sums['runc/1.4.3/amd64/runc.amd64']}  runc.amd64" in lines


def test_images_dir_adds_image_archives_with_their_names(upstream, tmp_path):
    from kdeploy.artifacts.oci import ImageFile, ImageSpec, write_image_archive
    d = tmp_path / "images"
    d.mkdir()
    (tmp_path / "pause").write_bytes(b"\x7fELF pause")
    write_image_archive(ImageSpec("registry.example/own/pause:1", [ImageFile(tmp_path / "pause", "/pause")]),
                d / "pause.tar")
    by = {f.name: f for f in resolve("1.37.2", fetcher=upstream, images_dir=d)}
    assert by["pause-image"].ref == "registry.example/own/pause:1"
    assert by["pause-image"].install_path == "/var/lib/kdeploy/images/pause.tar"
    assert "coredns-image" not in by and "kubelet" in by
    (d / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match="notes.txt"):
        resolve("1.37.2", fetcher=upstream, images_dir=d)
    (d / "notes.txt").unlink()
    (d / "coredns.tar").write_bytes(b"not a tar")
    with pytest.raises(ArtifactError, match="coredns.tar: not a readable image archive"):
        resolve("1.37.2", fetcher=upstream, images_dir=d)


def test_fetch_to_dir_adds_kube_bench_release_only_when_asked(upstream, tmp_path):
    from kdeploy.cis import kube_bench_from
    from kdeploy.artifacts.update import release_key

    from .conftest import _tar
    r = catalog.kube_bench_release("amd64")
    assert r.url.endswith(f"/v{catalog.KUBE_BENCH_VERSION}/kube-bench_{catalog.KUBE_BENCH_VERSION}"
                          "_linux_amd64.tar.gz")
    members = {m: f"{m} content".encode() for m in r.members.values()}
    data = _tar({**members, "cfg/eks-1.7.0/node.yaml": b"not extracted"})
    upstream.files[r.url] = data
    upstream.files[r.sha256_url] = (f"{hashlib.sha256(b'x').hexdigest()}  other.tar.gz\n"
                                    f"{hashlib.sha256(data).hexdigest()}  {r.asset}\n").encode()
    plain = fetch_to_dir(tmp_path / "plain", "1.37.2", "amd64", fetcher=upstream)
    assert r.url not in upstream.calls and "kube_bench" not in plain["components"]
    lock = ChecksumLock(tmp_path / "lock.json")
    out = tmp_path / "with"
    doc = fetch_to_dir(out, "1.37.2", "amd64", fetcher=upstream, lock=lock, kube_bench=True)
    assert r.sha256_url in upstream.calls                       # no pinned sum: read, then locked
    assert json.loads((tmp_path / "lock.json").read_text())["files"][release_key(r)]["sha256"] == \
        hashlib.sha256(data).hexdigest()
    assert set(catalog.kube_bench_files()) <= set(doc["files"])
    assert not (out / "tools" / "kube-bench" / "cfg" / "eks-1.7.0").exists()
    assert os.stat(out / catalog.KUBE_BENCH_BIN).st_mode & 0o777 == 0o755
    assert os.stat(out / "tools/kube-bench/cfg/config.yaml").st_mode & 0o777 == 0o644
    assert doc["components"]["kube_bench"].startswith(catalog.KUBE_BENCH_VERSION)
    assert kube_bench_from(out)["cfg/config.yaml"].read_bytes() == b"cfg/config.yaml content"
    assert {f.name for f in resolve("1.37.2", offline_dir=out)} == \
        {f.name for f in resolve("1.37.2", offline_dir=tmp_path / "plain")}   # hosts: the same
    written = fetch_mirror_layout(tmp_path / "www", "1.37.2", "amd64", fetcher=upstream, lock=lock,
                                  kube_bench=True)
    assert r.url.split("://", 1)[1] in written and r.sha256_url.split("://", 1)[1] in written
