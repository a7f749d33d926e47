import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdeploy.errors import InventoryError, KdeployError
from kdeploy.model import Role, load_inventory
from tests.conftest import SAMPLES

BASE = textwrap.dedent("""\
    apiVersion: kdeploy.io/v1alpha1
    kind: Cluster
    metadata:
      name: demo
    spec:
      network:
        podCIDR: 10.244.0.0/16
        serviceCIDR: 10.96.0.0/12
    hosts:
      - name: cp1
        address: 192.0.2.10
        roles: [control-plane, etcd]
      - name: w1
        address: 192.0.2.11
        roles: [worker]
    """)


def doc(**patch):
    d = yaml.safe_load(BASE)
    for path, value in patch.items():
        cur = d
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur.setdefault(k, {})
        last = keys[-1]
        if value is None:
            del cur[int(last) if last.isdigit() else last]
        elif last.isdigit():
            cur[int(last)] = value
        else:
            cur[last] = value
    return yaml.safe_dump(d, sort_keys=False)


def error_of(write_inv, text) -> InventoryError:
    with pytest.raises(InventoryError) as ei:
        load_inventory(write_inv(text))
    return ei.value


@pytest.mark.parametrize("name", ["single-node.yaml", "cluster.yaml", "ha.yaml"])
def test_samples_are_valid(name):
    cluster, warnings = load_inventory(SAMPLES / name)
    assert cluster.control_plane and cluster.etcd and cluster.workers
    assert warnings == []


def test_defaults_and_derived_values(write_inv):
    c, _ = load_inventory(write_inv(BASE))
    assert c.version == "1.37.2"
    assert c.kubernetes_service_ip == "10.96.0.1"
    assert c.dns_service_ip == "10.96.0.10"
    assert c.api_server_url == "https://192.0.2.10:6443"
    assert c.node_pod_cidrs == {"cp1": "10.244.0.0/24", "w1": "10.244.1.0/24"}
    assert c.host("w1").roles == (Role.worker,)


def test_unknown_key_names_file_line_and_field(write_inv):
    e = error_of(write_inv, BASE.replace("    serviceCIDR:", "    colour: blue\n    serviceCIDR:"))
    assert "spec.network.colour" in e.message and "unknown field" in e.message
    assert e.line == 8 and e.file.endswith("cluster.yaml")
    assert "spelling" in e.hint


def test_wrong_type(write_inv):
    e = error_of(write_inv, doc(spec__network__nodeCIDRMaskSize="big"))
    assert "nodeCIDRMaskSize" in e.message


def test_duplicate_names_and_addresses(write_inv):
    e = error_of(write_inv, doc(hosts__1__name="cp1", hosts__1__address="192.0.2.10"))
    assert "duplicate host name 'cp1'" in e.message
    assert "duplicate address '192.0.2.10'" in e.message


def test_duplicate_yaml_key(write_inv):
    e = error_of(write_inv, BASE.replace("kind: Cluster", "kind: Cluster\nkind: Cluster"))
    assert "duplicate key 'kind'" in e.message and e.line == 3


def test_no_control_plane(write_inv):
    e = error_of(write_inv, doc(hosts__0__roles=["etcd"]))
    assert "no host has the role control-plane" in e.message


def test_etcd_zero_refused_even_warned(write_inv):
    assert "no host has the role etcd" in error_of(write_inv, doc(hosts__0__roles=["control-plane"])).message
    _, warnings = load_inventory(write_inv(doc(hosts__1__roles=["worker", "etcd"])))
    assert any("even" in w.message for w in warnings)


def test_overlapping_networks(write_inv):
    e = error_of(write_inv, doc(spec__network__serviceCIDR="10.244.0.0/20"))
    assert "overlaps the pod CIDR" in e.message
    e = error_of(write_inv, doc(hosts__1__address="10.244.3.4"))
    assert "lies inside the podCIDR" in e.message


def test_pod_cidr_too_small(write_inv):
    load_inventory(write_inv(doc(spec__network__podCIDR="10.244.0.0/24",
                                 spec__network__nodeCIDRMaskSize=25)))  # 2 hosts fit two /25s
    three = doc(spec__network__podCIDR="10.244.0.0/25", spec__network__nodeCIDRMaskSize=26)
    three = three.replace("hosts:\n", "hosts:\n- {name: w2, address: 192.0.2.12, roles: [worker]}\n")
    e = error_of(write_inv, three)
    assert "room for 2 nodes" in e.message and "has 3" in e.message


def test_service_cidr_too_small(write_inv):
    e = error_of(write_inv, doc(spec__network__serviceCIDR="10.96.0.0/30"))
    assert "too small" in e.message and "kubernetes service IP" in e.message


