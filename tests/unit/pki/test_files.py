"""What each host receives, with which mode/phase/restarts; modes on the deployer's disk."""
from __future__ import annotations

import os
import stat

import pytest
import yaml

from kdeploy.pki import PKIError, load_pki, paths

WORKER = {paths.CA_CRT, paths.KUBELET_CONF, paths.KUBE_PROXY_CONF, paths.KUBELET_SERVING_CRT,
          paths.KUBELET_SERVING_KEY}
ETCD = {paths.ETCD_CA_CRT, paths.ETCD_SERVER_CRT, paths.ETCD_SERVER_KEY, paths.ETCD_PEER_CRT,
        paths.ETCD_PEER_KEY, paths.ETCD_HEALTHCHECK_CLIENT_CRT, paths.ETCD_HEALTHCHECK_CLIENT_KEY}
CONTROL_PLANE = {paths.CA_CRT, paths.CA_KEY, paths.CLUSTER_SIGNING_CRT, paths.APISERVER_CRT, paths.APISERVER_KEY,
                 paths.APISERVER_KUBELET_CLIENT_CRT, paths.APISERVER_KUBELET_CLIENT_KEY,
                 paths.APISERVER_ETCD_CLIENT_CRT, paths.APISERVER_ETCD_CLIENT_KEY, paths.ETCD_CA_CRT,
                 paths.FRONT_PROXY_CA_CRT, paths.FRONT_PROXY_CLIENT_CRT, paths.FRONT_PROXY_CLIENT_KEY,
                 paths.SA_KEY, paths.SA_PUB, paths.ENCRYPTION_CONFIG, paths.ADMIN_CONF,
                 paths.CONTROLLER_MANAGER_CONF, paths.SCHEDULER_CONF}


def by_path(pki, host):
    return {f.path: f for f in pki.files_for(host)}


@pytest.mark.parametrize("host,expected", [
    ("cp1", CONTROL_PLANE | ETCD | WORKER),     # control-plane + etcd + worker
    ("cp2", CONTROL_PLANE | ETCD | WORKER),     # kubelet runs on every host
    ("etcd3", ETCD | WORKER),
    ("w1", WORKER),
])
def test_exact_file_set_per_role(base_pki, host, expected):
    assert set(by_path(base_pki, host)) == expected


def test_worker_gets_no_ca_key_and_no_other_nodes_key(base_pki):
    w1 = base_pki.files_for("w1")
    ca_keys = {(base_pki.dir / f"{n}.key").read_bytes() for n in ("ca", "etcd/ca", "front-proxy-ca")}
    own = {(base_pki.dir / "nodes/w1/kubelet-serving.key").read_bytes(),
           (base_pki.dir / "nodes/w1/kubelet-client.key").read_bytes()}
    import base64
    for f in w1:
        blob = f.content
        for k in ca_keys:
            assert k not in blob and base64.b64encode(k) not in blob, f.path
        for h in base_pki.cluster.hosts:
            if h.name == "w1":
                continue
            for kind in ("kubelet-serving", "kubelet-client"):
                k = (base_pki.dir / f"nodes/{h.name}/{kind}.key").read_bytes()
                assert k not in blob and base64.b64encode(k) not in blob, (f.path, h.name)
    embedded = yaml.safe_load(by_path(base_pki, "w1")[paths.KUBELET_CONF].content)
    key = base64.b64decode(embedded["users"][0]["user"]["client-key-data"])
    assert key in own
    assert by_path(base_pki, "w1")[paths.KUBELET_SERVING_KEY].content in own


def test_no_front_proxy_or_etcd_ca_key_anywhere(base_pki):
    forbidden = {(base_pki.dir / f"{n}.key").read_bytes() for n in ("etcd/ca", "front-proxy-ca")}
    for h in base_pki.cluster.hosts:
        for f in base_pki.files_for(h):
            assert f.content not in forbidden


