"""`kdeploy upgrade` on a real HA lab cluster (3 control-plane+etcd, 2 workers) under load,
the node-local API load balancers losing an apiserver, and the rollout's refusals and
recovery (PDB-blocked drain, SIGKILL mid-batch).

Needs two built artifact sets: KDEPLOY_ARTIFACTS (1.37.2) and KDEPLOY_ARTIFACTS_PREVIOUS
(1.36.3); tools/run-tests builds both.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdeploy.components.etcd import ETCDCTL
from kdeploy.render.images import images_of_dir
from tests.lab.test_up import assert_ok, events, kdeploy

pytestmark = pytest.mark.lab
OLD, NEW = "1.36.3", "1.37.2"
PROBE_DIR = "/run/kdeploy-probe"   # tmpfs: the probe's own log writes never wait for the disk
KUBECTL = "/usr/local/bin/kubectl --kubeconfig=/etc/kubernetes/admin.conf"
PROBES = ("api", "service")   # stop_probe's request probes; its "probe" entry is the probe's own stalls
GAP_LIMIT = 3.0     # seconds without a successful answer (target 2 s; see the probe asserts)


def artifact_sets() -> tuple[Path, Path]:
    out = []
    for var in ("KDEPLOY_ARTIFACTS_PREVIOUS", "KDEPLOY_ARTIFACTS"):
        d = os.environ.get(var)
        if not d or not (Path(d) / "manifest.json").is_file():
            pytest.skip(f"{var} does not point at a built artifact directory (tools/run-tests "
                        "builds 1.36.3 and 1.37.2)")
        out.append(Path(d))
    return out[0], out[1]


def set_version(inv: Path, version: str) -> None:
    import yaml
    doc = yaml.safe_load(inv.read_text())
    doc["spec"].setdefault("kubernetes", {})["version"] = version
    inv.write_text(yaml.safe_dump(doc, sort_keys=False))


def kubectl(lab, args: str, timeout: float = 120) -> str:
    rc, out, err = lab.run("m1", f"{KUBECTL} {args}", timeout=timeout)
    assert rc == 0, f"kubectl {args}: {err}"
    return out


WORKLOAD = """
apiVersion: v1
kind: Namespace
metadata: {name: upgrade-probe}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: upgrade-probe}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 15
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway,
           labelSelector: {matchLabels: {app: web}}}
      containers:
        - name: web
          image: IMAGE
          imagePullPolicy: IfNotPresent
          args: ["netexec", "--http-port=8080"]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
          # leave the Service's endpoints before the server stops (kube-proxy needs a moment)
          lifecycle: {preStop: {sleep: {seconds: 4}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: upgrade-probe}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: upgrade-probe}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def deploy_workload(lab, artifacts: Path, replicas: int = 2) -> str:
    """The probed workload (agnhost netexec behind a Service, PDB minAvailable 1) with the
    agnhost image of that artifact set; its Service IP."""
    image = images_of_dir(Path(artifacts)).agnhost
    rc, _, err = lab.run("m1", f"cat > /root/w.yaml <<'EOF'\n{WORKLOAD.replace('IMAGE', image)}\nEOF\n"
                               f"{KUBECTL} apply -f /root/w.yaml && {KUBECTL} -n upgrade-probe scale "
                               f"deploy/web --replicas={replicas} && {KUBECTL} -n upgrade-probe "
                               "rollout status deploy/web --timeout=180s")
    assert rc == 0, err
    rc, out, err = lab.run("m1", f"{KUBECTL} -n upgrade-probe get svc web -o jsonpath={{.spec.clusterIP}}")
    assert rc == 0, err
    return out.strip()


def start_probe(lab, node: str, service_ip: str, seconds: int = 1800) -> None:
    lab.put(node, Path(__file__).with_name("probe.py"), "/root/probe.py")
    rc, _, err = lab.run(node, f"rm -rf {PROBE_DIR}; mkdir -p {PROBE_DIR}; "
                               f"nohup python3 /root/probe.py {PROBE_DIR} {service_ip} {node} {seconds} "
                               f">{PROBE_DIR}.out 2>&1 </dev/null & echo started")
    assert rc == 0, err
    time.sleep(2)


