"""Ansible on lab machines (lab `ans`, 1 control plane + 1 worker, fresh machines twice):

1. `kdeploy up --transport ansible` (one ansible-runner run per step): verify green (inside
   up), the files and binaries on the hosts have the sha256 the planner wants (what the ssh
   transport places), the re-run is a no-op.
2. `kdeploy render --ansible DIR` then plain `ansible-playbook -i DIR/inventory DIR/cluster.yml`
   (run inside the lab's network namespace, no kdeploy module involved): `kdeploy verify`
   green, `kdeploy plan` empty (the same bytes as kdeploy's), a second run changed=0.

Needs: root + systemd-nspawn + debootstrap, KDEPLOY_ARTIFACTS, ansible-core + ansible-runner.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdeploy.execute import run
from kdeploy.model import load_inventory
from tests.lab.conftest import fresh_lab, module_lab
from tests.lab.test_up import assert_ok, kdeploy, up_json

pytestmark = pytest.mark.lab

LAB = "ans"


@pytest.fixture(scope="module")
def ans(tmp_path_factory):
    yield from module_lab(LAB, tmp_path_factory)


def host_sums(lab, machine: str, paths: list[str]) -> dict[str, str]:
    rc, out, err = lab.run(machine, "sha256sum -- " + " ".join(shlex.quote(p) for p in paths) + " 2>&1",
                           timeout=300)
    sums = {}
    for line in out.splitlines():
        parts = line.split("  ", 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            sums[parts[1]] = parts[0]
    return sums


def test_ansible_transport_deploys_the_same_bytes_and_reruns_as_a_noop(ans):
    lab, art = ans
    t = time.monotonic()
    p, evs, first_s = up_json(lab.inventory, art, "--transport", "ansible")
    assert_ok(p)
    checks = [e for e in evs if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks
    # one ansible-runner run per step: the progress got the steps' events
    kinds = {e.get("event") for e in evs}
    assert {"phase-start", "change", "gate", "ansible-task", "phase-done"} <= kinds
    # the bytes on the hosts are those the planner wants (the ssh transport places these)
    cluster, _ = load_inventory(lab.inventory)
    dep = run.prepare(cluster, artifacts_dir=art, write_state=False)
    for h, res in dep.desired.items():
        want = {f.path: f.sha256 for f in res.files} | {b.path: b.sha256 for b in res.binaries}
        got = host_sums(lab, h, sorted(want))
        assert got == want, {p: (want[p], got.get(p)) for p in want if got.get(p) != want[p]}
    p, evs, noop_s = up_json(lab.inventory, art, "--transport", "ansible")
    assert_ok(p)
    assert any(e.get("event") == "no-changes" for e in evs)
    assert not [e for e in evs if e.get("event") == "change"]
    print(f"\nansible transport 1+1: first up {first_s:.1f} s, no-op {noop_s:.1f} s "
          f"(test {time.monotonic() - t:.1f} s)")


def _playbook(lab, project: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ANSIBLE_", "KDEPLOY"))}
    env["ANSIBLE_NOCOLOR"] = "1"
    return subprocess.run(["ip", "netns", "exec", lab.netns, str(exe), "-i", str(project / "inventory"),
                           str(project / "cluster.yml")], capture_output=True, text=True, env=env,
                          cwd="/", timeout=1200)


def recap(out: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", out.split("PLAY RECAP", 1)[-1], re.M):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


def test_standalone_project_deploys_fresh_machines_and_reruns_with_changed_0(ans, tmp_path):
    lab, art = ans
    lab.down()
    lab = fresh_lab(LAB, tmp_path / "inventory.yaml")         # fresh machines, new state dir
    try:
        _standalone(lab, art, tmp_path)
    finally:
        lab.down()


def _standalone(lab, art, tmp_path):
    t = time.monotonic()
    project = tmp_path / "project"
    p = kdeploy("render", "-i", str(lab.inventory), "--ansible", str(project), "--artifacts", str(art))
    assert_ok(p)
    assert stat.S_IMODE(project.stat().st_mode) == 0o700
    keys = list((project / "files").rglob("*.key"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    text = "\n".join(f.read_text() for f in project.rglob("*.yml"))
    assert "kdeploy.netns_proxy" not in text and "-m kdeploy" not in text   # no kdeploy needed
    first = _playbook(lab, project)
    first_s = time.monotonic() - t
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert set(recap(first.stdout)) == {"m1", "m2"}
    v = kdeploy("verify", "-i", str(lab.inventory))
    assert_ok(v)
    pl = kdeploy("plan", "-i", str(lab.inventory), "--artifacts", str(art))
    assert pl.returncode == 0 and "No changes" in pl.stdout, pl.stdout[-3000:]
    t2 = time.monotonic()
    again = _playbook(lab, project)
    again_s = time.monotonic() - t2
    assert again.returncode == 0, again.stdout[-6000:]
    rows = recap(again.stdout)
    assert set(rows) == {"m1", "m2"} and all(r["changed"] == 0 and r["failed"] == 0 for r in rows.values()), rows
    print(f"\nstandalone project 1+1: first run {first_s:.1f} s, re-run {again_s:.1f} s")
