"""Hardening on lab machines (lab `hrd`, 1 control plane + 1 worker; docs/security.md): `up`
is green, a second `up` changes and restarts nothing, the files are root:root 0600 where the
CIS benchmark asks, etcd runs as its own user on a data dir it owns (0700), each kubelet
renewed the client certificate kdeploy gave it through an auto-approved CSR, a privileged pod is
refused outside kube-system (Pod Security baseline), and the audit log holds Secrets access but
no node heartbeats.

Needs: root + systemd-nspawn + debootstrap, and KDEPLOY_ARTIFACTS (a built artifact directory).
"""
from __future__ import annotations

import json
import shlex
import time

import pytest

from kdeploy.pki import paths
from kdeploy.render.context import ADMISSION_CONFIG, AUDIT_POLICY, KUBELET_CONFIG, SCHEDULER_CONFIG
from tests.lab.conftest import LabCluster, module_lab
from tests.lab.test_up import assert_ok, up_json

pytestmark = pytest.mark.lab

LAB = "hrd"
UNITS = "/etc/systemd/system"
KUBECTL = f"kubectl --kubeconfig {paths.ADMIN_CONF}"
CP_PRIVATE = [f"{UNITS}/{u}.service" for u in ("etcd", "kube-apiserver", "kube-controller-manager",
                                                 "kube-scheduler", "kubelet")] + [
    SCHEDULER_CONFIG, AUDIT_POLICY, ADMISSION_CONFIG, KUBELET_CONFIG, paths.ADMIN_CONF,
    paths.CONTROLLER_MANAGER_CONF, paths.SCHEDULER_CONF, paths.KUBELET_CONF, paths.ENCRYPTION_CONFIG]
NODE_PRIVATE = [f"{UNITS}/kubelet.service", KUBELET_CONFIG, paths.KUBELET_CONF, paths.KUBE_PROXY_CONF]


@pytest.fixture(scope="module")
def hrd(tmp_path_factory):
    yield from module_lab(LAB, tmp_path_factory)


def sh(lab: LabCluster, host: str, cmd: str) -> str:
    rc, out, err = lab.run(host, cmd)
    assert rc == 0, f"{host}: {cmd}: rc={rc} {err}"
    return out.strip()


def stat(lab: LabCluster, host: str, files) -> dict[str, str]:
    out = sh(lab, host, "stat -c '%n %a %U:%G' " + " ".join(files))
    return {p: rest for p, _, rest in (line.partition(" ") for line in out.splitlines())}


def test_hardened_cluster_is_green_idempotent_and_rotates_kubelet_client_certs(hrd):
    lab, art = hrd
    p, evs, up_s = up_json(lab.inventory, art)
    assert_ok(p)
    checks = [e for e in evs if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks

    p2, evs2, noop_s = up_json(lab.inventory, art)
    assert_ok(p2)
    assert any(e.get("event") == "no-changes" for e in evs2), p2.stdout[-2000:]
    assert not any(e.get("event") == "change" for e in evs2)
    print(f"\nkdeploy up (hardened, 1+1): {up_s:.1f} s; no-op re-run {noop_s:.1f} s")

    assert stat(lab, "m1", CP_PRIVATE) == {f: "600 root:root" for f in CP_PRIVATE}
    assert stat(lab, "m2", NODE_PRIVATE) == {f: "600 root:root" for f in NODE_PRIVATE}
    assert stat(lab, "m1", ["/var/lib/etcd", paths.ETCD_SERVER_KEY, paths.ETCD_PEER_KEY]) == {
        "/var/lib/etcd": "700 etcd:etcd", paths.ETCD_SERVER_KEY: "600 root:root",
        paths.ETCD_PEER_KEY: "600 root:root"}
    assert sh(lab, "m1", "ps -o user= -C etcd").split() == ["etcd"]
    assert sh(lab, "m1", "find /var/lib/etcd ! -user etcd | head -1") == ""

    # client certificate rotation: on in the config, the binding exists, and each kubelet
    # already swapped kdeploy's certificate for one issued through its own approved CSR
    assert "rotateCertificates: true" in sh(lab, "m2", f"cat {KUBELET_CONFIG}").splitlines()
    sh(lab, "m1", f"{KUBECTL} get clusterrolebinding kdeploy:node-autoapprove-certificate-rotation")
    deadline = time.monotonic() + 180
    while True:
        out = sh(lab, "m1", f"{KUBECTL} get csr -o jsonpath='{{range .items[*]}}"
                            "{.spec.username} {.spec.signerName} {.status.conditions[0].type} "
                            "{.status.certificate}{\"\\n\"}{end}'")
        issued = {line.split()[0] for line in out.splitlines() if len(line.split()) == 4
                  and line.split()[1] == "kubernetes.io/kube-apiserver-client-kubelet"
                  and line.split()[2] == "Approved"}
        if issued >= {"system:node:m1", "system:node:m2"} or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert issued >= {"system:node:m1", "system:node:m2"}, out
    for host in ("m1", "m2"):
        current = sh(lab, host, f"readlink {paths.KUBELET_CLIENT_CURRENT}")
        assert current.startswith(f"{paths.KUBELET_PKI_DIR}/kubelet-client-"), current
        subject = sh(lab, host, f"openssl x509 -in {paths.KUBELET_CLIENT_CURRENT} -noout -subject")
        assert f"system:node:{host}" in subject
    nodes = sh(lab, "m1", f"{KUBECTL} get nodes --no-headers")
    assert [line.split()[1] for line in nodes.splitlines()] == ["Ready", "Ready"], nodes

    # Pod Security: baseline enforced in a namespace without labels (server-side dry run)
    pod = {"spec": {"containers": [{"name": "p", "image": "x", "securityContext": {"privileged": True}}]}}
    rc, out, err = lab.run("m1", f"{KUBECTL} -n default run p --image=x --dry-run=server "
                                 f"--overrides={shlex.quote(json.dumps(pod))}")
    assert rc != 0 and "violates PodSecurity" in err and '"baseline' in err, (rc, out, err)
    # audit log: no node heartbeats; Secrets access (verify's 403 probe) recorded
    log = "/var/log/kubernetes/audit.log"
    leases = sh(lab, "m1", f"grep '\"resource\":\"leases\",\"namespace\":\"kube-node-lease\"' {log} "
                           "| head -3 || true")
    assert leases == "", leases
    assert int(sh(lab, "m1", f"grep -c '\"resource\":\"secrets\"' {log} || true")) > 0