def stop_probe(lab, node: str) -> dict[str, dict]:
    """Each probe's requests, failures and longest gap between two successful answers (with
    when it began, epoch seconds, and the slowest request), plus the probe's own longest stall
    ("probe": a wake-up that came late; a gap no longer than its stall is the probe's, not the
    cluster's)."""
    lab.run(node, f"touch {PROBE_DIR}/stop")
    time.sleep(3)
    out = {}
    for name in PROBES:
        rc, text, _ = lab.run(node, f"cat {PROBE_DIR}/{name}.log")
        rows = [ln.split(" ", 3) for ln in text.splitlines() if ln.strip()]
        ts = [(float(r[0]), r[1] == "1", float(r[2]), r[3] if len(r) > 3 else "") for r in rows]
        oks = [t for t, ok, _, _ in ts if ok]
        gap, at = max(((b - a, a) for a, b in zip(oks, oks[1:])), default=(float("inf"), 0.0))
        fails = [d for _, ok, _, d in ts if not ok]
        out[name] = {"requests": len(ts), "failed": len(fails), "longest_gap_s": round(gap, 2),
                     "gap_at": round(at, 3), "slowest_s": round(max((s for _, _, s, _ in ts), default=0), 2),
                     "failed_pct": round(100.0 * len(fails) / max(1, len(ts)), 2),
                     "errors": sorted(set(fails))[:5]}
    _, text, _ = lab.run(node, f"cat {PROBE_DIR}/stall.log")
    stalls = [tuple(map(float, ln.split())) for ln in text.splitlines() if ln.strip()]
    late, at = max(((s, t) for t, s in stalls), default=(0.0, 0.0))
    out["probe"] = {"stalls": len(stalls), "longest_stall_s": round(late, 2), "stall_at": round(at, 3)}
    return out


def describe_probe(probe: dict[str, dict]) -> str:
    """stop_probe's figures on one line, for the benches and the lab tests' output."""
    def clock(t: float) -> str:
        return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 10) % 10} UTC"

    parts = []
    for n in PROBES:
        r = probe[n]
        parts.append(f"{n}: {r['failed']} of {r['requests']} failed, longest gap {r['longest_gap_s']} s at "
                     f"{clock(r['gap_at'])} (slowest request {r['slowest_s']} s)"
                     + (f" {r['errors'][:2]}" if r["failed"] else ""))
    st = probe["probe"]
    parts.append(f"the probe itself stalled {st['stalls']} times, at most {st['longest_stall_s']} s at "
                 f"{clock(st['stall_at'])}" if st["stalls"] else "the probe itself never stalled over 0.2 s")
    return "; ".join(parts)


def gap_report(inv: Path, probe: dict[str, dict]) -> str:
    """describe_probe, then what kdeploy did (its run records) during each probe's longest gap:
    the message of a failed gap assertion."""
    lines = [describe_probe(probe)]
    evs = []
    for rec in Path(inv).parent.glob(".kdeploy/*/runs/*/events.jsonl"):
        evs += [json.loads(ln) for ln in rec.read_text().splitlines() if ln.strip()]
    for name in PROBES:
        at, gap = probe[name]["gap_at"], probe[name]["longest_gap_s"]
        lines.append(f"kdeploy's events during the {name} probe's gap of {gap} s:")
        lines += [f"  +{e['t'] - at:5.2f} s " + " ".join(str(e.get(k, "")) for k in ("host", "phase", "event", "kind",
                                                                                   "target", "hook"))
                  for e in sorted(evs, key=lambda e: e["t"]) if at - 1 <= e["t"] <= at + gap + 1]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def ha(lab_cluster):
    old, new = artifact_sets()
    lab = lab_cluster(masters=3, workers=2)
    inv = Path(lab.inventory)
    set_version(inv, OLD)
    t = time.monotonic()
    p = kdeploy("up", "-i", str(inv), "--artifacts", str(old), "--json")
    assert_ok(p)
    assert all(c["ok"] for c in events(p.stdout) if c.get("event") == "check")
    print(f"\nHA 3+2 at {OLD}: kdeploy up {time.monotonic() - t:.1f} s")
    yield lab, inv, old, new
    lab.down()


