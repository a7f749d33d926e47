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

KUBECTL = "/usr/local/bin/kubectl --kubeconfig=/etc/kubernetes/admin.conf"


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
    assert touched <= {"/etc/hosts", "/usr/local/lib/kdeploy/pod-routes.sh",
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

    # a second verify (up's was the first) works, and neither leaves its test workload behind
    v = kdeploy("verify", "-i", str(lab.inventory), "--json")
    assert_ok(v)
    # its verdicts are in the cluster's run record, as up's are
    shown = [json.loads(x) for x in v.stdout.splitlines() if x.startswith('{"event": "check"')]
    [record] = sorted(Path(lab.inventory).parent.glob(".kdeploy/*/runs/*-verify/events.jsonl"))[-1:]
    kept = [json.loads(x) for x in record.read_text().splitlines()]
    assert len(shown) == 9 and [(e["name"], e["ok"]) for e in kept] == [(e["name"], e["ok"]) for e in shown], kept
    # its deletion is started, not waited for: gone within seconds
    rc, out, err = lab.run("m1", f"{KUBECTL} wait --for=delete namespace -l kdeploy.io/verify --timeout=60s "
                                 f">/dev/null 2>&1; {KUBECTL} get namespace -l kdeploy.io/verify -o name")
    assert rc == 0 and not out.strip(), out + err


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


PRELOADED_POD = """apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: default}
spec:
  nodeName: NODE
  terminationGracePeriodSeconds: 0
  containers:
    - name: dns
      image: IMAGE
      POLICY
      args: ["-dns.port", "1053"]   # no Corefile: CoreDNS serves whoami on that port
"""


def _pod(lab, name: str, image: str, node: str, policy: str | None = None) -> None:
    doc = (PRELOADED_POD.replace("NAME", name).replace("NODE", node).replace("IMAGE", image)
           .replace("POLICY", f"imagePullPolicy: {policy}" if policy else ""))
    rc, _, err = lab.run("m1", f"{KUBECTL} apply -f - <<'EOF'\n{doc}EOF")
    assert rc == 0, err


def _pod_state(lab, name: str) -> str:
    """Running, or the waiting reason of its container (ErrImagePull, ImagePullBackOff, ...)."""
    rc, out, _ = lab.run("m1", f"{KUBECTL} get pod {name} -o json")
    if rc != 0:
        return "absent"
    st = json.loads(out)["status"]
    cs = (st.get("containerStatuses") or [{}])[0].get("state", {})
    if "running" in cs:
        return "Running"
    return (cs.get("waiting") or {}).get("reason") or st.get("phase", "?")


def _wait_state(lab, name: str, want: set[str], timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    state = _pod_state(lab, name)
    while state not in want and time.monotonic() - t0 < timeout:
        time.sleep(2)
        state = _pod_state(lab, name)
    return state, time.monotonic() - t0


def _pulling(lab, name: str) -> bool:
    """The kubelet started pulling the image of pod `name` (this pod: events of an earlier pod
    of that name do not count)."""
    rc, uid, _ = lab.run("m1", f"{KUBECTL} get pod {name} -o jsonpath={{.metadata.uid}}")
    rc2, out, _ = lab.run("m1", f"{KUBECTL} get events --field-selector "
                                f"involvedObject.uid={uid.strip()},reason=Pulling -o name")
    return rc == 0 and rc2 == 0 and bool(uid.strip()) and bool(out.strip())


def preloaded_image_while_its_pull_fails(lab, image: str, node: str = "m2",
                                         timeout: float = 40) -> dict[str, float]:
    """While a pod with imagePullPolicy Always is pulling a preloaded image and failing (the
    lab's nodes have no internet: each attempt waits ~50 s for DNS), new pods naming it with the
    default policy start from the present copy; again once the Always pod is gone. Without the
    kubelet's allowlist, the Always pod's pull intent makes the kubelet pull for the new pod
    too (it stays Pending: ErrImagePull). Returns seconds to Running per pod."""
    failing = {"ErrImagePull", "ImagePullBackOff"}
    lab.run("m1", f"{KUBECTL} delete pod pull-always use-present use-present-again "
                  "--ignore-not-found --wait=true")
    figures = {}
    try:
        _pod(lab, "pull-always", image, node, "Always")
        t0 = time.monotonic()
        while not _pulling(lab, "pull-always"):
            assert time.monotonic() - t0 < 60, "the Always pod never started pulling"
            time.sleep(1)
        _pod(lab, "use-present", image, node)        # while that pull is in flight
        state, figures["use-present"] = _wait_state(lab, "use-present", {"Running"}, timeout)
        assert state == "Running", (f"a new IfNotPresent pod on {node} is {state} after "
                                    f"{figures['use-present']:.0f} s while a pod with "
                                    f"imagePullPolicy Always pulls the preloaded {image}")
        state, figures["always fails"] = _wait_state(lab, "pull-always", failing, 120)
        assert state in failing, f"the Always pod should fail to pull {image}: {state}"
        lab.run("m1", f"{KUBECTL} delete pod pull-always --wait=true")
        _pod(lab, "use-present-again", image, node)
        state, figures["use-present-again"] = _wait_state(lab, "use-present-again", {"Running"},
                                                          timeout)
        assert state == "Running", f"after the Always pod is gone: {state}"
    finally:
        lab.run("m1", f"{KUBECTL} delete pod pull-always use-present use-present-again "
                      "--ignore-not-found --wait=false")
    return figures


def test_preloaded_image_is_used_while_a_pull_of_it_keeps_failing(three):
    """Air-gapped nodes: the kubelet's pull-intent records (KEP-2535) must not turn the images
    kdeploy imported into ones it insists on pulling (kubelet allowlist, docs/artifacts.md)."""
    lab, art = three
    from kdeploy.render.images import images_of_dir
    p, _, _ = up_json(lab.inventory, art)   # converged already when the first test ran
    assert_ok(p)
    image = images_of_dir(art).coredns
    assert image in images_of_dir(art).preloaded
    figures = preloaded_image_while_its_pull_fails(lab, image)
    print(f"\npreloaded {image} while its pull fails: Running after "
          + ", ".join(f"{k} {v:.1f} s" for k, v in figures.items()))


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
