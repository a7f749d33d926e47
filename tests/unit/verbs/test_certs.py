"""certs renew's rollout steps and refusals; certs check over (local) hosts."""
from __future__ import annotations

import shlex

from types import SimpleNamespace

from kdeploy.execute.steps import Policy
from kdeploy.pki import ensure_pki, load_pki
from kdeploy.plan.planner import Change, Plan
from kdeploy.pki.identities import FORGET_KUBELET_CLIENT
from kdeploy.verbs.certs import check_hosts, foreign_changes, renew_steps
from tests.unit.pki.conftest import load, write_inventory
from tests.unit.pki.hostfake import DirHost
from tests.unit.render.conftest import load_sample


def test_renew_rolls_like_upgrade_without_drains():
    c = load_sample("ha")
    steps = renew_steps(c, Policy.parse("2"))
    by = {s.name: s for s in steps}
    assert list(by) == ["os", "etcd", "api-lb", "control-plane", "images", "addons",
                        "control-plane nodes", "workers"]
    assert by["etcd"].policy.mode == by["control-plane"].policy.mode == "serial"
    assert by["control-plane nodes"].policy.mode == "serial"
    assert by["workers"].policy.describe() == "batches of 2"
    assert all(not s.before for s in steps)                      # no cordon, no drain
    assert [h.name for h in by["workers"].after] == ["ready"]
    assert {g.what for g in by["etcd"].gates if g.phase == "etcd"} == {"every etcd member healthy"}
    assert "kube-apiserver /readyz" in {g.what for g in by["control-plane"].gates}
    c = load_sample("cluster")                                   # node-local LB: gated on it too
    assert "the API through the load balancer" in {
        g.what for g in renew_steps(c, Policy.parse("1"))[3].gates if g.phase == "control-plane"}


def test_only_certificate_files_and_restarts_are_a_renewal(tmp_path):
    cluster = load(write_inventory(tmp_path))
    dep = SimpleNamespace(cluster=cluster, pki=ensure_pki(cluster))
    ok = Plan((Change("w1", "node", "file", "/etc/kubernetes/kubelet.conf", "update", secret=True),
               Change("w1", "node", "file", "/var/lib/kubelet/pki/kubelet.key", "update", secret=True),
               Change("w1", "node", "run", shlex.join(FORGET_KUBELET_CLIENT), "run"),
               Change("w1", "node", "unit-restart", "kubelet", "restart"),
               Change("cp1", "etcd", "file", "/etc/kubernetes/pki/etcd/peer.crt", "update")))
    assert foreign_changes(ok, dep) == []
    bad = Plan(ok.changes + (
        Change("w1", "node", "file", "/var/lib/kubelet/config.yaml", "update"),
        Change("w1", "etcd", "file", "/etc/kubernetes/pki/etcd/peer.crt", "create"),  # not its file
        Change("w1", "artifacts", "binary", "/usr/local/bin/kubelet", "update"),
        Change("w1", "os", "run", "sysctl -p /etc/sysctl.d/99-kdeploy.conf", "run")))
    assert foreign_changes(bad, dep) == ["w1: update /var/lib/kubelet/config.yaml",
                                         "w1: create /etc/kubernetes/pki/etcd/peer.crt",
                                         "w1: update /usr/local/bin/kubelet",
                                         "w1: run sysctl -p /etc/sysctl.d/99-kdeploy.conf"]


def test_check_reads_every_host_once_and_names_the_unreachable(tmp_path):
    hosts = [{"name": "cp1", "address": "192.0.2.10", "roles": ["control-plane", "etcd"]},
             {"name": "w1", "address": "198.51.100.21", "roles": ["worker"]},
             {"name": "w2", "address": "198.51.100.22", "roles": ["worker"]}]
    cluster = load(write_inventory(tmp_path, hosts=hosts))
    pki = ensure_pki(cluster)
    ts = {}
    for n in ("cp1", "w1"):
        ts[n] = DirHost(tmp_path / "hosts" / n)
        ts[n].install(pki, n)
    ensure_pki(cluster, renew=["nodes/w1/kubelet-serving"])
    rows = check_hosts(cluster, ts, load_pki(cluster), failed={"w2": RuntimeError("timed out")})
    assert [len(t.scripts) for t in ts.values()] == [1, 1]          # one round trip per host
    flagged = [(r.host, r.path, r.status) for r in rows if r.flagged]
    assert flagged == [("w1", "/var/lib/kubelet/pki/kubelet.crt", "mismatch"),
                       ("w2", "-", "unreachable")]
    assert [r.host for r in rows][0] == "cp1" and rows[-1].detail == "timed out"


def test_renew_never_creates_a_ca(tmp_path):
    import pytest
    from kdeploy.errors import PreflightError
    from kdeploy.verbs.certs import refuse_new_roots
    cluster = load(write_inventory(tmp_path))
    ensure_pki(cluster)
    refuse_new_roots(ensure_pki(cluster, renew=True))            # leaves only: fine
    (tmp_path / ".kdeploy/demo/pki/etcd/ca.key").unlink()
    (tmp_path / ".kdeploy/demo/pki/etcd/ca.crt").unlink()
    with pytest.raises(PreflightError, match="has no etcd/ca: certs renew never creates a CA"):
        refuse_new_roots(ensure_pki(cluster))