def test_rolling_upgrade_under_load(ha):
    lab, inv, old, new = ha
    # the workload runs the agnhost image of the OLD set (present on every node)
    svc = deploy_workload(lab, old)

    # refusals first: --to must match the inventory; a downgrade is refused before any change
    p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--yes")
    assert p.returncode != 0 and "does not match the inventory" in p.stderr + p.stdout
    set_version(inv, NEW)
    p = kdeploy("up", "-i", str(inv), "--artifacts", str(new), "--json")
    assert p.returncode != 0 and f"kdeploy upgrade -i {inv} --to {NEW}" in p.stderr + p.stdout

    # the plan of the upgrade, without acting
    p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--dry-run", "--json")
    assert p.returncode == 2, p.stderr
    shown = json.loads(p.stdout)
    assert [s["step"] for s in shown["steps"]][:3] == ["os", "etcd", "control-plane"] or \
        [s["step"] for s in shown["steps"]][:2] == ["etcd", "control-plane"]

    # an unhealthy etcd member: refused before any change (unless --force)
    assert lab.run("m3", "systemctl stop etcd")[0] == 0
    try:
        p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--yes")
        assert p.returncode != 0 and "etcd is not healthy" in p.stderr, p.stderr[-2000:]
        assert "nothing was changed" in p.stderr
        rc, out, _ = lab.run("m1", "/usr/local/bin/kube-apiserver --version")
        assert f"v{OLD}" in out
    finally:
        lab.run("m3", "systemctl start etcd")
    deadline = time.monotonic() + 120
    while lab.run("m1", f"{ETCDCTL} endpoint health --cluster")[0] != 0:
        assert time.monotonic() < deadline, "etcd on m3 did not come back"
        time.sleep(2)

    start_probe(lab, "m4", svc)
    t = time.monotonic()
    p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--yes", "--json",
                timeout=1800)
    secs = time.monotonic() - t
    probe = stop_probe(lab, "m4")
    assert_ok(p)
    evs = events(p.stdout)
    print(f"\nupgrade {OLD} -> {NEW} (3+2, batch 1): {secs:.1f} s; probes: {describe_probe(probe)}")
    # etcd, then the control plane, one host at a time; nodes drained before their turn
    restarts = [(e["phase"], e["host"]) for e in evs if e.get("event") == "change"
                and e.get("kind") == "unit-restart" and e["target"] in ("etcd", "kube-apiserver")]
    assert restarts == [("etcd", "m1"), ("etcd", "m2"), ("etcd", "m3"), ("control-plane", "m1"),
                        ("control-plane", "m2"), ("control-plane", "m3")], restarts
    hooks = [(e["host"], e["hook"]) for e in evs if e.get("event") == "hook"]
    for node in ("m1", "m2", "m3", "m4", "m5"):
        assert [h for n, h in hooks if n == node] == ["drain", "ready", "uncordon"], hooks
    assert any(e.get("event") == "snapshot" for e in evs)
    assert all(c["ok"] for c in evs if c.get("event") == "check"), [c for c in evs if c.get("event") == "check"]
    # every component reports the new version
    nodes = json.loads(kubectl(lab, "get nodes -o json"))["items"]
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes} == {f"v{NEW}"}
    assert not any(n["spec"].get("unschedulable") for n in nodes)
    for m in ("m1", "m2", "m3"):
        rc, out, _ = lab.run(m, "/usr/local/bin/kube-apiserver --version; /usr/local/bin/etcd --version")
        assert f"v{NEW}" in out and "3.7.0" in out, out
    # the probes: the API through a node's LB and the Service kept answering. The targets are
    # < 1 % failed and no gap over 2 s (bench/upgrade.py reports them; measured 0.6-1.8 s);
    # a gap here is one slow answer while 5 machines share 2 busy cores: 1 s of slack
    assert probe["api"]["failed_pct"] < 1.0 and probe["api"]["longest_gap_s"] < GAP_LIMIT, gap_report(inv, probe)
    assert probe["service"]["failed"] == 0 and probe["service"]["longest_gap_s"] < GAP_LIMIT, gap_report(inv, probe)
    # a second upgrade to the same version changes nothing; plan is empty; up is a no-op
    p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--yes", "--json")
    assert_ok(p)
    assert any(e.get("event") == "no-changes" for e in events(p.stdout))
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(new))
    assert p.returncode == 0, p.stdout + p.stderr
    # a downgrade is refused before any change, naming the hosts
    set_version(inv, OLD)
    p = kdeploy("upgrade", "-i", str(inv), "--to", OLD, "--artifacts", str(old), "--yes")
    assert p.returncode != 0 and "downgrades are not supported" in p.stderr + p.stdout, p.stderr
    assert "m1" in p.stderr + p.stdout
    set_version(inv, NEW)


def test_api_survives_a_stopped_apiserver(ha):
    """One control-plane host's apiserver stopped: every node stays Ready and the API keeps
    answering through the node-local LBs for 2 minutes."""
    lab, inv, _, new = ha
    svc = kubectl(lab, "-n upgrade-probe get svc web -o jsonpath={.spec.clusterIP}").strip()
    start_probe(lab, "m5", svc)
    rc, _, err = lab.run("m1", "systemctl stop kube-apiserver")
    assert rc == 0, err
    try:
        time.sleep(120)
        probe = stop_probe(lab, "m5")
        print(f"\nm1's apiserver stopped for 120 s: {describe_probe(probe)}")
        rc, out, err = lab.run("m2", f"{KUBECTL.replace('admin.conf', 'admin.conf --server=https://127.0.0.1:6443')} "
                                     "get nodes -o json")
        assert rc == 0, err
        for n in json.loads(out)["items"]:
            ready = next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
            assert ready == "True", (n["metadata"]["name"], n["status"]["conditions"])
        assert probe["api"]["failed_pct"] < 1.0 and probe["api"]["longest_gap_s"] < GAP_LIMIT, gap_report(inv, probe)
    finally:
        lab.run("m1", "systemctl start kube-apiserver")
    deadline = time.monotonic() + 180
    while lab.run("m1", f"{KUBECTL} --server=https://127.0.0.1:6443 get --raw /readyz")[0] != 0:
        assert time.monotonic() < deadline, "m1's apiserver did not come back"
        time.sleep(2)
    p = kdeploy("verify", "-i", str(inv))
    assert p.returncode == 0, p.stdout[-3000:]


