"""`kdeploy certs check` and `kdeploy certs renew --all` on a real HA lab (3 control-plane+etcd
hosts, 1 worker) under an availability probe on the worker: every leaf certificate is reissued
and rolled out (etcd, then the control plane one host at a time, then the nodes) while the API
and a Service keep answering and no node goes NotReady.

Lab name `crt`. KDEPLOY_ARTIFACTS: the built 1.37.2 set. KDEPLOY_CRT_REUSE=1 reuses a running
`crt` lab deployed with `kdeploy up` (development); otherwise the lab is started afresh and
brought down at the end.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kdeploy.render.images import images_of_dir
from tests.lab.conftest import LabCluster, lab_skip_reason
from tests.lab.test_up import artifacts_dir, assert_ok, events, kdeploy
from tests.lab.test_upgrade import (GAP_LIMIT, KUBECTL, WORKLOAD, describe_probe, gap_report,
                                    start_probe, stop_probe)

pytestmark = pytest.mark.lab
NAME = "crt"
WORKER = "m4"


def _lab_from_status(inv: Path) -> LabCluster:
    from kdeploy.lab import api
    st = api.status(name=NAME)[0]
    return LabCluster(name=NAME, inventory=inv, info=st)


@pytest.fixture(scope="module")
def crt():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    art = artifacts_dir()
    from kdeploy.lab import api
    from kdeploy.lab.state import LabState
    reuse = os.environ.get("KDEPLOY_CRT_REUSE") == "1" and LabState(NAME).exists()
    if reuse:
        inv = Path(api.status(name=NAME)[0]["inventory"])
        lab = _lab_from_status(inv)
    else:
        if LabState(NAME).exists():       # left over by an earlier, killed session
            api.down(name=NAME, log=lambda s: None)
        inv = Path(tempfile.mkdtemp(prefix="kdeploy-crt-")) / "inventory.yaml"
        info = api.up(name=NAME, masters=3, workers=1, output=inv, log=lambda s: None)
        lab = LabCluster(name=NAME, inventory=inv, info=info)
    try:
        if not reuse:
            t = time.monotonic()
            p = kdeploy("up", "-i", str(inv), "--artifacts", str(art), "--json", timeout=1800)
            assert_ok(p)
            print(f"\nHA 3+1: kdeploy up {time.monotonic() - t:.1f} s")
        yield lab, inv, art
    finally:
        if not reuse:
            lab.down()
            import shutil
            shutil.rmtree(inv.parent, ignore_errors=True)   # the inventory and its state dir (keys)


def check_json(inv: Path) -> tuple[int, dict]:
    p = kdeploy("certs", "check", "-i", str(inv), "--json", timeout=300)
    return p.returncode, json.loads(p.stdout)


def not_ready(lab) -> list[str]:
    # through m1's load balancer: any apiserver answers while one restarts
    rc, out, err = lab.run("m1", f"{KUBECTL} --server=https://127.0.0.1:7443 get nodes -o json",
                           timeout=60)
    if rc != 0:
        return [f"(API: {err.strip()[-100:]})"]
    bad = []
    for n in json.loads(out)["items"]:
        ready = next((c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready"), "?")
        if ready != "True":
            bad.append(f"{n['metadata']['name']}={ready}")
    return bad


class ReadyWatch:
    """Every node's Ready condition, every 2 s, while the renewal runs."""

    def __init__(self, lab):
        self.lab, self.seen, self.polls, self.errors = lab, [], 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                bad = not_ready(self.lab)
                self.polls += 1
                self.seen += [b for b in bad if not b.startswith("(API")]
                self.errors += sum(1 for b in bad if b.startswith("(API"))
            except Exception:   # noqa: BLE001 - an ssh hiccup is not a NotReady node
                self.errors += 1
            self._stop.wait(2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=30)


