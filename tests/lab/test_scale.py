"""Scale (issue 13) on the largest lab CI affords: 3 control-plane hosts + 3 workers deployed,
then one worker added. The add installs the new worker and changes on the other six hosts
exactly what `kdeploy plan` said beforehand (files compared by checksum over kdeploy's
directories, units by their start time): nothing else is rewritten or restarted. An
availability probe (the API through a worker's load balancer, a Service) runs on m4 while the
worker is added: no request fails. Verify is green after both runs (after the add, its test
workload runs on the new worker and an old one) and a re-run is a no-op. Timings are printed
(bench/scale.py measures)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.lab.conftest import module_lab
from tests.lab.test_up import assert_ok, kdeploy, up_json
from tests.lab.test_upgrade import deploy_workload, describe_probe, start_probe, stop_probe

pytestmark = pytest.mark.lab

LAB = "scale"
NEW = "m7"
# every directory kdeploy writes to (and /etc/hosts); its own bookkeeping (/var/lib/kdeploy:
# journal, hash cache) and what the kubelet rotates itself are left out
WATCHED = ("/etc/kubernetes /etc/systemd/system /etc/containerd /etc/cni /etc/crictl.yaml "
           "/etc/sysctl.d /etc/modules-load.d /etc/hosts /usr/local/bin /usr/local/sbin "
           "/usr/local/lib/kdeploy /opt/cni/bin /var/lib/kubelet/config.yaml /var/lib/kubelet/pki/kubelet.crt "
           "/var/lib/kubelet/pki/kubelet.key /var/lib/kube-proxy")
UNITS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd",
         "kubelet", "kube-proxy", "kdeploy-api-lb", "kdeploy-pod-routes")


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    yield from module_lab(LAB, tmp_path_factory, masters=3, workers=4)


def snapshot(lab, host: str) -> tuple[dict[str, str], dict[str, str]]:
    """(path -> sha256 of every file under WATCHED, unit -> its main process's start time)."""
    rc, out, err = lab.run(host, f"find {WATCHED} -xdev -type f 2>/dev/null | sort | xargs -r sha256sum")
    assert rc == 0, err
    files = {ln.split("  ", 1)[1]: ln.split("  ", 1)[0] for ln in out.splitlines() if "  " in ln}
    rc, out, err = lab.run(host, "for u in " + " ".join(UNITS) + "; do echo \"$u $(systemctl show "
                           "-p ExecMainStartTimestampMonotonic --value $u)\"; done")
    assert rc == 0, err
    units = dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)
    return files, units


def test_add_one_worker_changes_only_what_the_plan_says(seven):
    lab, art = seven
    full = Path(lab.inventory)
    doc = yaml.safe_load(full.read_text())
    six = full.parent / "six.yaml"
    six.write_text(yaml.safe_dump({**doc, "hosts": [h for h in doc["hosts"] if h["name"] != NEW]}))
    others = [h["name"] for h in doc["hosts"] if h["name"] != NEW]

    p, evs, first_s = up_json(six, art)
    assert_ok(p)
    checks = [e for e in evs if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks
    print(f"\nkdeploy up, 3+3 from bare machines: {first_s:.1f} s")
    svc = deploy_workload(lab, art)

    pl = kdeploy("plan", "-i", str(full), "--artifacts", str(art), "--json", "--no-diff")
    assert pl.returncode in (0, 2), pl.stdout[-2000:] + pl.stderr[-2000:]  # 2: changes pending
    planned = json.loads(pl.stdout)["changes"]
    assert {c["host"] for c in planned} >= {NEW}
    before = {h: snapshot(lab, h) for h in others}

    start_probe(lab, "m4", svc)
    p, evs, add_s = up_json(full, art)
    probe = stop_probe(lab, "m4")
    print(f"probes while the worker was added: {describe_probe(probe)}")
    assert_ok(p)
    assert probe["api"]["failed"] == 0 and probe["service"]["failed"] == 0, probe
    checks = [e for e in evs if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks
    assert next(c for c in checks if c["name"] == "nodes Ready at version")["detail"].startswith("7/7")
    # the test workload ran on the new worker and one unchanged worker, not on all four
    work = next(c for c in checks if c["name"].startswith("workload"))["detail"]
    assert work.startswith("2 pods on 2 nodes (the nodes this run changed: m7; unchanged: m4)"), work
    done = next(e for e in evs if e.get("event") == "done")
    print(f"kdeploy up, add one worker: {add_s:.1f} s; phases: {done['timings']}")

    applied = [(e["host"], e["kind"], e["target"]) for e in evs if e.get("event") == "change"]
    assert sorted(applied) == sorted((c["host"], c["kind"], c["target"]) for c in planned)
    for h in others:
        files0, units0 = before[h]
        files1, units1 = snapshot(lab, h)
        written = {c["target"] for c in planned if c["host"] == h
                   and c["kind"] in ("file", "block", "binary", "mode")}
        changed = {f for f in files0.keys() | files1.keys() if files0.get(f) != files1.get(f)}
        assert changed <= written, (h, sorted(changed - written))
        assert {w for w in written if files0.get(w) is not None} - changed <= {
            c["target"] for c in planned if c["host"] == h and c["kind"] == "mode"}, h
        restarted = {u for u in UNITS if units0.get(u) != units1.get(u)}
        allowed = {c["target"] for c in planned if c["host"] == h and c["kind"] == "unit-restart"}
        allowed |= {u for c in planned if c["host"] == h and c["kind"] == "run"
                    for u in UNITS if "restart" in c["target"] and u in c["target"]}
        assert restarted <= allowed, (h, restarted, allowed)
    touched = {h for h, _, _ in applied if h != NEW}
    print(f"hosts changed besides {NEW}: {len(touched)} of {len(others)}; changes on them: "
          f"{sum(1 for a in applied if a[0] != NEW)}, on {NEW}: {sum(1 for a in applied if a[0] == NEW)}")

    p, evs, noop_s = up_json(full, art)
    assert_ok(p)
    assert not any(e.get("event") == "change" for e in evs)
    print(f"no-op re-run at 7 nodes: {noop_s:.1f} s")
