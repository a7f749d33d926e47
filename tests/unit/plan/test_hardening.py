"""Hardening as desired state (docs/security.md): modes and owners of what kdeploy places, the
flags the CIS benchmark reads, the admission configuration, kubelet client certificate rotation."""
import shutil

import pytest
import yaml

from kdeploy.model import defaults, load_inventory
from kdeploy.pki import ensure_pki, paths
from kdeploy.pki.identities import FORGET_KUBELET_CLIENT
from kdeploy.plan.desired import desired_state
from kdeploy.plan.planner import FileState, Observed, outcome, plan
from kdeploy.render.context import ADMISSION_CONFIG, AUDIT_POLICY, ETCD_SYSUSERS, KUBELET_CONFIG, SCHEDULER_CONFIG
from tests.conftest import SAMPLES

UNITS = "/etc/systemd/system"
PRIVATE = {  # CIS 1.1.1-1.1.8, 4.1.1, 4.1.9: root:root 0600
    f"{UNITS}/etcd.service", f"{UNITS}/kube-apiserver.service", f"{UNITS}/kube-controller-manager.service",
    f"{UNITS}/kube-scheduler.service", f"{UNITS}/kubelet.service", f"{defaults.K8S_DIR}/etcd-bootstrap.env",
    SCHEDULER_CONFIG, AUDIT_POLICY, ADMISSION_CONFIG, KUBELET_CONFIG, paths.ENCRYPTION_CONFIG,
    paths.ADMIN_CONF, paths.CONTROLLER_MANAGER_CONF, paths.SCHEDULER_CONF, paths.KUBELET_CONF,
    paths.KUBE_PROXY_CONF,
}


@pytest.fixture(scope="module")
def cluster_desired(tmp_path_factory):
    inv = tmp_path_factory.mktemp("hard") / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    return cluster, desired_state(cluster, pki=ensure_pki(cluster))


def _files(desired, host):
    return {f.path: f for f in desired[host].files}


def test_component_files_are_root_0600(cluster_desired):
    cluster, desired = cluster_desired
    cp = _files(desired, "cp1")
    for p in PRIVATE:
        f = cp[p]
        assert (f.mode, f.owner, f.group) == (0o600, "root", "root"), p
    worker = _files(desired, "worker1")
    for p in (f"{UNITS}/kubelet.service", KUBELET_CONFIG, paths.KUBELET_CONF, paths.KUBE_PROXY_CONF):
        assert (worker[p].mode, worker[p].owner) == (0o600, "root"), p
    # keys are 0600 everywhere; no file kdeploy renders is group/world writable
    for res in desired.values():
        for f in res.files:
            assert not f.mode & 0o022, f.path
            if f.path.endswith(".key"):
                assert f.mode == 0o600, f.path


def test_etcd_runs_as_its_own_user(cluster_desired):
    cluster, desired = cluster_desired
    cp = _files(desired, "cp1")
    # every PKI file stays root:root (CIS 1.1.19); etcd gets its keys as systemd credentials
    for f in cp.values():
        if f.path.startswith(paths.PKI + "/"):
            assert (f.owner, f.group) == ("root", "root"), f.path
    sysusers = cp[ETCD_SYSUSERS]
    assert sysusers.phase == "os" and sysusers.run_on_change == (("systemd-sysusers", ETCD_SYSUSERS),)
    assert sysusers.content.decode().splitlines()[-1].split()[:2] == ["u", "etcd"]
    unit = cp[f"{UNITS}/etcd.service"].content.decode()
    for line in ("User=etcd", "Group=etcd", "StateDirectory=etcd", "StateDirectoryMode=0700",
                 f"LoadCredential=server.key:{paths.ETCD_SERVER_KEY}",
                 f"LoadCredential=peer.key:{paths.ETCD_PEER_KEY}"):
        assert line in unit.splitlines()
    flags = _flags(unit)
    assert flags["key-file"] == "${CREDENTIALS_DIRECTORY}/server.key"
    assert flags["peer-key-file"] == "${CREDENTIALS_DIRECTORY}/peer.key"
    assert flags["cert-file"] == paths.ETCD_SERVER_CRT and flags["data-dir"] == defaults.ETCD_DATA_DIR
    assert defaults.ETCD_DATA_DIR == "/var/lib/etcd"        # StateDirectory is relative to /var/lib
    assert ETCD_SYSUSERS not in _files(desired, "worker1")  # only etcd hosts get the user


def test_an_owner_changed_by_hand_is_put_back(cluster_desired):
    _, desired = cluster_desired
    obs = outcome(desired)
    key = _files(desired, "cp1")[paths.ETCD_SERVER_KEY]
    files = dict(obs["cp1"].files)
    files[key.path] = FileState(key.sha256, 0o640, "etcd", "etcd")
    p = plan({"cp1": desired["cp1"]}, {"cp1": Observed(files=files, units=obs["cp1"].units,
                                                       contents=obs["cp1"].contents)})
    assert [(c.kind, c.target, c.reason) for c in p.changes] == [
        ("mode", key.path, "mode 0o640 -> 0o600, owner etcd -> root, group etcd -> root")]


def _flags(unit: str) -> dict[str, str]:
    out = {}
    for line in unit.splitlines():
        line = line.strip().rstrip("\\").strip()
        if line.startswith("--"):
            k, _, v = line[2:].partition("=")
            out[k] = v
    return out