def test_unsupported_version(write_inv):
    e = error_of(write_inv, doc(spec__kubernetes={"version": "1.30.0"}))
    assert "1.30 is not supported" in e.message and "1.37" in e.hint


def test_invalid_hostname(write_inv):
    e = error_of(write_inv, doc(hosts__1__name="Worker_1"))
    assert "RFC 1123" in e.message and "hosts[1].name" in e.message


def test_missing_key_file(write_inv, tmp_path):
    e = error_of(write_inv, doc(spec__ssh={"keyFile": "keys/none"}))
    assert "SSH key file 'keys/none' does not exist" in e.message
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "none").write_text("k")
    load_inventory(write_inv(doc(spec__ssh={"keyFile": "keys/none"})))  # relative to inventory


def test_every_error_listed_at_once(write_inv):
    e = error_of(write_inv, doc(hosts__1__name="Bad_Name", spec__kubernetes={"version": "2.0.0"}))
    assert "not supported" in e.message and "Bad_Name" in e.message


def test_not_yaml(write_inv):
    e = error_of(write_inv, "apiVersion: [unclosed\n")
    assert "not valid YAML" in e.message and e.line


def test_kubespray_ini(write_inv):
    p = write_inv(textwrap.dedent("""\
        [all]
        node1 ansible_host=192.0.2.10
        node2 ansible_host=192.0.2.11 ansible_user=debian ansible_become=true

        [all:vars]
        kube_version=v1.36.3
        kube_pods_subnet=10.233.64.0/18
        kube_service_addresses=10.233.0.0/18

        [kube_control_plane]
        node1
        [etcd]
        node1
        [kube_node]
        node2
        [k8s_cluster:children]
        kube_control_plane
        kube_node
        """), "hosts.ini")
    c, _ = load_inventory(p)
    assert [(h.name, h.address) for h in c.hosts] == [("node1", "192.0.2.10"), ("node2", "192.0.2.11")]
    assert c.host("node1").roles == (Role.control_plane, Role.etcd)
    assert c.version == "1.36.3" and c.spec.network.pod_cidr == "10.233.64.0/18"
    assert c.ssh_for(c.host("node2")).user == "debian" and c.ssh_for(c.host("node2")).sudo


def test_kubespray_yaml(write_inv):
    p = write_inv(textwrap.dedent("""\
        all:
          hosts:
            node1: {ansible_host: 192.0.2.10}
            node2: {ansible_host: 192.0.2.11}
          children:
            kube_control_plane: {hosts: {node1: {}}}
            etcd: {hosts: {node1: {}}}
            kube_node: {hosts: {node2: {}}}
            k8s_cluster: {children: {kube_control_plane: {}, kube_node: {}}}
        """), "hosts.yaml")
    c, _ = load_inventory(p)
    assert c.host("node2").roles == (Role.worker,)


# --- garbage in, KdeployError out --------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                     st.sampled_from(["10.0.0.0/8", "192.0.2.1", "control-plane", "etcd", "1.37.2"]))
_keys = st.sampled_from(["apiVersion", "kind", "metadata", "spec", "hosts", "name", "address",
                         "roles", "network", "podCIDR", "serviceCIDR", "ssh", "port", "x"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(_keys, _values, max_size=6))
def test_garbage_gives_kdeploy_error(write_inv, data):
    p = write_inv(yaml.safe_dump(data))
    try:
        load_inventory(p)
    except KdeployError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patch=st.fixed_dictionaries({}, optional={
    "hosts__0__address": _scalars, "hosts__1__roles": _values, "spec__network__podCIDR": _scalars,
    "spec__network__serviceCIDR": _scalars, "spec__network__nodeCIDRMaskSize": _scalars,
    "spec__controlPlane": _values, "spec__kubernetes": _values, "hosts__0__podCIDR": _scalars}))
def test_mutated_valid_inventory_gives_kdeploy_error(write_inv, patch):
    patch = {k: ("" if v is None else v) for k, v in patch.items()}
    try:
        load_inventory(write_inv(doc(**patch)))
    except KdeployError:
        pass


def test_explicit_pod_cidrs_must_not_overlap_and_count_against_capacity(write_inv):
    e = error_of(write_inv, doc(hosts__0__podCIDR="10.244.5.0/24", hosts__1__podCIDR="10.244.5.0/24"))
    assert "overlaps hosts[0].podCIDR" in e.message
    # a /23 pod range: one explicit /24 leaves room for one more node, not two
    three = doc(spec__network__podCIDR="10.244.0.0/23", hosts__0__podCIDR="10.244.0.0/24")
    three = three.replace("hosts:\n", "hosts:\n- {name: w2, address: 192.0.2.12, roles: [worker]}\n")
    e = error_of(write_inv, three)
    assert "room for 1 more nodes" in e.message