BLOCKER = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: blocker, namespace: upgrade-probe}
spec:
  replicas: 1
  selector: {matchLabels: {app: blocker}}
  template:
    metadata: {labels: {app: blocker}}
    spec:
      nodeSelector: {kubernetes.io/hostname: m5}
      containers:
        - {name: c, image: IMAGE, imagePullPolicy: IfNotPresent, args: ["pause"]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: blocker, namespace: upgrade-probe}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: blocker}}
"""


def test_blocked_drain_and_a_killed_run_leave_no_node_cordoned(ha):
    lab, inv, _, new = ha
    # another deployer drives m2 (its host lock, freshly refreshed): nothing starts
    assert lab.run("m2", "mkdir -p /var/lib/kdeploy/run.lock && "
                         "echo 'other-deployer:4242:/srv/other' > /var/lib/kdeploy/run.lock/owner")[0] == 0
    try:
        p = kdeploy("up", "-i", str(inv), "--artifacts", str(new))
        assert p.returncode != 0 and "another kdeploy run is driving these hosts" in p.stderr, p.stderr
        assert "m2: held by other-deployer:4242:/srv/other" in p.stderr
    finally:
        lab.run("m2", "rm -rf /var/lib/kdeploy/run.lock")
    assert lab.run("m1", "test -e /var/lib/kdeploy/run.lock")[0] != 0   # the refused run left none
    image = kubectl(lab, "-n upgrade-probe get deploy web -o jsonpath={.spec.template.spec.containers[0].image}")
    rc, _, err = lab.run("m1", f"cat > /root/b.yaml <<'EOF'\n{BLOCKER.replace('IMAGE', image)}\nEOF\n"
                               f"{KUBECTL} apply -f /root/b.yaml && {KUBECTL} -n upgrade-probe "
                               "rollout status deploy/blocker --timeout=120s")
    assert rc == 0, err
    # a node-level change (kubelet config) rolled out by `upgrade`: every node is drained in turn
    import yaml
    doc = yaml.safe_load(inv.read_text())
    doc["spec"].setdefault("kubelet", {})["maxPods"] = 100
    inv.write_text(yaml.safe_dump(doc, sort_keys=False))
    ledger = inv.parent / ".kdeploy" / doc["metadata"]["name"] / "cordoned.json"

    # 1. SIGKILL while m5's drain waits on the PDB: m5 stays cordoned, recorded in the ledger
    proc = subprocess.Popen([sys.executable, "-m", "kdeploy", "upgrade", "-i", str(inv), "--to", NEW,
                             "--artifacts", str(new), "--yes", "--json", "--drain-timeout", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        if '"hook"' in line and '"m5"' in line and '"drain"' in line:
            break
        assert time.monotonic() < deadline, "no drain of m5 seen"
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads(ledger.read_text()) == ["m5"]
    assert kubectl(lab, "get node m5 -o jsonpath={.spec.unschedulable}").strip() == "true"

    # 2. the next run finishes it (uncordons m5 first) and then times out on the PDB, uncordons
    #    again and names the node
    p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--yes",
                "--drain-timeout", "20", timeout=900)
    assert p.returncode != 0
    assert "drain of node m5 did not finish within 20 s" in p.stderr + p.stdout, p.stderr[-2000:]
    assert kubectl(lab, "get node m5 -o jsonpath={.spec.unschedulable}").strip() == ""
    assert json.loads(ledger.read_text()) == []

    # 3. without the blocker the re-run resumes and completes; the plan is empty after
    kubectl(lab, "-n upgrade-probe delete pdb blocker")
    p = kdeploy("upgrade", "-i", str(inv), "--to", NEW, "--artifacts", str(new), "--yes", "--json",
                timeout=900)
    assert_ok(p)
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(new))
    assert p.returncode == 0, p.stdout + p.stderr
    nodes = json.loads(kubectl(lab, "get nodes -o json"))["items"]
    assert not any(n["spec"].get("unschedulable") for n in nodes)
