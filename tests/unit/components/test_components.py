"""The component registry: every artifact file, unit and port has exactly one owner."""
from collections import Counter

from kdeploy.artifacts.catalog import file_specs
from kdeploy.components import COMPONENTS, binary_placement, file_rows, ports_for
from kdeploy.plan.resources import PHASES
from tests.unit.render.conftest import load_sample


def test_every_catalog_file_is_placed_by_exactly_one_component():
    names = Counter(b.name for c in COMPONENTS for b in c.binaries)
    assert {n for n, k in names.items() if k > 1} == set()
    assert {f.name for f in file_specs()} == set(names)
    # a host's new binaries arrive at its turn in the rollout: each in its component's phase
    assert binary_placement("kubelet")[0] == "node"
    assert binary_placement("etcdutl")[0] == "etcd"
    assert binary_placement("kubectl")[0] == "control-plane"
    assert binary_placement("coredns-image")[0] == "images" and binary_placement("coredns-image")[1].import_image


def test_units_files_and_restarts_are_consistent():
    units = [u for c in COMPONENTS for u in c.units]
    assert len(units) == len(set(units))
    paths = [r.path for _, r in file_rows()]
    assert len(paths) == len(set(paths))
    for c, r in file_rows():
        assert r.phase in PHASES
        assert set(r.restarts) <= set(units), (c.name, r.path)
    for c in COMPONENTS:
        for b in c.binaries:
            assert b.restarts is None or b.restarts in c.units, (c.name, b.name)


def test_ports_follow_roles_and_the_load_balancer():
    c = load_sample("cluster")
    assert ports_for(c, c.host("cp1")) == {2379: "etcd", 2380: "etcd", 6443: "kube-apiserver",
                                           10257: "kube-controller-manager", 10259: "kube-scheduler",
                                           10250: "kubelet", 7443: "kdeploy-api-lb"}
    assert ports_for(c, c.host("worker1")) == {10250: "kubelet", 7443: "kdeploy-api-lb"}
    ha = load_sample("ha")                       # external endpoint: no node-local LB
    assert 7443 not in ports_for(ha, ha.host("worker1"))
