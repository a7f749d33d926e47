"""The Go-module build (kdeploy/artifacts/build, `kdeploy artifacts build`) takes its pins from
the catalog (one source of truth); the command checks what the build needs before running it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdeploy.artifacts import catalog
from kdeploy.artifacts import build as artifacts_build
from kdeploy.artifacts.build import COMPONENTS, SCRIPT
from kdeploy.errors import ArtifactError
from tests.conftest import fake_artifact_set

REPO = Path(__file__).resolve().parents[3]


def test_shell_pins_match_catalog():
    out = subprocess.run([sys.executable, "-m", "kdeploy.artifacts", "--shell", "1.37.2"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    pins = dict(line.split("=", 1) for line in out.splitlines())
    v = catalog.versions_for("1.37.2")
    assert pins == {"ETCD": v.etcd, "CONTAINERD": v.containerd, "RUNC": v.runc, "CNI": v.cni_plugins,
                    "CRICTL": v.crictl, "COREDNS": v.coredns, "PAUSE": v.pause, "AGNHOST": v.agnhost,
                    "NGINX": v.nginx, "KUBE_BENCH": catalog.KUBE_BENCH_VERSION,
                    "KUBE_BENCH_BENCHMARK": catalog.KUBE_BENCH_BENCHMARK,
                    "KUBE_BENCH_FILES": "'" + " ".join(catalog.kube_bench_files()) + "'",
                    "PAUSE_REF": "kdeploy.invalid/pause:3.10.2",
                    "COREDNS_REF": "kdeploy.invalid/coredns:v1.14.6",
                    "AGNHOST_REF": "kdeploy.invalid/agnhost:2.66.1"}


def test_build_names_its_images_its_own_and_the_stamp_follows_the_names():
    """The images built from source never carry upstream's names (their content differs);
    renaming them invalidates only the images stamp (the pin is the refs)."""
    text = SCRIPT.read_text()
    assert "registry.k8s.io" not in text
    for var in ("PAUSE_REF", "COREDNS_REF", "AGNHOST_REF"):
        assert f'--ref "${var}"' in text
    assert 'run_component images     build_images     "$PAUSE_REF $COREDNS_REF $AGNHOST_REF"' in text
    refs = catalog.built_image_refs(catalog.build_versions_for("1.36.3"))
    assert refs == {"images/pause.tar": "kdeploy.invalid/pause:3.10.2",
                    "images/coredns.tar": "kdeploy.invalid/coredns:v1.14.2",
                    "images/agnhost.tar": "kdeploy.invalid/agnhost:2.63.0"}


def test_shell_pins_reject_unsupported():
    p = subprocess.run([sys.executable, "-m", "kdeploy.artifacts", "--shell", "1.30.0"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "not supported" in p.stderr


def test_build_script_reads_catalog_and_is_executable():
    assert SCRIPT == REPO / "kdeploy" / "artifacts" / "build" / "build.sh"
    assert SCRIPT.stat().st_mode & 0o111
    text = SCRIPT.read_text()
    assert "kdeploy.artifacts --shell" in text
    assert "GOTOOLCHAIN" in text and "-trimpath" in text


def test_build_script_builds_etcdutl_and_api_lb():
    text = SCRIPT.read_text()
    assert "require go.etcd.io/etcd/etcdutl/v3 $v" in text and "bin/etcdutl" in text
    assert "run_component api-lb" in text and 'nginx="$NGINX"' in text and "dpkg-deb -x" in text
    assert "libnginx-mod-stream=\"$NGINX\"" in text and "lib/ngx_stream_module.so" in text


def test_build_script_builds_kube_bench_with_gosumdb_off_for_it_alone():
    text = SCRIPT.read_text()
    body = text.split("build_kube_bench() (", 1)[1].split("\n)\n", 1)[0]
    assert "export GOSUMDB=off" in body          # a subshell: the other components keep it on
    assert text.count("GOSUMDB") == body.count("GOSUMDB") + 1   # + the comment above it
    assert 'run_component kube-bench build_kube_bench "$KUBE_BENCH/$KUBE_BENCH_BENCHMARK" ' \
        "$KUBE_BENCH_FILES" in text


def test_mkmanifest_check_requires_every_catalog_file(tmp_path):
    """A cached build from before a file joined the catalog (etcdutl, lib/, kube-bench) is not
    'valid' (the build then builds just what is missing)."""
    d = fake_artifact_set(tmp_path / "set")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "c")}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "kdeploy.artifacts.build.mkmanifest", *a], capture_output=True,
        text=True, env=env, cwd=tmp_path)
    assert run("--write", str(d), "--k8s-version", "1.37.2").returncode == 0
    doc = json.loads((d / "manifest.json").read_text())
    assert doc["components"]["nginx"] == "1.22.1-9+deb12u11"
    assert "lib/ngx_stream_module.so" in doc["files"]
    assert run("--check", str(d)).returncode == 0
    (d / "bin" / "etcdutl").unlink()
    assert run("--write", str(d), "--k8s-version", "1.37.2").returncode == 0
    p = run("--check", str(d))
    assert p.returncode == 1 and "bin/etcdutl" in p.stderr
    fake_artifact_set(d)
    assert run("--write", str(d), "--k8s-version", "1.37.2").returncode == 0
    assert run("--check", str(d)).returncode == 0
    assert json.loads((d / "manifest.json").read_text())["components"]["kube_bench"] == \
        f"{catalog.KUBE_BENCH_VERSION}/{catalog.KUBE_BENCH_BENCHMARK}"
    for rel in catalog.kube_bench_files():     # a set built before kube-bench joined
        (d / rel).unlink()
    assert run("--write", str(d), "--k8s-version", "1.37.2").returncode == 0
    assert "kube_bench" not in json.loads((d / "manifest.json").read_text())["components"]
    p = run("--check", str(d))
    assert p.returncode == 1 and catalog.KUBE_BENCH_BIN in p.stderr


def test_components_are_the_scripts():
    text = SCRIPT.read_text()
    order = [line.split()[1] for line in text.splitlines() if line.startswith("run_component ")]
    assert tuple(order) == COMPONENTS


def test_only_rejects_unknown_component():
    with pytest.raises(ArtifactError, match="unknown component.*kubelet"):
        artifacts_build.check_components(["etcd", "kubelet"])


def test_preflight_without_go_says_what_to_install(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(artifacts_build.shutil, "which", lambda t: None if t == "go" else real(t))
    with pytest.raises(ArtifactError) as e:
        artifacts_build.preflight()
    assert "Go is not installed" in e.value.message and "go.dev/dl" in e.value.hint


def test_preflight_refuses_old_go(monkeypatch):
    monkeypatch.setattr(artifacts_build.shutil, "which", lambda t: f"/usr/bin/{t}")
    monkeypatch.setattr(artifacts_build, "_go_version", lambda go: (1, 19))
    monkeypatch.delenv("GOTOOLCHAIN", raising=False)
    with pytest.raises(ArtifactError, match="Go 1.19; the build needs 1.26"):
        artifacts_build.preflight()


def test_run_build_passes_options_and_this_python(monkeypatch):
    seen = {}

    def fake_run(argv, env):
        seen.update(argv=argv, env=env)
        return subprocess.CompletedProcess(argv, 0)
    monkeypatch.setattr(artifacts_build.subprocess, "run", fake_run)
    assert artifacts_build.run_build("1.36.3", arch="amd64", output=Path("/o"),
                                     only=["etcd", "api-lb"], force=True) == 0
    assert seen["argv"] == ["bash", str(SCRIPT), "--k8s-version", "1.36.3", "--arch", "amd64",
                            "-o", "/o", "--only", "etcd,api-lb", "--force"]
    assert seen["env"]["PYTHON"] == sys.executable


@pytest.mark.skipif(shutil.which("go") is None or shutil.which("flock") is None,
                    reason="needs go and flock on PATH")
def test_cached_set_is_reused_and_copied(tmp_path):
    """`kdeploy artifacts build` finds a valid set in the cache and builds nothing (the check
    that keeps CI's cached builds in seconds); -o copies it without the stamps."""
    arch = subprocess.run(["go", "env", "GOARCH"], capture_output=True, text=True).stdout.strip()
    cache = tmp_path / "cache"
    dest = fake_artifact_set(cache / "kdeploy" / "artifacts-build" / f"1.37.2-{arch}")
    (dest / ".stamps").mkdir()
    # should the check fail, the build stops at its first module download instead of compiling
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO),
           "GOPROXY": "off", "GOMODCACHE": str(tmp_path / "gomod")}
    mk = [sys.executable, "-m", "kdeploy.artifacts.build.mkmanifest"]
    subprocess.run([*mk, "--write", str(dest), "--k8s-version", "1.37.2", "--arch", arch],
                   check=True, env=env, capture_output=True)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "kdeploy", "artifacts", "build", "--k8s-version",
                        "1.37.2", "-o", str(out)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"cached and valid: {dest}" in p.stdout and "building" not in p.stdout
    assert (out / "manifest.json").is_file() and (out / "bin" / "kubelet").read_bytes() == b"kubelet"
    assert not (out / ".stamps").exists()


