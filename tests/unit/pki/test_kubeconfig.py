"""Kubeconfigs (real kubectl) and the encryption config."""
from __future__ import annotations

import base64
import json
import subprocess

import yaml

from kdeploy.pki import paths


def kubectl_view(kubectl, path):
    r = subprocess.run([kubectl, "config", "view", "--raw", "-o", "json", "--kubeconfig", str(path)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_all_kubeconfigs_load_in_kubectl(base_pki, kubectl, tmp_path):
    ca = (base_pki.dir / "ca.crt").read_bytes()
    # kubelet and kube-proxy reach the API through the node-local load balancer
    cases = [("cp1", paths.ADMIN_CONF, "kubernetes-admin", "https://127.0.0.1:6443"),
             ("cp1", paths.CONTROLLER_MANAGER_CONF, "system:kube-controller-manager", "https://127.0.0.1:6443"),
             ("cp2", paths.SCHEDULER_CONF, "system:kube-scheduler", "https://127.0.0.1:6443"),
             ("w1", paths.KUBELET_CONF, "system:node:w1", "https://127.0.0.1:7443"),
             ("w2", paths.KUBE_PROXY_CONF, "system:kube-proxy", "https://127.0.0.1:7443")]
    for host, path, user, server in cases:
        f = next(f for f in base_pki.files_for(host) if f.path == path)
        local = tmp_path / f"{host}-{path.rsplit('/', 1)[1]}"
        local.write_bytes(f.content)
        cfg = kubectl_view(kubectl, local)
        assert cfg["current-context"] == f"{user}@demo"
        assert cfg["clusters"][0]["cluster"]["server"] == server
        assert base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]) == ca
        u = cfg["users"][0]
        assert u["name"] == user
        assert b"PRIVATE KEY" in base64.b64decode(u["user"]["client-key-data"])
        r = subprocess.run([kubectl, "config", "get-contexts", "--kubeconfig", str(local), "-o", "name"],
                           capture_output=True, text=True, check=True)
        assert r.stdout.split() == [f"{user}@demo"]


def test_kubelet_conf_embeds_the_nodes_own_cert(base_pki):
    f = next(f for f in base_pki.files_for("w2") if f.path == paths.KUBELET_CONF)
    user = yaml.safe_load(f.content)["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == \
        (base_pki.dir / "nodes/w2/kubelet-client.crt").read_bytes()
    assert base64.b64decode(user["client-key-data"]) == \
        (base_pki.dir / "nodes/w2/kubelet-client.key").read_bytes()


def test_admin_kubeconfig_for_the_user(base_pki, kubectl, tmp_path):
    p = tmp_path / "admin.conf"
    p.write_bytes(base_pki.admin_kubeconfig())
    cfg = kubectl_view(kubectl, p)
    assert cfg["clusters"][0]["cluster"]["server"] == base_pki.cluster.api_server_url
    p.write_bytes(base_pki.admin_kubeconfig("https://[2001:db8::1]:6443"))
    assert kubectl_view(kubectl, p)["clusters"][0]["cluster"]["server"] == "https://[2001:db8::1]:6443"


def test_encryption_config(base_pki):
    f = next(f for f in base_pki.files_for("cp1") if f.path == paths.ENCRYPTION_CONFIG)
    assert f.secret and f.mode == 0o600 and f.phase == "control-plane"
    doc = yaml.safe_load(f.content)
    assert doc["apiVersion"] == "apiserver.config.k8s.io/v1" and doc["kind"] == "EncryptionConfiguration"
    (res,) = doc["resources"]
    assert res["resources"] == ["secrets"]
    first, last = res["providers"][0], res["providers"][-1]
    assert list(first) == ["secretbox"] and last == {"identity": {}}
    (key,) = first["secretbox"]["keys"]
    assert key["name"] == "key1" and len(base64.b64decode(key["secret"])) == 32
    assert not any(f.path == paths.ENCRYPTION_CONFIG for f in base_pki.files_for("w1"))