@pytest.mark.parametrize("endpoint", ["api.example.test:abc", "192.0.2.10:99999", ":6443"])
def test_bad_endpoint_port(write_inv, endpoint):
    e = error_of(write_inv, doc(spec__controlPlane={"endpoint": endpoint}))
    assert "spec.controlPlane.endpoint" in e.message


def test_executable_ansible_inventory_is_never_run(write_inv, tmp_path):
    marker = tmp_path / "ran"
    p = write_inv(f"#!/bin/sh\ntouch {marker}\necho '{{}}'\n", "inv.sh")
    p.chmod(0o755)
    with pytest.raises(KdeployError):
        load_inventory(p)
    assert not marker.exists()


@pytest.mark.parametrize("address", ["192.0.2.300", "10.1.1", "256.1.1.1", "1.2.3.4.5"])
def test_a_mistyped_ipv4_address_is_not_taken_as_a_host_name(write_inv, address):
    e = error_of(write_inv, textwrap.dedent(f"""\
        apiVersion: kdeploy.io/v1alpha1
        kind: Cluster
        hosts:
          - {{name: n1, address: "{address}", roles: [control-plane, etcd, worker]}}
        """))
    assert f"'{address}' is not an IP address" in e.message and e.field == "hosts[0].address"
    assert e.line == 4


def test_a_host_named_only_in_a_group_is_warned_about_or_refused(write_inv):
    ini = textwrap.dedent("""\
        [all]
        node1 ansible_host=192.0.2.10
        [kube_control_plane]
        node1
        [etcd]
        node1
        [kube_node]
        node2
        """)
    c, warnings = load_inventory(write_inv(ini, "hosts.ini"))
    assert c.host("node2").address == "node2"
    w = [str(x) for x in warnings if "node2" in str(x)]
    assert w and "host node2 (group kube_node) has no address" in w[0] and "ansible_host" in w[0]
    e = error_of(write_inv, ini.replace("[etcd]\nnode1", "[etcd]\nnode1\netcd2"))
    assert "host etcd2 (group etcd) has no address" in e.message and "peer URL" in e.message


def test_preloaded_images_valid_patterns_load(write_inv):
    c, warnings = load_inventory(write_inv(doc(spec__kubelet={"preloadedImages": [
        "registry.example.com/team/app", "localhost:5000/tools", "registry.example.com/mirror/*"]})))
    assert c.spec.kubelet.preloaded_images == (
        "registry.example.com/team/app", "localhost:5000/tools", "registry.example.com/mirror/*")


@pytest.mark.parametrize("pattern,why", [
    ("registry.example.com/app:1.0", "without a tag or digest"),
    ("registry.example.com/app@sha256:" + "a" * 64, "without a tag or digest"),
    ("registry.example.com/*/app", "only a final '/*' wildcard"),
    ("registry.example.com/app*", "only a final '/*' wildcard"),
    ("/*", "at least a registry host name"),
    (" registry.example.com/app", "leading or trailing spaces"),
    ("registry.example.com/App", "not a valid image name"),
    ("", "non-empty"),
    ("nginx", "full name with its registry"),          # kubelet 1.35 would not start
    ("team/app", "full name with its registry"),
    ("docker.io/nginx", "Docker Hub names in full"),
])
def test_preloaded_images_bad_pattern_is_named_with_its_index(write_inv, pattern, why):
    e = error_of(write_inv, doc(spec__kubelet={"preloadedImages": ["ok.example.com/x", pattern]}))
    assert "spec.kubelet.preloadedImages[1]" in e.message and why in e.message, e.message
    assert "/*" in e.hint or "/*" in e.message


def test_kubelet_eviction_thresholds_load_and_bad_ones_are_named(write_inv):
    c, _ = load_inventory(write_inv(doc(spec__kubelet={"evictionHard": {
        "imagefs.available": "1Gi", "nodefs.available": "5%"}})))
    assert c.spec.kubelet.eviction_hard == {"imagefs.available": "1Gi", "nodefs.available": "5%"}
    e = error_of(write_inv, doc(spec__kubelet={"evictionHard": {"disk.free": "1Gi"}}))
    assert "spec.kubelet.evictionHard.disk.free" in e.message and "unknown eviction signal" in e.message
    e = error_of(write_inv, doc(spec__kubelet={"evictionHard": {"imagefs.available": "lots"}}))
    assert "'lots' is not a quantity or a percentage" in e.message and "1Gi" in e.hint
