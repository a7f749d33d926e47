"""Upgrade preflight (pure: facts -> refusals), steps, and the run lock."""
import pytest

from kdeploy.errors import KdeployError
from kdeploy.execute.lock import RunLock
from kdeploy.execute.steps import Policy
from kdeploy.facts.model import HostFacts
from kdeploy.facts.parse import parse_versions
from kdeploy.verbs.upgrade import (NodeHooks, check_target, skew_problems, upgrade_steps,
                                   version_drift)
from kdeploy.execute.cordons import CordonLedger
from tests.unit.render.conftest import load_sample


def facts(cluster, cp="1.36.3", node="1.36.3", etcd="3.6.14", **per_host):
    out = {}
    for h in cluster.hosts:
        v = {"kubelet": node, "kube-proxy": node}
        if h.has("control-plane"):
            v["kube-apiserver"] = cp
        if h.has("etcd"):
            v["etcd"] = etcd
        v.update(per_host.get(h.name, {}))
        out[h.name] = HostFacts(h.name, versions=v)
    return out


def test_versions_are_read_from_the_binaries_output():
    assert parse_versions("kube-apiserver Kubernetes v1.36.3\nkubelet Kubernetes v1.37.2\n"
                          "etcd etcd Version: 3.6.14\nkube-proxy \n") == {
        "kube-apiserver": "1.36.3", "kubelet": "1.37.2", "etcd": "3.6.14"}


def test_minor_and_patch_upgrades_pass():
    c = load_sample("cluster")                           # 1.37.2
    assert skew_problems(c, facts(c), "1.37.2") == []
    assert skew_problems(c, facts(c, cp="1.37.0", node="1.37.0"), "1.37.2") == []


def test_skipped_minor_is_refused_naming_the_hosts():
    c = load_sample("cluster")
    p = skew_problems(c, facts(c, cp="1.35.4", node="1.35.4"), "1.37.2")
    assert len(p) == 1 and "cp1" in p[0] and "skip a minor" in p[0] and "1.36 first" in p[0]


def test_downgrade_is_refused():
    c = load_sample("cluster")
    p = skew_problems(c, facts(c, cp="1.37.2", node="1.37.2", worker2={"kubelet": "1.38.0"}),
                      "1.37.2")
    assert p and "kubelet on worker2 is newer than 1.37.2" in p[0]
    p = skew_problems(c, facts(c, cp="1.37.3", node="1.37.2"), "1.37.2")
    assert "downgrades are not supported" in p[0]


def test_kubelet_too_old_for_the_skew_policy():
    c = load_sample("cluster")
    p = skew_problems(c, facts(c, cp="1.36.3", node="1.33.0"), "1.37.2")
    assert any("more than 3 minor versions older" in x for x in p)


def test_no_apiserver_means_no_cluster_to_upgrade():
    c = load_sample("cluster")
    assert "kdeploy up" in skew_problems(c, {h.name: HostFacts(h.name) for h in c.hosts}, "1.37.2")[0]


def test_up_sees_a_version_change_and_only_on_the_hosts_that_differ():
    c = load_sample("cluster")
    assert version_drift(c, facts(c, cp="1.37.2", node="1.37.2", etcd="3.7.0")) == {}
    d = version_drift(c, facts(c, cp="1.37.2", node="1.37.2", etcd="3.7.0",
                               worker1={"kubelet": "1.36.3"}))
    assert d == {"worker1": ["kubelet 1.36.3"]}
    assert version_drift(c, {h.name: HostFacts(h.name) for h in c.hosts}) == {}  # bare hosts


def test_to_must_match_the_inventory():
    c = load_sample("cluster")
    check_target(c, "v1.37.2")
    with pytest.raises(KdeployError, match="does not match the inventory"):
        check_target(c, "1.37.3")


def test_rollout_order_and_policies(tmp_path):
    c = load_sample("ha")
    steps = upgrade_steps(c, NodeHooks(c, CordonLedger(tmp_path), c.version), Policy.parse("50%"))
    names = [s.name for s in steps]
    assert names == ["os", "etcd", "api-lb", "control-plane", "images", "addons", "control-plane nodes",
                     "workers"]
    by = {s.name: s for s in steps}
    assert by["etcd"].policy.mode == by["control-plane"].policy.mode == "serial"
    assert by["workers"].hosts == ("worker1", "worker2", "worker3")
    assert [b for b in by["workers"].policy.batches(list(by["workers"].hosts))] == [
        ["worker1", "worker2"], ["worker3"]]
    assert [h.name for h in by["workers"].before] == ["drain"]
    assert [h.name for h in by["workers"].after] == ["ready", "uncordon"]
    gates = {g.what for g in by["control-plane"].gates if g.phase == "control-plane"}
    # an external endpoint (the ha sample): no node-local LB to gate on
    assert gates == {"kube-apiserver /readyz", "controller-manager and scheduler leaders elected"}
    c = load_sample("cluster")
    steps = upgrade_steps(c, NodeHooks(c, CordonLedger(tmp_path), c.version), Policy.parse("1"))
    gates = {g.what for g in steps[2].gates if g.phase == "control-plane"}
    assert gates == {"kube-apiserver /readyz", "the API through the load balancer",
                     "controller-manager and scheduler leaders elected"}
    assert {g.what for g in steps[1].gates if g.phase == "etcd"} == {"every etcd member healthy"}


def test_leader_gate_reads_both_leases_and_their_age(tmp_path):
    """The gate's shell, run for real with a stub kubectl printing a renewTime."""
    import subprocess
    from datetime import datetime, timedelta, timezone
    from kdeploy.components.apiserver import KUBECTL
    from kdeploy.components.controller_manager import LEADERS
    stub = tmp_path / "kubectl"
    for age, ok in ((5, True), (120, False)):
        t = (datetime.now(timezone.utc) - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        stub.write_text(f"#!/bin/sh\necho '{t}'\n")
        stub.chmod(0o755)
        r = subprocess.run(["sh", "-c", LEADERS.cmd.replace(KUBECTL, str(stub))], capture_output=True,
                           text=True)
        assert (r.returncode == 0) == ok, (age, r.stdout, r.stderr)
        if not ok:
            assert "lease kube-controller-manager" in r.stdout


def test_a_second_run_is_refused_while_one_holds_the_cluster(tmp_path):
    with RunLock(tmp_path, "upgrade"):
        with pytest.raises(KdeployError, match=r"another kdeploy run holds this cluster: `kdeploy upgrade`"):
            with RunLock(tmp_path, "up"):
                pass
    with RunLock(tmp_path, "up"):                 # released: the next run goes
        pass


def test_cordon_ledger_survives_a_restart_of_the_process(tmp_path):
    CordonLedger(tmp_path).add("w1")
    CordonLedger(tmp_path).add("w2")
    CordonLedger(tmp_path).remove("w1")
    assert CordonLedger(tmp_path).nodes() == ["w2"]
    assert (tmp_path / "cordoned.json").stat().st_mode & 0o777 == 0o600
