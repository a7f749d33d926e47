"""The Go-module build takes its pins from the catalog (one source of truth)."""
import subprocess
import sys
from pathlib import Path

from kdeploy.artifacts import catalog

REPO = Path(__file__).resolve().parents[3]


def test_shell_pins_match_catalog():
    out = subprocess.run([sys.executable, "-m", "kdeploy.artifacts", "--shell", "1.37.2"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    pins = dict(line.split("=", 1) for line in out.split())
    v = catalog.versions_for("1.37.2")
    assert pins == {"ETCD": v.etcd, "CONTAINERD": v.containerd, "RUNC": v.runc, "CNI": v.cni_plugins,
                    "CRICTL": v.crictl, "COREDNS": v.coredns, "PAUSE": v.pause, "AGNHOST": v.agnhost,
                    "NGINX": v.nginx, "PAUSE_REF": "kdeploy.invalid/pause:3.10.2",
                    "COREDNS_REF": "kdeploy.invalid/coredns:v1.14.6",
                    "AGNHOST_REF": "kdeploy.invalid/agnhost:2.66.1"}


def test_build_names_its_images_its_own_and_the_stamp_follows_the_names():
    """The images built from source never carry upstream's names (their content differs);
    renaming them invalidates only the images stamp (the pin is the refs)."""
    text = (REPO / "tests" / "artifacts" / "build").read_text()
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
    script = REPO / "tests" / "artifacts" / "build"
    assert script.stat().st_mode & 0o111
    text = script.read_text()
    assert "kdeploy.artifacts --shell" in text
    assert "GOTOOLCHAIN" in text and "-trimpath" in text


def test_build_script_builds_etcdutl_and_api_lb():
    text = (REPO / "tests" / "artifacts" / "build").read_text()
    assert "require go.etcd.io/etcd/etcdutl/v3 $v" in text and "bin/etcdutl" in text
    assert "run_component api-lb" in text and 'nginx="$NGINX"' in text and "dpkg-deb -x" in text
    assert "libnginx-mod-stream=\"$NGINX\"" in text and "lib/ngx_stream_module.so" in text


def test_mkmanifest_check_requires_every_catalog_file(tmp_path):
    """A cached build from before a file joined the catalog (etcdutl, lib/) is not 'valid'."""
    mk = REPO / "tests" / "artifacts" / "mkmanifest.py"
    d = tmp_path / "set"
    for s in catalog.file_specs():
        p = d / s.relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s.name.encode())
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, str(mk), *a], capture_output=True, text=True,  # noqa: E731
                                    env=env)
    assert run("--write", str(d), "--k8s-version", "1.37.2").returncode == 0
    doc = __import__("json").loads((d / "manifest.json").read_text())
    assert doc["components"]["nginx"] == "1.22.1-9+deb12u11"
    assert "lib/ngx_stream_module.so" in doc["files"]
    assert run("--check", str(d)).returncode == 0
    (d / "bin" / "etcdutl").unlink()
    assert run("--write", str(d), "--k8s-version", "1.37.2").returncode == 0
    p = run("--check", str(d))
    assert p.returncode == 1 and "bin/etcdutl" in p.stderr


def test_mkmanifest_check_refuses_a_set_whose_images_have_other_names(tmp_path):
    """A cached set built when the images had upstream's names is stale: the build then
    rebuilds the images alone (their stamp's pin is the refs) and writes a new manifest."""
    from kdeploy.artifacts.layout import write_manifest
    for s in catalog.file_specs():
        p = tmp_path / s.relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s.relpath.encode())
    v = catalog.build_versions_for("1.37.2")
    script = REPO / "tests" / "artifacts" / "mkmanifest.py"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}

    def check():
        return subprocess.run([sys.executable, str(script), "--check", str(tmp_path)],
                              capture_output=True, text=True, env=env)
    old = {f"images/{f}": getattr(v, attr) for f, _, attr in catalog.IMAGES.values()}
    write_manifest(tmp_path, kubernetes_version="1.37.2", arch="amd64", source="t", images=old)
    p = check()
    assert p.returncode == 1 and "not the build's" in p.stderr
    write_manifest(tmp_path, kubernetes_version="1.37.2", arch="amd64", source="t",
                   images=catalog.built_image_refs(v))
    assert check().returncode == 0
