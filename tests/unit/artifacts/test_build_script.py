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
                    "CRICTL": v.crictl, "COREDNS": v.coredns, "PAUSE": v.pause, "AGNHOST": v.agnhost}


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
