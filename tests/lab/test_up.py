"""`kdeploy up` end to end on real lab machines with the artifacts built from upstream modules.

Needs: root + systemd-nspawn + debootstrap (the lab), and KDEPLOY_ARTIFACTS pointing at a built
artifact directory (kdeploy artifacts build; tools/run-tests sets it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.lab


def artifacts_dir() -> Path:
    d = os.environ.get("KDEPLOY_ARTIFACTS")
    if not d or not (Path(d) / "manifest.json").is_file():
        pytest.skip("KDEPLOY_ARTIFACTS does not point at a built artifact directory "
                    "(run kdeploy artifacts build; tools/run-tests does)")
    return Path(d)


def kdeploy(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdeploy", *args], capture_output=True, text=True,
                          timeout=timeout)


def events(out: str) -> list[dict]:
    evs = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                evs.append(json.loads(line))
            except ValueError:
                pass
    return evs


def up_json(inv: Path, art: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict], float]:
    t = time.monotonic()
    p = kdeploy("up", "-i", str(inv), "--artifacts", str(art), "--json", *extra)
    return p, events(p.stdout), time.monotonic() - t


def assert_ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"rc={p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}"


@pytest.fixture(scope="module")
def three(lab_cluster):
    art = artifacts_dir()
    lab = lab_cluster(masters=1, workers=2)
    yield lab, art
    lab.down()  # free the machines before the next topology starts


def test_up_verify_then_add_a_worker_then_noop_and_clean_plan(three):
    lab, art = three
    # first a cluster of m1 + m2 (same directory: the same cluster state and PKI) ...
    doc = yaml.safe_load(Path(lab.inventory).read_text())
    doc["hosts"] = [h for h in doc["hosts"] if h["name"] != "m3"]
    two = Path(lab.inventory).parent / "two-nodes.yaml"
    two.write_text(yaml.safe_dump(doc))
    p, evs, first_s = up_json(two, art)
    assert_ok(p)
    checks = [e for e in evs if e.get("event") == "check"]
    assert len(checks) == 9 and all(c["ok"] for c in checks), checks
    done = next(e for e in evs if e.get("event") == "done")
    admin = Path(done["admin_kubeconfig"])
    assert admin.stat().st_mode & 0o077 == 0
    print(f"\nkdeploy up (2 machines, bare): {first_s:.1f} s; phases: {done['timings']}")

    # ... then the inventory gains m3: m3 is installed, m1/m2 only learn about it
    p, evs, add_s = up_json(lab.inventory, art)
    assert_ok(p)
    old_nodes = [e for e in evs if e.get("event") == "change" and e["host"] in ("m1", "m2")]
    touched = {e["target"] for e in old_nodes}
    assert touched <= {"/etc/hosts", "/etc/systemd/system/kdeploy-pod-routes.service",
                       "kdeploy-pod-routes", "/etc/kubernetes/addons/90-node-labels.sh",
                       "sh /etc/kubernetes/addons/90-node-labels.sh"}, touched
    assert any(e.get("event") == "change" and e["host"] == "m3" for e in evs)
    checks = [e for e in evs if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks
    print(f"kdeploy up (add a worker): {add_s:.1f} s")

    p2, evs2, noop_s = up_json(lab.inventory, art)
    assert_ok(p2)
    assert any(e.get("event") == "no-changes" for e in evs2), p2.stdout[-2000:]
    assert not any(e.get("event") == "change" for e in evs2)
    print(f"kdeploy up (no-op re-run): {noop_s:.1f} s")

    p3 = kdeploy("plan", "-i", str(lab.inventory), "--artifacts", str(art))
    assert p3.returncode == 0, p3.stdout[-3000:] + p3.stderr[-2000:]

    v = kdeploy("verify", "-i", str(lab.inventory), "--json")
    assert_ok(v)


def test_corrupted_artifact_is_refused_before_any_host_is_touched(three, tmp_path):
    lab, art = three
    bad = tmp_path / "artifacts"
    shutil.copytree(art, bad, symlinks=True)
    target = bad / "bin" / "kubelet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.unlink()
    target.write_bytes(bytes(data))
    p = kdeploy("up", "-i", str(lab.inventory), "--artifacts", str(bad))
    assert p.returncode == 5, p.stderr
    assert "checksum mismatch" in p.stderr and "kubelet" in p.stderr and "Traceback" not in p.stderr


def test_unreachable_host_is_named_and_others_untouched(three, tmp_path):
    lab, art = three
    doc = yaml.safe_load(Path(lab.inventory).read_text())
    base = doc["hosts"][-1]["address"].rsplit(".", 1)[0]
    doc["hosts"].append({"name": "ghost", "address": f"{base}.250", "roles": ["worker"]})
    inv = tmp_path / "with-ghost.yaml"
    for key in ("keyFile", "knownHostsFile"):  # keep paths valid from the new location
        if key in doc["spec"].get("ssh", {}):
            doc["spec"]["ssh"][key] = str((Path(lab.inventory).parent / doc["spec"]["ssh"][key]).resolve())
    inv.write_text(yaml.safe_dump(doc))
    before = lab.run("m2", "stat -c %Y /etc/kubernetes/kubelet.conf")[1]
    p = kdeploy("up", "-i", str(inv), "--artifacts", str(art), timeout=300)
    assert p.returncode == 6, p.stderr
    assert "ghost" in p.stderr and "unreachable" in p.stderr and "Traceback" not in p.stderr
    assert lab.run("m2", "stat -c %Y /etc/kubernetes/kubelet.conf")[1] == before


@pytest.fixture(scope="module")
def single(lab_cluster):
    art = artifacts_dir()
    lab = lab_cluster(masters=1, workers=0)
    yield lab, art
    lab.down()


def test_single_node_preflight_then_killed_run_then_converge(single):
    lab, art = single
    # a host that fails preflight: something else on the apiserver port
    rc, _, err = lab.run("m1", "systemd-run --unit kdeploy-test-squat socat TCP-LISTEN:6443,fork,reuseaddr EXEC:/bin/true")
    assert rc == 0, err
    time.sleep(1)
    p = kdeploy("up", "-i", str(lab.inventory), "--artifacts", str(art))
    assert p.returncode == 7, p.stderr
    assert "m1: port 6443" in p.stderr and "nothing was changed" in p.stderr
    assert lab.run("m1", "test -e /etc/kubernetes")[0] != 0
    lab.run("m1", "systemctl stop kdeploy-test-squat")

    # SIGKILL in the middle of the control-plane phase, then a re-run converges
    proc = subprocess.Popen([sys.executable, "-m", "kdeploy", "up", "-i", str(lab.inventory),
                             "--artifacts", str(art), "--json"], stdout=subprocess.PIPE, text=True)
    killed = False
    for line in proc.stdout:
        if '"phase-start"' in line and '"control-plane"' in line:
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=60)
    assert killed, "the run never reached the control-plane phase"
    p, evs, secs = up_json(lab.inventory, art)
    assert_ok(p)
    assert all(c["ok"] for c in evs if c.get("event") == "check")
    print(f"\nsingle node: converge after a killed run: {secs:.1f} s")
    p2, evs2, _ = up_json(lab.inventory, art)
    assert_ok(p2)
    assert any(e.get("event") == "no-changes" for e in evs2)


def test_ha_three_control_planes(lab_cluster):
    """3 control-plane hosts with stacked etcd (3 members over TLS) and a worker."""
    art = artifacts_dir()
    lab = lab_cluster(masters=3, workers=1)
    try:
        p, evs, secs = up_json(lab.inventory, art)
        assert_ok(p)
        checks = {c["name"]: c for c in evs if c.get("event") == "check"}
        assert all(c["ok"] for c in checks.values()), checks
        assert checks["etcd healthy (TLS)"]["detail"].startswith("3/3")
        assert checks["nodes Ready at version"]["detail"].startswith("4/4")
        print(f"\nHA (3 control-plane + 1 worker): kdeploy up {secs:.1f} s")
        p2, evs2, noop = up_json(lab.inventory, art)
        assert_ok(p2)
        assert any(e.get("event") == "no-changes" for e in evs2)
        print(f"HA no-op re-run: {noop:.1f} s")

        # a new apiserver SAN: the running control plane is rolled one host at a time
        inv = Path(lab.inventory)
        inv.write_text(inv.read_text().replace("  network:\n", "  controlPlane:\n"
                                               "    extraSANs: [api.lab.test]\n  network:\n", 1))
        p3, evs3, roll = up_json(inv, art)
        assert_ok(p3)
        steps = [(e["event"], e["host"]) for e in evs3 if e.get("phase") == "control-plane"
                 and (e["event"] == "gate" or (e["event"] == "change" and e["kind"] == "unit-restart"))]
        assert steps == [("change", "m1"), ("gate", "m1"), ("change", "m2"), ("gate", "m2"),
                         ("change", "m3"), ("gate", "m3")], steps
        assert all(c["ok"] for c in evs3 if c.get("event") == "check")
        print(f"HA rolling apiserver change: {roll:.1f} s")
    finally:
        lab.down()
