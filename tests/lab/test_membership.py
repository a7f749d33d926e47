"""Cluster membership on real lab machines, under an availability probe: 1 control-plane host
grows to 3 (inventory edit + `up`), a non-first control-plane host is removed (3 -> 2), a
worker with a Deployment's pods is removed (drained), a stopped worker is removed with
--force. After each: etcd membership and health, who restarted, load balancers, routes, pod
CIDRs, Node objects, verify and an empty plan.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from kdeploy.components.etcd import ETCDCTL
from tests.lab.test_up import artifacts_dir, assert_ok, events, kdeploy
from tests.lab.test_upgrade import KUBECTL, deploy_workload, describe_probe, start_probe, stop_probe

pytestmark = pytest.mark.lab
FIGURES: dict[str, float] = {}


def write_inventory(full: Path, out: Path, hosts: list[str]) -> Path:
    doc = yaml.safe_load(full.read_text())
    doc["hosts"] = [h for h in doc["hosts"] if h["name"] in hosts]
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def etcd_pids(lab, hosts, unit: str = "etcd") -> dict[str, str]:
    """The unit's main PID and start time per host: unchanged means not restarted."""
    out = {}
    for m in hosts:
        rc, text, _ = lab.run(m, f"systemctl show {unit} -p ExecMainPID -p ExecMainStartTimestamp")
        assert rc == 0
        out[m] = text.strip()
    return out


def members(lab, via: str) -> list[dict]:
    rc, out, err = lab.run(via, f"{ETCDCTL} member list -w json")
    assert rc == 0, err
    return json.loads(out)["members"]


def cluster_health(lab, via: str) -> list[str]:
    rc, out, err = lab.run(via, f"{ETCDCTL} endpoint health --cluster -w json")
    assert rc == 0, out + err
    return sorted(e["endpoint"] for e in json.loads(out) if e["health"])


def lb_backends(lab, node: str) -> list[str]:
    rc, out, _ = lab.run(node, "grep -E '^ *server [^{]' /etc/kubernetes/api-lb/nginx.conf")
    return sorted(line.split()[1] for line in out.splitlines())


def kubectl(lab, args: str, via: str = "m1") -> str:
    rc, out, err = lab.run(via, f"{KUBECTL} {args}")
    assert rc == 0, f"kubectl {args}: {err}"
    return out


def pod_cidrs(inv: Path) -> dict[str, str]:
    name = yaml.safe_load(inv.read_text())["metadata"]["name"]
    return json.loads((inv.parent / ".kdeploy" / name / "pod-cidrs.json").read_text())


def run_timed(name: str, *args: str, timeout: float = 900):
    t = time.monotonic()
    p = kdeploy(*args, timeout=timeout)
    FIGURES[name] = round(time.monotonic() - t, 1)
    return p


@pytest.fixture(scope="module")
def grown(lab_cluster, tmp_path_factory):
    """m1 alone as control plane (+ workers m4-m6), then m2 and m3 added under the probe."""
    art = artifacts_dir()
    lab = lab_cluster(masters=3, workers=3)
    full = Path(lab.inventory)
    d = tmp_path_factory.mktemp("membership")
    inv = write_inventory(full, d / "inventory.yaml", ["m1", "m4", "m5", "m6"])
    assert_ok(run_timed("up 1+3", "up", "-i", str(inv), "--artifacts", str(art), "--json"))
    svc = deploy_workload(lab, art, replicas=3)
    before = {**etcd_pids(lab, ["m1"]), **{f"kubelet@{m}": v for m, v in
                                          etcd_pids(lab, ["m1", "m4"], "kubelet").items()}}
    start_probe(lab, "m4", svc)
    write_inventory(full, inv, ["m1", "m2", "m3", "m4", "m5", "m6"])
    p = run_timed("add 2 control-plane hosts", "up", "-i", str(inv), "--artifacts", str(art), "--json")
    probe = stop_probe(lab, "m4")
    print(f"\n1 -> 3 control-plane hosts: {FIGURES['add 2 control-plane hosts']} s; probes: "
          f"{describe_probe(probe)}")
    assert_ok(p)
    evs = events(p.stdout)
    assert all(c["ok"] for c in evs if c.get("event") == "check"), evs[-20:]
    yield lab, full, inv, art, svc, before, probe, evs
    print(f"\nmembership figures (s): {json.dumps(FIGURES)}")
    lab.down()  # free the six machines before the next module's lab starts


def test_one_control_plane_grows_to_three(grown):
    lab, _, inv, art, _, before, probe, evs = grown
    ms = members(lab, "m1")
    assert sorted(m["name"] for m in ms) == ["m1", "m2", "m3"] and not any(m.get("isLearner") for m in ms)
    assert len(cluster_health(lab, "m1")) == 3
    assert etcd_pids(lab, ["m1"])["m1"] == before["m1"], "the first etcd member restarted"
    # the nodes' load balancers learnt the new apiservers by a reload: no kubelet restarted
    assert {f"kubelet@{m}": v for m, v in etcd_pids(lab, ["m1", "m4"], "kubelet").items()} == \
        {k: v for k, v in before.items() if k.startswith("kubelet@")}
    # joined one at a time: added as a learner, started, promoted
    notes = [(e["host"], e["what"].split(":")[0].split(" ")[-1]) for e in evs if e.get("event") == "note"]
    assert [h for h, _ in notes if h in ("m2", "m3")] == ["m2", "m2", "m3", "m3"], notes
    # the API through a node's load balancer never failed; every LB knows the 3 apiservers
    assert probe["api"]["failed"] == 0, probe
    assert probe["service"]["failed"] == 0, probe
    for node in ("m1", "m4", "m6"):
        assert len(lb_backends(lab, node)) == 3
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:]


