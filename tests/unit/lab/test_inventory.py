import ipaddress

import pytest
import yaml

from kdeploy.errors import LabError
from kdeploy.lab import inventory as inv


def render(masters, workers, tmp_path):
    hosts = inv.topology(masters, workers)
    return inv.render(name="lab", hosts=hosts, key_file=str(tmp_path / "id_ed25519"),
                      known_hosts=str(tmp_path / "known_hosts"), netns="kdeploy-lab")


@pytest.mark.parametrize("masters,workers,expected", [
    (1, 2, [["control-plane", "etcd"], ["worker"], ["worker"]]),
    (3, 2, [["control-plane", "etcd"]] * 3 + [["worker"]] * 2),
    (1, 0, [["control-plane", "etcd", "worker"]]),
    (3, 0, [["control-plane", "etcd", "worker"]] * 3),
])
def test_roles_per_topology(masters, workers, expected, tmp_path):
    data = yaml.safe_load(render(masters, workers, tmp_path))
    assert [h["roles"] for h in data["hosts"]] == expected
    assert [h["name"] for h in data["hosts"]] == [f"m{i + 1}" for i in range(masters + workers)]


def test_explicit_lab_settings_with_comments(tmp_path):
    text = render(1, 2, tmp_path)
    data = yaml.safe_load(text)
    spec = data["spec"]
    assert spec["kubelet"]["failCgroupV1"] is False
    assert spec["kubeProxy"]["conntrackMaxPerCore"] == 0
    assert spec["containerRuntime"]["restrictOOMScoreAdj"] is True
    assert spec["kubernetes"]["version"] == "1.37.2"
    assert spec["artifacts"]["dir"] is None
    ssh = spec["ssh"]
    assert ssh == {"user": "root", "port": 22, "keyFile": str(tmp_path / "id_ed25519"),
                   "knownHostsFile": str(tmp_path / "known_hosts"),
                   "strictHostKeyChecking": True, "netns": "kdeploy-lab"}
    lines = text.splitlines()
    for key in ("failCgroupV1: false", "conntrackMaxPerCore: 0", "restrictOOMScoreAdj: true"):
        i = next(i for i, ln in enumerate(lines) if ln.strip() == key)
        assert lines[i - 1].strip().startswith("#"), f"{key} needs a comment saying why"
    assert "cgroup v1" in text and "nf_conntrack_max" in text


def test_yaml_round_trips(tmp_path):
    data = yaml.safe_load(render(3, 2, tmp_path))
    again = yaml.safe_load(yaml.safe_dump(data))
    assert again == data
    assert data["apiVersion"] == "kdeploy.io/v1alpha1" and data["kind"] == "Cluster"


def test_addresses_on_lab_subnet_and_clear_of_cluster_cidrs(tmp_path):
    data = yaml.safe_load(render(3, 2, tmp_path))
    net = ipaddress.ip_network(inv.DEFAULT_SUBNET)
    addrs = [ipaddress.ip_address(h["address"]) for h in data["hosts"]]
    assert len(set(addrs)) == 5 and all(a in net for a in addrs)
    assert ipaddress.ip_address(inv.gateway()) not in addrs
    for cidr in (inv.POD_CIDR, inv.SERVICE_CIDR):
        assert not net.overlaps(ipaddress.ip_network(cidr))
    with pytest.raises(LabError):
        inv.topology(1, 1, subnet="10.96.0.0/24")


def test_bad_topologies():
    for m, w in ((0, 2), (1, -1), (15, inv.MAX_MACHINES - 14)):
        with pytest.raises(LabError):
            inv.topology(m, w)


def test_loads_with_kdeploy_model(tmp_path):
    load = pytest.importorskip("kdeploy.model.load")
    (tmp_path / "id_ed25519").write_text("x")
    (tmp_path / "known_hosts").write_text("")
    p = tmp_path / "lab.yaml"
    p.write_text(render(1, 2, tmp_path))
    cluster, _warnings = load.load_inventory(p)
    assert len(cluster.hosts) == 3