def test_cis_flags(cluster_desired):
    _, desired = cluster_desired
    cp = _files(desired, "cp1")
    api = _flags(cp[f"{UNITS}/kube-apiserver.service"].content.decode())
    assert api["service-account-extend-token-expiration"] == "false"
    assert api["profiling"] == "false" and api["anonymous-auth"] == "false"
    assert set(api["enable-admission-plugins"].split(",")) == {"NodeRestriction", "PodSecurity",
                                                               "DenyServiceExternalIPs"}
    assert api["admission-control-config-file"] == ADMISSION_CONFIG
    suites = ",".join(defaults.TLS_CIPHER_SUITES)
    assert api["tls-cipher-suites"] == suites
    assert _flags(cp[f"{UNITS}/etcd.service"].content.decode())["cipher-suites"] == suites
    assert _flags(cp[f"{UNITS}/kube-scheduler.service"].content.decode())["profiling"] == "false"
    assert yaml.safe_load(cp[SCHEDULER_CONFIG].content)["enableProfiling"] is False
    assert _flags(cp[f"{UNITS}/kube-controller-manager.service"].content.decode())["profiling"] == "false"
    for s in defaults.TLS_CIPHER_SUITES:       # AEAD with ECDHE only
        assert s.startswith("TLS_ECDHE_") and ("GCM" in s or "CHACHA20" in s)


def test_admission_config(cluster_desired):
    _, desired = cluster_desired
    doc = yaml.safe_load(_files(desired, "cp1")[ADMISSION_CONFIG].content)
    assert doc["kind"] == "AdmissionConfiguration"
    (ps,) = [p for p in doc["plugins"] if p["name"] == "PodSecurity"]
    conf = ps["configuration"]
    assert conf["kind"] == "PodSecurityConfiguration"
    assert (conf["defaults"]["enforce"], conf["defaults"]["warn"], conf["defaults"]["audit"]) == (
        "baseline", "restricted", "restricted")
    assert conf["exemptions"]["namespaces"] == ["kube-system"]
    # read by the apiserver at start: a change restarts it
    assert _files(desired, "cp1")[ADMISSION_CONFIG].restarts == ("kube-apiserver",)
    assert ADMISSION_CONFIG not in _files(desired, "worker1")


def test_kubelet_config_and_client_rotation(cluster_desired):
    _, desired = cluster_desired
    for host in ("cp1", "worker1"):
        files = _files(desired, host)
        conf = yaml.safe_load(files[KUBELET_CONFIG].content)
        assert conf["rotateCertificates"] is True and conf["serverTLSBootstrap"] is False
        assert conf["seccompDefault"] is True and conf["podPidsLimit"] == defaults.KUBELET_POD_PIDS_LIMIT
        assert conf["tlsCipherSuites"] == list(defaults.TLS_CIPHER_SUITES)
        assert conf["readOnlyPort"] == 0 and conf["authentication"]["anonymous"]["enabled"] is False
        # kdeploy's kubeconfig is the seed; a new one from kdeploy empties the kubelet's store
        kc = files[paths.KUBELET_CONF]
        assert kc.run_on_change == (FORGET_KUBELET_CLIENT,) and kc.restarts == ("kubelet",)
        assert paths.KUBELET_CLIENT_CURRENT not in files      # the kubelet's own, never kdeploy's
    assert "kubelet-client-*.pem" in FORGET_KUBELET_CLIENT[-1]
    assert "kubelet.crt" not in FORGET_KUBELET_CLIENT[-1]


def test_node_client_renewal_is_auto_approved(cluster_desired):
    _, desired = cluster_desired
    rbac = next(f for f in desired["cp1"].files if f.path.endswith("apiserver-to-kubelet-rbac.yaml"))
    docs = list(yaml.safe_load_all(rbac.content))
    (b,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"
            and d["roleRef"]["name"].endswith("certificatesigningrequests:selfnodeclient")]
    assert b["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]


def test_audit_policy_drops_heartbeats_keeps_security_events(cluster_desired):
    _, desired = cluster_desired
    rules = yaml.safe_load(_files(desired, "cp1")[AUDIT_POLICY].content)["rules"]

    def level(user, groups, verb, group, resource, ns=None):
        """The level of the first matching rule (the apiserver's semantics, for resource requests)."""
        for r in rules:
            if "users" in r and user not in r["users"]:
                continue
            if "userGroups" in r and not set(groups) & set(r["userGroups"]):
                continue
            if "verbs" in r and verb not in r["verbs"]:
                continue
            if "nonResourceURLs" in r:
                continue
            if "namespaces" in r and ns not in r["namespaces"]:
                continue
            if "resources" in r and not any(
                    g.get("group", "") == group and ("resources" not in g or resource in g["resources"])
                    for g in r["resources"]):
                continue
            return r["level"]
        return None

    node = ("system:node:w1", ["system:nodes"])
    assert level(*node, "update", "coordination.k8s.io", "leases", "kube-node-lease") == "None"
    assert level(*node, "patch", "", "nodes/status") == "None"
    assert level(*node, "get", "", "secrets", "default") == "Metadata"
    assert level("system:kube-scheduler", [], "list", "", "pods") == "None"
    assert level("alice", [], "get", "", "secrets", "default") == "Metadata"
    assert level("alice", [], "create", "", "configmaps", "default") == "Metadata"
    assert level("alice", [], "create", "", "pods/exec", "default") == "Metadata"
    assert level("alice", [], "create", "rbac.authorization.k8s.io", "clusterrolebindings") == "RequestResponse"
    assert level("alice", [], "list", "", "endpoints", "default") == "None"
    assert level("alice", [], "create", "apps", "deployments", "default") == "Request"
    assert level("alice", [], "create", "authentication.k8s.io", "tokenreviews") == "Metadata"
    assert any("/healthz*" in r.get("nonResourceURLs", ()) and r["level"] == "None" for r in rules)


def test_second_plan_is_empty(cluster_desired):
    _, desired = cluster_desired
    assert plan(desired, outcome(desired)).empty