def test_renew_all_under_load(crt):
    lab, inv, art = crt
    # 1. check from the hosts: clean after `up`; the deployer's copies match
    rc, before = check_json(inv)
    assert rc == 0 and before["ok"], [c for c in before["certificates"] if c["flags"]]
    hosts = {c["host"] for c in before["certificates"]}
    assert hosts == {"m1", "m2", "m3", "m4"}
    assert not any("PRIVATE" in json.dumps(c) for c in before["certificates"])

    # 2. a workload and its Service; the probe on the worker (the API through its LB + the Service)
    image = images_of_dir(art).agnhost
    rc, _, err = lab.run("m1", f"cat > /root/w.yaml <<'EOF'\n{WORKLOAD.replace('IMAGE', image)}\nEOF\n"
                               f"{KUBECTL} apply -f /root/w.yaml && {KUBECTL} -n upgrade-probe "
                               "rollout status deploy/web --timeout=240s", timeout=300)
    assert rc == 0, err
    rc, svc, err = lab.run("m1", f"{KUBECTL} -n upgrade-probe get svc web -o jsonpath={{.spec.clusterIP}}")
    assert rc == 0, err

    # 3. dry run: every leaf listed, nothing changed
    p = kdeploy("certs", "renew", "-i", str(inv), "--all", "--dry-run", "--json", timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    shown = json.loads(p.stdout)
    assert [s["step"] for s in shown["steps"]] == ["etcd", "control-plane", "control-plane nodes", "workers"]
    assert check_json(inv)[1]["certificates"] == before["certificates"]

    # 4. the renewal under the probe, Ready watched throughout
    start_probe(lab, WORKER, svc.strip())
    with ReadyWatch(lab) as watch:
        t = time.monotonic()
        p = kdeploy("certs", "renew", "-i", str(inv), "--all", "--yes", "--json", timeout=1800)
        secs = time.monotonic() - t
    probe = stop_probe(lab, WORKER)
    assert_ok(p)
    evs = events(p.stdout)
    steps = {e["phase"]: e["seconds"] for e in evs if e.get("event") == "phase-done"}
    print(f"\ncerts renew --all (HA 3+1, verify included): {secs:.1f} s; steps {steps}; "
          f"probes: {describe_probe(probe)}; Ready polls {watch.polls} (API errors {watch.errors}), "
          f"NotReady seen: {watch.seen}")
    # etcd members, then apiservers, one host at a time, in that order; kubelets one by one
    restarts = [(e["phase"], e["host"], e["target"]) for e in evs if e.get("event") == "change"
                and e.get("kind") == "unit-restart"]
    order = [(ph, h) for ph, h, u in restarts if u in ("etcd", "kube-apiserver")]
    assert order == [("etcd", "m1"), ("etcd", "m2"), ("etcd", "m3"), ("control-plane", "m1"),
                     ("control-plane", "m2"), ("control-plane", "m3")], order
    assert sorted(h for _, h, u in restarts if u == "kubelet") == ["m1", "m2", "m3", "m4"]
    assert not any(e.get("hook") == "drain" for e in evs)
    assert all(c["ok"] for c in evs if c.get("event") == "check"), \
        [c for c in evs if c.get("event") == "check" and not c["ok"]]
    renewed = next(e for e in evs if e.get("event") == "renewed")["certificates"]
    assert not any(n in renewed for n in ("ca", "etcd/ca", "front-proxy-ca", "sa", "encryption"))

    # 5. availability: the API through the worker's LB and the Service kept answering
    assert watch.seen == [], watch.seen
    assert not_ready(lab) == []
    assert probe["api"]["failed_pct"] < 1.0 and probe["api"]["longest_gap_s"] < GAP_LIMIT, gap_report(inv, probe)
    assert probe["service"]["failed"] == 0, probe

    # 6. on the hosts: every leaf reissued (new notAfter, new fingerprint), the CAs untouched;
    #    check is clean, a second renew without --all is a no-op, the plan is empty
    rc, after = check_json(inv)
    assert rc == 0 and after["ok"], [c for c in after["certificates"] if c["flags"]]
    old = {(c["host"], c["path"]): c for c in before["certificates"]}
    for c in after["certificates"]:
        o = old[(c["host"], c["path"])]
        if c["ca"]:
            assert c["fingerprint"] == o["fingerprint"], c["path"]
        else:
            assert c["notAfter"] > o["notAfter"] and c["fingerprint"] != o["fingerprint"], (c, o)
    assert len(after["certificates"]) == len(before["certificates"])
    p = kdeploy("certs", "renew", "-i", str(inv), "--yes", "--json", timeout=300)
    assert_ok(p)
    assert any(e.get("event") == "no-changes" for e in events(p.stdout)), p.stdout[-2000:]
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    # the deployer's admin kubeconfig carries the renewed admin cert and works
    p = kdeploy("verify", "-i", str(inv))
    assert p.returncode == 0, p.stdout[-3000:]


def test_check_flags_a_stale_host_copy(crt):
    """A host holding another certificate than the deployer's copy, or none: flagged, exit 2;
    `certs renew` (without --all) puts the deployer's copy back."""
    lab, inv, _ = crt
    assert lab.run("m4", "cp /var/lib/kubelet/pki/kubelet.crt /root/kubelet.crt.bak && "
                         "cp /etc/kubernetes/pki/ca.crt /var/lib/kubelet/pki/kubelet.crt")[0] == 0
    rc, doc = check_json(inv)
    assert rc == 2 and not doc["ok"]
    flagged = [(c["host"], c["path"], c["status"]) for c in doc["certificates"] if c["flags"]]
    assert flagged == [("m4", "/var/lib/kubelet/pki/kubelet.crt", "mismatch")], flagged
    p = kdeploy("certs", "renew", "-i", str(inv), "--yes", "--json", timeout=600)
    assert_ok(p)
    rc, doc = check_json(inv)
    assert rc == 0 and doc["ok"], [c for c in doc["certificates"] if c["flags"]]
