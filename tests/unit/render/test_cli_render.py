"""kdeploy render -i INV -o DIR."""
from __future__ import annotations

import shutil
import stat
import socket

import pytest
from typer.testing import CliRunner

from kdeploy.cli import app

from .conftest import SAMPLES


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("kdeploy render opened a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_render_writes_every_host(tmp_path, no_network):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["render", "-i", str(inv), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "cp1" in r.output and "3 hosts" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["cp1", "worker1", "worker2"]
    cp1 = out / "cp1"
    assert (cp1 / "etc/systemd/system/kube-apiserver.service").is_file()
    assert (cp1 / "etc/kubernetes/addons/10-coredns.yaml").is_file()
    assert not (out / "worker1/etc/kubernetes/addons").exists()
    assert not (out / "worker1/etc/systemd/system/etcd.service").exists()
    assert (out / "worker1/etc/hosts").read_text().startswith("# BEGIN kdeploy (managed by kdeploy)\n")
    key = cp1 / "etc/kubernetes/pki/apiserver.key"
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (out / "worker1/var/lib/kubelet/pki/kubelet.crt").is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_render_no_pki(tmp_path):
    inv = tmp_path / "single.yaml"
    shutil.copy(SAMPLES / "single-node.yaml", inv)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["render", "-i", str(inv), "-o", str(out), "--no-pki"])
    assert r.exit_code == 0, r.output
    assert "without PKI" in r.output
    assert not (out / "node1/etc/kubernetes/pki").exists()
    assert not (tmp_path / ".kdeploy").exists()
    assert (out / "node1/var/lib/kubelet/config.yaml").is_file()


def test_render_names_the_images_of_the_inventorys_artifact_dir(tmp_path, no_network):
    """spec.artifacts.dir: its manifest's refs (read, not verified; no network)."""
    import json
    from kdeploy.artifacts.catalog import build_versions_for, built_image_refs
    from kdeploy.model import load_inventory
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    version = load_inventory(inv)[0].version
    (tmp_path / "set" / "images").mkdir(parents=True)
    refs = built_image_refs(build_versions_for(version))
    (tmp_path / "set" / "manifest.json").write_text(json.dumps({
        "kubernetesVersion": version, "images": refs,
        "files": {rel: {"sha256": "0" * 64, "size": 1} for rel in refs}}))
    inv.write_text(inv.read_text().replace("spec:\n", "spec:\n  artifacts:\n    dir: set\n", 1))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["render", "-i", str(inv), "-o", str(out), "--no-pki"])
    assert r.exit_code == 0, r.output
    assert refs["images/pause.tar"] in (out / "worker1/etc/containerd/config.toml").read_text()
    assert refs["images/coredns.tar"] in (out / "cp1/etc/kubernetes/addons/10-coredns.yaml").read_text()
    assert '"kdeploy.invalid/*"' in (out / "worker1/var/lib/kubelet/config.yaml").read_text()