def test_mkmanifest_check_refuses_a_set_whose_images_have_other_names(tmp_path):
    """A cached set built when the images had upstream's names is stale: the build then
    rebuilds the images alone (their stamp's pin is the refs) and writes a new manifest."""
    from kdeploy.artifacts.layout import write_manifest
    fake_artifact_set(tmp_path)
    v = catalog.build_versions_for("1.37.2")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}

    def check():
        return subprocess.run([sys.executable, "-m", "kdeploy.artifacts.build.mkmanifest", "--check",
                               str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO)
    old = {f"images/{f}": getattr(v, attr) for f, _, attr in catalog.IMAGES.values()}
    write_manifest(tmp_path, kubernetes_version="1.37.2", arch="amd64", source="t", images=old)
    p = check()
    assert p.returncode == 1 and "not the build's" in p.stderr
    write_manifest(tmp_path, kubernetes_version="1.37.2", arch="amd64", source="t",
                   images=catalog.built_image_refs(v))
    assert check().returncode == 0, check().stderr


def test_a_component_at_the_same_pin_is_copied_from_the_other_version_s_set(tmp_path):
    """kube-bench, runc, CNI... often have the same pin for both Kubernetes versions: the second
    set copies the first's verified outputs instead of compiling again (a cold CI builds two sets)."""
    import hashlib
    arch = subprocess.run(["go", "env", "GOARCH"], capture_output=True, text=True).stdout.strip()
    cache = tmp_path / "cache"
    sib = cache / "kdeploy" / "artifacts-build" / f"1.36.3-{arch}"
    (sib / "bin").mkdir(parents=True)
    (sib / ".stamps").mkdir()
    (sib / "bin" / "runc").write_bytes(b"runc 1.4.3")
    sha = hashlib.sha256(b"runc 1.4.3").hexdigest()
    pin = catalog.versions_for("1.37.2").runc
    assert pin == catalog.versions_for("1.36.3").runc
    (sib / ".stamps" / "runc").write_text(f"{pin}\n{sha}  bin/runc\n")
    # a compile would need the module proxy, which is off: only a copy can succeed
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO),
           "GOPROXY": "off", "GOMODCACHE": str(tmp_path / "gomod")}
    p = subprocess.run(["bash", str(SCRIPT), "--k8s-version", "1.37.2", "--only", "runc"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    dest = cache / "kdeploy" / "artifacts-build" / f"1.37.2-{arch}"
    assert "copied from" in p.stdout and (dest / "bin" / "runc").read_bytes() == b"runc 1.4.3"
    assert (dest / ".stamps" / "runc").read_text() == f"{pin}\n{sha}  bin/runc\n"
    # a sibling whose output no longer matches its stamp is not copied
    (sib / "bin" / "runc").write_bytes(b"tampered")
    (dest / ".stamps" / "runc").unlink()
    p = subprocess.run(["bash", str(SCRIPT), "--k8s-version", "1.37.2", "--only", "runc"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0 and "copied from" not in p.stdout
