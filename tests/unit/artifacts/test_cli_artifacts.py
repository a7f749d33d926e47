import json

from typer.testing import CliRunner

from kdeploy.artifacts import catalog
from kdeploy.artifacts.layout import write_manifest
from kdeploy.cli import app

runner = CliRunner()


def test_list_json():
    r = runner.invoke(app, ["artifacts", "list", "--k8s-version", "1.36", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kubernetesVersion"] == "1.36.3"
    assert doc["versions"]["etcd"] == "3.6.14"
    api = next(f for f in doc["files"] if f["name"] == "kube-apiserver")
    assert api["url"] == "https://dl.k8s.io/release/v1.36.3/bin/linux/amd64/kube-apiserver"
    assert api["sha256"] is None


def test_list_human_says_unpinned_sums_are_locked_at_first_download():
    r = runner.invoke(app, ["artifacts", "list", "--k8s-version", "1.37.2", "--arch", "arm64"])
    assert r.exit_code == 0
    assert "registry.k8s.io/pause:3.10.2" in r.output and "read from upstream at first download, then locked" in r.output
    assert "/opt/cni/bin/bridge" in r.output


def test_verify_ok_and_corrupt(tmp_path):
    d = tmp_path / "d"
    for s in catalog.file_specs(images=False):
        p = d / s.relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(s.name.encode())
    write_manifest(d, kubernetes_version="1.37.2", arch="amd64", source="test")
    r = runner.invoke(app, ["artifacts", "verify", str(d)])
    assert r.exit_code == 0 and "ok:" in r.output
    (d / "bin" / "etcd").write_bytes(b"ETCD")
    r = runner.invoke(app, ["artifacts", "verify", str(d)])
    assert r.exit_code != 0
    assert "checksum mismatch" in str(r.exception) and "bin/etcd" in str(r.exception)


def test_main_prints_error_and_hint_without_traceback(tmp_path, capsys, monkeypatch):
    import sys

    import pytest

    from kdeploy.cli import main
    monkeypatch.setattr(sys, "argv", ["kdeploy", "artifacts", "verify", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 5
    err = capsys.readouterr().err
    assert "error:" in err and "hint:" in err and "Traceback" not in err


def test_fetch_cli_fills_dir_and_second_run_downloads_nothing(upstream, monkeypatch, tmp_path, write_inv):
    import kdeploy.artifacts.fetch as f
    monkeypatch.setattr(f, "urllib_fetcher", upstream)
    inv = tmp_path / "inv.yaml"
    inv.write_text("apiVersion: kdeploy.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\n"
                   "spec: {kubernetes: {version: '1.37.2'}}\n"
                   "hosts: [{name: cp1, address: 192.0.2.10, roles: [control-plane, etcd, worker]}]\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["artifacts", "fetch", "-o", str(out), "-i", str(inv)])
    assert r.exit_code == 0, r.output
    assert "Kubernetes 1.37.2 amd64" in r.output
    n = len(upstream.calls)
    assert n > 0
    r = runner.invoke(app, ["artifacts", "fetch", "-o", str(out), "--k8s-version", "1.37.2"])
    assert r.exit_code == 0 and len(upstream.calls) == n
    r = runner.invoke(app, ["artifacts", "verify", str(out), "--arch", "amd64"])
    assert r.exit_code == 0 and "ok:" in r.output
