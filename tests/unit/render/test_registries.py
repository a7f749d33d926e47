"""Registry mirrors: the hosts.toml containerd reads per registry, credentials as a secret."""
import base64
import tomllib

import pytest
import yaml

from kdeploy.errors import InventoryError
from kdeploy.model.load import load_inventory
from kdeploy.plan.desired import desired_state
from tests.unit.render.conftest import SAMPLES


def _inventory(tmp_path, mirrors):
    doc = yaml.safe_load((SAMPLES / "cluster.yaml").read_text())
    doc["spec"].setdefault("containerRuntime", {})["registryMirrors"] = mirrors
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_mirror_with_credentials_is_a_secret_hosts_toml_on_every_node(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    inv = _inventory(tmp_path, [
        {"registry": "registry.k8s.io", "endpoints": ["https://mirror.example:5000/k8s", "http://192.0.2.9:5000"],
         "caFile": "ca.pem", "auth": {"username": "puller", "passwordFile": "pw"}},
        {"registry": "docker.io", "endpoints": ["https://hub-cache.example"]},
    ])
    cluster, _ = load_inventory(inv)
    desired = desired_state(cluster)
    for host, res in desired.items():
        files = {f.path: f for f in res.files}
        k8s = files["/etc/containerd/certs.d/registry.k8s.io/hosts.toml"]
        assert k8s.secret and k8s.mode == 0o600 and k8s.phase == "runtime"
        doc = tomllib.loads(k8s.content.decode())
        assert doc["server"] == "https://registry.k8s.io"
        assert list(doc["host"]) == ["https://mirror.example:5000/k8s", "http://192.0.2.9:5000"]
        h = doc["host"]["https://mirror.example:5000/k8s"]
        assert h["capabilities"] == ["pull", "resolve"]
        assert h["ca"] == "/etc/containerd/certs.d/registry.k8s.io/ca.crt"
        assert h["header"]["Authorization"] == ["Basic " + base64.b64encode(b"puller:s3cret").decode()]
        assert "s3cret" not in repr(k8s)
        assert files["/etc/containerd/certs.d/registry.k8s.io/ca.crt"].content.startswith(b"-----BEGIN")
        hub = files["/etc/containerd/certs.d/docker.io/hosts.toml"]
        assert not hub.secret and hub.mode == 0o644
        assert tomllib.loads(hub.content.decode())["server"] == "https://registry-1.docker.io"
        conf = files["/etc/containerd/config.toml"].content.decode()
        assert "config_path = '/etc/containerd/certs.d'" in conf


def test_no_mirrors_no_files_but_containerd_reads_the_directory(tmp_path):
    cluster, _ = load_inventory(SAMPLES / "cluster.yaml")
    for res in desired_state(cluster).values():
        assert not [f for f in res.files if f.path.startswith("/etc/containerd/certs.d/")]


@pytest.mark.parametrize("mirror, field, text", [
    ({"registry": "registry.k8s.io/x", "endpoints": ["https://m"]}, "registry", "not a registry host"),
    ({"registry": "registry.k8s.io", "endpoints": ["mirror:5000"]}, "endpoints", "not an http(s) URL"),
    ({"registry": "registry.k8s.io", "endpoints": []}, "endpoints", "at least 1"),
    ({"registry": "r.example", "endpoints": ["https://m"], "auth": {"username": "u", "passwordFile": "nope"}},
     "passwordFile", "password file 'nope' does not exist"),
    ({"registry": "r.example", "endpoints": ["https://m"], "caFile": "nope.pem"}, "caFile", "does not exist"),
])
def test_bad_mirror_is_a_clear_inventory_error(tmp_path, mirror, field, text):
    with pytest.raises(InventoryError) as e:
        load_inventory(_inventory(tmp_path, [mirror]))
    assert text in str(e.value) and "registryMirrors" in str(e.value)


def test_a_registry_listed_twice_is_refused(tmp_path):
    m = {"registry": "docker.io", "endpoints": ["https://a"]}
    with pytest.raises(InventoryError, match="docker.io has two entries"):
        load_inventory(_inventory(tmp_path, [m, m]))


def test_unreadable_password_file_is_a_clear_error(tmp_path):
    from kdeploy.errors import KdeployError
    (tmp_path / "pw").write_bytes(b"\xff\xfe not text")
    cluster, _ = load_inventory(_inventory(tmp_path, [
        {"registry": "r.example", "endpoints": ["https://m"], "auth": {"username": "u", "passwordFile": "pw"}}]))
    with pytest.raises(KdeployError) as e:
        desired_state(cluster)
    assert "cannot read password file" in e.value.message and "registryMirrors" in e.value.message
    assert e.value.hint