def test_a_reset_member_rejoins_under_a_new_id(grown):
    """A member whose host lost its data (here: `reset --host`) is removed from etcd and added
    again by the next `up`, never restarted empty under its old ID."""
    lab, _, inv, art, _, _, _, _ = grown
    old = {m["name"]: m["ID"] for m in members(lab, "m1")}
    p = kdeploy("reset", "-i", str(inv), "--host", "m3", "--yes")
    assert_ok(p)
    assert "m3" in p.stdout + p.stderr
    p = run_timed("re-join a reset member", "up", "-i", str(inv), "--artifacts", str(art), "--json")
    assert_ok(p)
    notes = [e["what"] for e in events(p.stdout) if e.get("event") == "note" and e["host"] == "m3"]
    assert any("stale etcd member" in n for n in notes) and any("promoted" in n for n in notes), notes
    now = {m["name"]: m["ID"] for m in members(lab, "m1")}
    assert sorted(now) == ["m1", "m2", "m3"] and now["m3"] != old["m3"] and now["m1"] == old["m1"]
    assert len(cluster_health(lab, "m1")) == 3


def test_remove_a_control_plane_host(grown):
    lab, full, inv, art, svc, _, _, _ = grown
    survivors = etcd_pids(lab, ["m1", "m2"])
    start_probe(lab, "m4", svc)
    p = run_timed("remove control-plane host", "node", "remove", "-i", str(inv), "m3", "--yes", "--json")
    probe = stop_probe(lab, "m4")
    print(f"\nremove m3 (control plane): {FIGURES['remove control-plane host']} s; probes: {describe_probe(probe)}")
    assert_ok(p)
    assert sorted(m["name"] for m in members(lab, "m1")) == ["m1", "m2"]
    assert len(cluster_health(lab, "m1")) == 2
    assert etcd_pids(lab, ["m1", "m2"]) == survivors, "a surviving etcd member restarted"
    for node in ("m1", "m2", "m4", "m5", "m6"):
        assert lb_backends(lab, node) == sorted(f"{lab.address(m)}:6443" for m in ("m1", "m2"))
    assert "m3" not in kubectl(lab, "get nodes -o name")
    assert probe["api"]["failed"] == 0 and probe["service"]["failed"] == 0, probe
    # m3 itself is bare: no etcd, no kubelet
    rc, out, _ = lab.run("m3", "ls /var/lib/etcd /etc/systemd/system/kubelet.service 2>&1; "
                               "systemctl is-active etcd kubelet")
    assert "No such file" in out and "active\n" not in out.replace("inactive", ""), out
    # the inventory still lists m3: refused, naming it; without it: verify green, plan empty
    p = kdeploy("up", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode != 0 and "m3" in p.stderr and "removed" in p.stderr, p.stderr[-2000:]
    write_inventory(full, inv, ["m1", "m2", "m4", "m5", "m6"])
    p = kdeploy("verify", "-i", str(inv))
    assert p.returncode == 0, p.stdout[-3000:]
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:]


def test_remove_a_worker_drains_it(grown):
    lab, full, inv, art, svc, _, _, _ = grown
    on = lambda n: [ln for ln in kubectl(lab, "-n upgrade-probe get pods -o wide --no-headers").splitlines()
                    if f" {n} " in ln]
    assert on("m5"), "no web pod on m5 to move"
    cidrs = pod_cidrs(inv)
    m5_cidr = cidrs["m5"]
    start_probe(lab, "m4", svc)
    p = run_timed("remove worker", "node", "remove", "-i", str(inv), "m5", "--yes", "--json")
    probe = stop_probe(lab, "m4")
    print(f"\nremove m5 (worker, drained): {FIGURES['remove worker']} s; probes: {describe_probe(probe)}")
    assert_ok(p)
    assert [e["hook"] for e in events(p.stdout) if e.get("event") == "hook" and e["host"] == "m5"][0] == "drain"
    assert probe["service"]["failed"] == 0, probe
    assert "m5" not in kubectl(lab, "get nodes -o name")
    assert not on("m5")
    kubectl(lab, "-n upgrade-probe rollout status deploy/web --timeout=120s")
    for node in ("m1", "m2", "m4", "m6"):
        rc, out, _ = lab.run(node, f"ip route show {m5_cidr}")
        assert out.strip() == "", f"{node} still routes {m5_cidr}: {out}"
    cidrs = pod_cidrs(inv)
    assert "m5" not in cidrs and m5_cidr not in cidrs.values()
    write_inventory(full, inv, ["m1", "m2", "m4", "m6"])
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:]


def test_remove_a_stopped_worker_with_force(grown):
    lab, full, inv, art, _, _, _, _ = grown
    lab.run("m6", "systemctl poweroff", timeout=10)
    time.sleep(5)
    p = kdeploy("node", "remove", "-i", str(inv), "m6", "--yes")
    assert p.returncode != 0 and "--force" in p.stderr, p.stderr[-2000:]
    p = run_timed("remove dead worker", "node", "remove", "-i", str(inv), "m6", "--yes", "--force", "--json")
    assert_ok(p)
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith('{"removed"')][-1])
    assert out["removed"] == ["m6"] and any("reset" in s for s in out["skipped"]["m6"]), out
    assert "m6" not in kubectl(lab, "get nodes -o name")
    write_inventory(full, inv, ["m1", "m2", "m4"])
    p = kdeploy("verify", "-i", str(inv))
    assert p.returncode == 0, p.stdout[-3000:]
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:]
