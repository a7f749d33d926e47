"""kdeploy render --ansible DIR: a standalone Ansible project from the one rendering path."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdeploy.artifacts.fetch import ArtifactFile
from kdeploy.cli import app
from kdeploy.components import gates
from kdeploy.execute.run import pin_pod_cidrs
from kdeploy.model import load_inventory
from kdeploy.pki import ensure_pki
from kdeploy.plan.desired import desired_state
from kdeploy.plan.resources import PHASES
from kdeploy.render.ansible_project import dump, write_project

from .conftest import SAMPLES


def _artifacts(d: Path) -> list[ArtifactFile]:
    out = []
    for name, path, roles in (("kubelet", "/usr/local/bin/kubelet", ()),
                              ("etcd", "/usr/local/bin/etcd", ("etcd",))):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(name.encode())
        out.append(ArtifactFile(name, "x", "1", p, hashlib.sha256(name.encode()).hexdigest(), path,
                                0o755, frozenset(roles)))
    return out


def _project(tmp_path, inv: Path):
    cluster, _ = load_inventory(inv)
    state = tmp_path / "state"
    cluster = pin_pod_cidrs(cluster, state)
    pki = ensure_pki(cluster, state)
    arts = _artifacts(tmp_path / "arts")
    desired = desired_state(cluster, pki=pki, artifacts=arts)
    out = tmp_path / "project"
    write_project(out, cluster, desired, gates=gates(cluster))
    return cluster, desired, out


def test_project_layout_modes_and_the_same_bytes(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, desired, out = _project(tmp_path, inv)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for d in ("files", "binaries", "host_vars", "inventory"):
        assert stat.S_IMODE((out / d).stat().st_mode) == 0o700
    for name, res in desired.items():
        for f in res.files:
            p = out / "files" / name / f.path.lstrip("/")
            assert p.read_bytes() == f.content                      # byte for byte
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
    kubelet = out / "binaries" / "kubelet"
    assert kubelet.read_bytes() == b"kubelet"
    assert kubelet.stat().st_ino == (tmp_path / "arts" / "kubelet").stat().st_ino   # hard link
    inv_y = yaml.safe_load((out / "inventory" / "hosts.yml").read_text().replace("!unsafe ", ""))
    groups = inv_y["all"]["children"]["k8s_cluster"]["children"]
    assert set(groups["kube_control_plane"]["hosts"]) == {h.name for h in cluster.control_plane}
    assert set(groups["kube_node"]["hosts"]) == {h.name for h in cluster.workers}
    plays = yaml.safe_load((out / "cluster.yml").read_text())
    assert [p["tasks"][0]["vars"]["kd_phase"] for p in plays] == [str(p) for p in PHASES]


def test_host_vars_are_never_templated_and_follow_the_phases(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, desired, out = _project(tmp_path, inv)
    cp = cluster.control_plane[0].name
    text = (out / "host_vars" / f"{cp}.yml").read_text()
    hv = yaml.safe_load(text.replace("!unsafe ", ""))
    ph = hv["kd_phases"]
    assert list(ph) == [str(p) for p in PHASES if str(p) in ph]
    f = ph["control-plane"]["files"][0]
    assert text.count("!unsafe") > 10 and isinstance(f["run"], list)
    assert any("apiserver" in g["what"] or "readyz" in g["cmd"] for g in ph["control-plane"]["gates"])
    assert "kubelet" in ph["node"]["units"]
    assert "/usr/local/bin/etcd" in [b["dest"] for b in ph["etcd"]["binaries"]]
    # secrets are no_log'd
    keys = [x for p in ph.values() for x in p["files"] if x["dest"].endswith(".key")]
    assert keys and all(x["secret"] for x in keys)


def test_kubespray_inventory_gives_the_same_groups(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text(textwrap.dedent("""\
        [all]
        node1 ansible_host=192.0.2.10 ip=192.0.2.10
        node2 ansible_host=192.0.2.11 ip=192.0.2.11 ansible_user=debian
        [all:vars]
        kube_version=v1.37.2
        [kube_control_plane]
        node1
        [etcd]
        node1
        [kube_node]
        node2
        [k8s_cluster:children]
        kube_control_plane
        kube_node
        """))
    cluster, desired, out = _project(tmp_path, inv)
    hosts = yaml.safe_load((out / "inventory" / "hosts.yml").read_text().replace("!unsafe ", ""))
    node2 = hosts["all"]["children"]["k8s_cluster"]["hosts"]["node2"]
    assert node2["ansible_user"] == "debian" and node2["ansible_become"] is True
    assert node2["ansible_host"] == "192.0.2.11"


@pytest.mark.skipif(shutil.which("ansible-playbook", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}") is None,
                    reason="ansible-playbook not installed")
def test_ansible_playbook_accepts_the_project(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    _, _, out = _project(tmp_path, inv)
    exe = shutil.which("ansible-playbook", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run([exe, "--syntax-check", "-i", str(out / "inventory"), str(out / "cluster.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([exe, "--list-hosts", "-i", str(out / "inventory"), str(out / "cluster.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cp1" in r.stdout and "worker2" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("ansible-playbook", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}") is None,
                    reason="ansible-playbook not installed")
def test_vars_written_by_the_project_are_never_templated(tmp_path):
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "localhost.yml").write_text(dump({"v": {"cmd": "{{ 7 * 6 }}|{% raw %}"}}))
    (tmp_path / "inv").write_text("localhost ansible_connection=local\n")
    (tmp_path / "p.yml").write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                                    "    - ansible.builtin.debug:\n        msg: 'got={{ v.cmd }}'\n")
    exe = shutil.which("ansible-playbook", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    r = subprocess.run([exe, "-i", str(tmp_path / "inv"), str(tmp_path / "p.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "got={{ 7 * 6 }}|{% raw %}" in r.stdout and "got=42" not in r.stdout


def _err(r) -> str:
    from kdeploy.errors import KdeployError
    assert r.exit_code != 0 and isinstance(r.exception, KdeployError), r.output
    return f"{r.exception.message} / {r.exception.hint}"


def test_cli_errors_are_specific(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    assert "either -o DIR" in _err(CliRunner().invoke(app, ["render", "-i", str(inv)]))
    assert "either -o DIR" in _err(CliRunner().invoke(app, [
        "render", "-i", str(inv), "-o", str(tmp_path / "o"), "--ansible", str(tmp_path / "a")]))
    msg = _err(CliRunner().invoke(app, ["render", "-i", str(inv), "--ansible", str(tmp_path / "a")]))
    assert "--artifacts DIR" in msg and "spec.artifacts.dir" in msg
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("mine")
    msg = _err(CliRunner().invoke(app, ["render", "-i", str(inv), "--ansible", str(busy),
                                        "--artifacts", str(tmp_path)]))
    assert "not empty" in msg and (busy / "x").read_text() == "mine"