def test_modes_secret_and_phases(base_pki):
    cp1 = by_path(base_pki, "cp1")
    for f in cp1.values():
        secret = f.path.endswith((".key", ".conf")) or f.path == paths.ENCRYPTION_CONFIG
        assert f.secret is secret, f.path
        assert f.mode == (0o600 if secret else 0o644), f.path
        assert (b"PRIVATE KEY" in f.content) <= f.secret
        assert f.path.startswith("/")
        assert "PRIVATE" not in repr(f)
    assert cp1[paths.ETCD_SERVER_KEY].phase == "etcd" and cp1[paths.ETCD_SERVER_KEY].restarts == ("etcd",)
    assert cp1[paths.ETCD_CA_CRT].phase == "etcd"
    assert set(cp1[paths.ETCD_CA_CRT].restarts) == {"etcd", "kube-apiserver"}
    assert cp1[paths.CA_CRT].phase == "control-plane"
    assert set(cp1[paths.CA_CRT].restarts) == {"kube-apiserver", "kube-controller-manager", "kubelet"}
    assert cp1[paths.CA_KEY].restarts == ("kube-controller-manager",)
    assert cp1[paths.ENCRYPTION_CONFIG].restarts == ("kube-apiserver",)
    assert cp1[paths.SCHEDULER_CONF].restarts == ("kube-scheduler",)
    assert cp1[paths.KUBELET_CONF].phase == "node" and cp1[paths.KUBELET_CONF].restarts == ("kubelet",)
    assert cp1[paths.KUBE_PROXY_CONF].restarts == ("kube-proxy",)
    w1 = by_path(base_pki, "w1")
    assert w1[paths.CA_CRT].phase == "node" and w1[paths.CA_CRT].restarts == ("kubelet",)
    assert by_path(base_pki, "etcd3")[paths.ETCD_CA_CRT].restarts == ("etcd",)


def test_state_dir_modes_on_disk(base_pki):
    state = base_pki.state_dir
    assert state == base_pki.state_dir.parent.parent / ".kdeploy" / "demo"
    for d in (state.parent, state, state / "pki", state / "pki" / "nodes" / "w1", state / "pki" / "etcd"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for root, _dirs, files in os.walk(state):
        for name in files:
            p = os.path.join(root, name)
            mode = stat.S_IMODE(os.stat(p).st_mode)
            if name.endswith(".key") or name in ("encryption.json", ".lock"):
                assert mode == 0o600, p
            else:
                assert mode & 0o022 == 0, p
            assert not name.endswith(".tmp"), p


def test_state_dir_created_0700_under_restrictive_and_loose_umask(tmp_path):
    from kdeploy.pki import ensure_pki

    from .conftest import load, write_inventory
    old = os.umask(0)
    try:
        pki = ensure_pki(load(write_inventory(tmp_path, hosts=[
            {"name": "a", "address": "192.0.2.1", "roles": ["control-plane", "etcd", "worker"]}])))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / ".kdeploy").stat().st_mode) == 0o700
    assert stat.S_IMODE((pki.dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki.dir / "apiserver.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki.dir / "apiserver.crt").stat().st_mode) == 0o644


def test_rendering_is_deterministic(base_pki):
    again = load_pki(base_pki.cluster, base_pki.state_dir)
    for h in base_pki.cluster.hosts:
        a, b = base_pki.files_for(h), again.files_for(h)
        assert [(f.path, f.content, f.mode, f.phase, f.restarts) for f in a] == \
               [(f.path, f.content, f.mode, f.phase, f.restarts) for f in b]
    assert base_pki.admin_kubeconfig() == again.admin_kubeconfig()


def test_unknown_host_and_missing_material(base_pki, tmp_path):
    with pytest.raises(PKIError):
        base_pki.files_for("nope")
    from .conftest import load, write_inventory
    empty = load_pki(load(write_inventory(tmp_path)))
    with pytest.raises(PKIError, match="does not exist yet") as e:
        empty.files_for("w1")
    assert "kdeploy certs" in e.value.hint
    assert all(i.status == "missing" for i in empty.certificates())
    assert not (tmp_path / ".kdeploy").exists()   # load_pki writes nothing
