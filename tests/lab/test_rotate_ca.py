"""`kdeploy certs rotate-ca` on a real lab cluster (1 control-plane + 2 workers, lab `rot`):
a workload with a Service is running; the rotation is killed (SIGKILL) in the middle of its
reissue stage, then run again and finishes; afterwards every trust file and kubeconfig on every
host holds only the new CA, the apiserver's serving certificate chains to it, a new pod calls
the API with its ServiceAccount token, CoreDNS resolves a Service created after the rotation,
nodes are Ready, `kdeploy verify` is green and `kdeploy plan` is empty.

Reuses the lab `rot` when it is up (e.g. `kdeploy lab up --name rot --masters 1 --workers 2
-o /tmp/rot/inv.yaml`), else starts it; brings it down at the end unless KDEPLOY_KEEP_LAB=1.
Needs KDEPLOY_ARTIFACTS (1.37.2).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdeploy.render.images import images_of_dir
from tests.lab.test_up import artifacts_dir, assert_ok, events, kdeploy
from tests.lab.test_upgrade import KUBECTL, deploy_workload, kubectl

pytestmark = pytest.mark.lab
LAB = "rot"
NS = "upgrade-probe"
CA_FILES = {   # host path -> which CA it must hold
    "/etc/kubernetes/pki/ca.crt": "ca",
    "/etc/kubernetes/pki/cluster-signing-ca.crt": "ca",
    "/etc/kubernetes/pki/etcd/ca.crt": "etcd/ca",
    "/etc/kubernetes/pki/front-proxy-ca.crt": "front-proxy-ca",
}
KUBECONFIGS = ("/etc/kubernetes/admin.conf", "/etc/kubernetes/controller-manager.conf",
               "/etc/kubernetes/scheduler.conf", "/etc/kubernetes/kubelet.conf",
               "/etc/kubernetes/kube-proxy.conf")
# on a host: sha256 fingerprints of every certificate in a file, or in a kubeconfig's CA data
FPS = r"""python3 - "$@" <<'EOF'
import base64, hashlib, re, subprocess, sys, json
out = {}
for p in sys.argv[1:]:
    try:
        text = open(p).read()
    except FileNotFoundError:
        continue
    if "certificate-authority-data" in text:
        text = base64.b64decode(re.search(r"certificate-authority-data: (\S+)", text).group(1)).decode()
    ders = [base64.b64decode("".join(b.split())) for b in
            re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)]
    out[p] = [hashlib.sha256(d).hexdigest() for d in ders]
print(json.dumps(out))
EOF"""
# on a node: the apiserver's serving certificate, verified against a CA file, through the LB
TLS_CHECK = r"""python3 - <<'EOF'
import ssl, socket, hashlib
ctx = ssl.create_default_context(cafile="/tmp/new-ca.crt")
ctx.check_hostname = False
with socket.create_connection(("127.0.0.1", 7443), timeout=10) as s:
    with ctx.wrap_socket(s) as t:
        print("verified", t.version())
EOF"""
# on a node: one DNS A query to the cluster DNS Service, answer addresses printed
DNS_QUERY = r"""python3 - "$@" <<'EOF'
import random, socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
qid = random.randint(0, 65535)
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, (server, 53)); r = s.recv(4096)
an = struct.unpack(">H", r[6:8])[0]; i = 12
while r[i]: i += r[i] + 1
i += 5
ips = []
for _ in range(an):
    if r[i] & 0xC0 == 0xC0:
        i += 2
    else:
        while r[i]: i += r[i] + 1
        i += 1
    typ, _, _, ln = struct.unpack(">HHIH", r[i:i + 10]); i += 10
    if typ == 1: ips.append(socket.inet_ntoa(r[i:i + ln]))
    i += ln
print(" ".join(ips))
EOF"""
INCLUSTER = """apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: upgrade-probe}
spec:
  restartPolicy: Never
  containers:
    - name: c
      image: IMAGE
      imagePullPolicy: IfNotPresent
      args: ["inclusterclient", "--poll-interval", "2", "--v", "4"]
"""


@pytest.fixture(scope="module")
def rot_lab():
    from kdeploy.lab import api
    from kdeploy.lab.state import LabState
    from tests.lab.conftest import LabCluster, lab_skip_reason
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    art = artifacts_dir()
    state = LabState(LAB)
    if state.exists() and state.load().phase == "up" and state.load().inventory \
            and Path(state.load().inventory).is_file():
        rec = state.load()
        from dataclasses import asdict
        info = {"netns": rec.netns, "key_file": rec.key_file, "known_hosts": rec.known_hosts,
                "machines": [asdict(m) for m in rec.machines]}
        lab = LabCluster(name=LAB, inventory=Path(rec.inventory), info=info)
    else:
        if state.exists():
            api.down(name=LAB, log=lambda s: None)
        inv = Path("/tmp/rot/inv.yaml")
        inv.parent.mkdir(parents=True, exist_ok=True)
        info = api.up(name=LAB, masters=1, workers=2, output=inv, log=lambda s: None)
        lab = LabCluster(name=LAB, inventory=inv, info=info)
    yield lab, art
    if os.environ.get("KDEPLOY_KEEP_LAB") != "1":
        lab.down()


def state_pki(inv: Path) -> Path:
    return inv.parent / ".kdeploy" / LAB / "pki"


def fingerprint(pem_file: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).fingerprint(hashes.SHA256()).hex()


def host_fps(lab, host: str) -> dict[str, list[str]]:
    rc, out, err = lab.run(host, "set -- " + " ".join([*CA_FILES, *KUBECONFIGS]) + "\n" + FPS)
    assert rc == 0, err
    return json.loads(out)


def rotate_killed_in(inv: Path, stage: str, after_changes: int = 3) -> tuple[float, list[dict]]:
    """Run rotate-ca --json; SIGKILL it once `stage` has applied a few changes."""
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "kdeploy", "certs", "rotate-ca", "-i", str(inv),
                          "--yes", "--json", "--no-verify"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    evs, in_stage, seen = [], False, 0
    try:
        for line in p.stdout:
            evs += events(line)
            if not evs:
                continue
            e = evs[-1]
            if e.get("event") == "rotate-stage":
                in_stage = e["stage"] == stage
            if in_stage and e.get("event") == "change":
                seen += 1
                if seen >= after_changes:
                    os.kill(p.pid, signal.SIGKILL)
                    break
    finally:
        p.wait(timeout=600)
    assert p.returncode == -signal.SIGKILL, f"not killed in {stage}: rc={p.returncode}\n{p.stderr.read()[-3000:]}"
    return time.monotonic() - t, evs


def test_rotate_ca_killed_and_resumed_cluster_serving_throughout(rot_lab):
    lab, art = rot_lab
    inv = Path(lab.inventory)
    assert_ok(kdeploy("up", "-i", str(inv), "--artifacts", str(art)))
    image = images_of_dir(art).agnhost
    deploy_workload(lab, art)
    pki = state_pki(inv)
    old = {ca: fingerprint(pki / f"{ca}.crt") for ca in set(CA_FILES.values())}

    # 1. killed in the middle of the reissue stage (leaves half rolled out)
    killed_s, evs = rotate_killed_in(inv, "reissue")
    rec = json.loads((pki / "rotate-ca.json").read_text())
    assert rec["stage"] == "reissue", rec
    print(f"\nrotate-ca killed after {killed_s:.1f} s in stage {rec['stage']}")
    # the cluster serves in between: the API answers, nodes are Ready
    kubectl(lab, "get nodes")

    # 2. the re-run finishes from there
    t = time.monotonic()
    p = kdeploy("certs", "rotate-ca", "-i", str(inv), "--yes", "--json")
    rotate_s = time.monotonic() - t
    assert_ok(p)
    done = [e for e in events(p.stdout) if e.get("event") == "rotated"][0]
    assert done["resumedAt"] == "reissue", done
    assert [s["stage"] for s in done["stages"]] == ["reissue", "drop"]
    stages = ", ".join(f"{st['stage']} {st['seconds']} s" for st in done["stages"])
    print(f"rotate-ca resumed and finished in {rotate_s:.1f} s ({stages})")
    assert not (pki / "rotate-ca.json").exists()
    new = {ca: fingerprint(pki / f"{ca}.crt") for ca in old}
    assert all(new[ca] != old[ca] for ca in old), "the CAs did not change"
    kept = sorted(pki.rglob("*.old-*.crt"))
    assert {fingerprint(k) for k in kept} >= set(old.values())
    for k in pki.rglob("*.old-*.*"):
        assert k.stat().st_mode & 0o777 == 0o600, k

    # 3. every trust file and kubeconfig on every host: only the new CA
    for m in ("m1", "m2", "m3"):
        fps = host_fps(lab, m)
        assert fps, m
        for path, got in fps.items():
            ca = CA_FILES.get(path, "ca")
            assert got == [new[ca]], f"{m}:{path} holds {got}, want only the new {ca}"
    # the apiserver's serving certificate chains to the new CA (from a worker, through its LB)
    lab.put("m2", pki / "ca.crt", "/tmp/new-ca.crt")
    rc, out, err = lab.run("m2", TLS_CHECK)
    assert rc == 0 and "verified" in out, err
    lab.put("m2", sorted(pki.glob("ca.old-*.crt"))[-1], "/tmp/new-ca.crt")   # the old one fails
    rc, out, err = lab.run("m2", TLS_CHECK)
    assert rc != 0 and "CERTIFICATE_VERIFY_FAILED" in err, (out, err)

    # 4. workloads: a new pod calls the API with its ServiceAccount token (in-cluster config)
    rc, _, err = lab.run("m1", f"cat > /root/ic.yaml <<'EOF'\n"
                               f"{INCLUSTER.replace('NAME', 'incluster').replace('IMAGE', image)}EOF\n"
                               f"{KUBECTL} -n {NS} delete pod incluster --ignore-not-found --wait && "
                               f"{KUBECTL} apply -f /root/ic.yaml && "
                               f"{KUBECTL} -n {NS} wait --for=condition=Ready pod/incluster --timeout=120s")
    assert rc == 0, err
    # agnhost inclusterclient logs "calling /healthz" per request and "status=failed" on an
    # error (what the upstream e2e test checks); wait for a few requests
    deadline = time.monotonic() + 90
    logs = ""
    while time.monotonic() < deadline:
        logs = kubectl(lab, f"-n {NS} logs incluster")
        if logs.count("calling /healthz") >= 3 or "status=failed" in logs:
            break
        time.sleep(3)
    print("incluster client log (tail):", logs.strip().splitlines()[-2:])
    assert logs.count("calling /healthz") >= 3, logs[-2000:]
    assert "status=failed" not in logs and "x509" not in logs, logs[-2000:]

    # CoreDNS (restarted with the new CA) resolves a Service created after the rotation
    kubectl(lab, f"-n {NS} delete service after-rotation --ignore-not-found")
    kubectl(lab, f"-n {NS} create service clusterip after-rotation --tcp=80:8080")
    svc_ip = kubectl(lab, f"-n {NS} get svc after-rotation -o jsonpath={{.spec.clusterIP}}").strip()
    dns_ip = kubectl(lab, "-n kube-system get svc kube-dns -o jsonpath={.spec.clusterIP}").strip()
    deadline, got = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        rc, got, err = lab.run("m3", f"set -- after-rotation.{NS}.svc.cluster.local {dns_ip}\n{DNS_QUERY}")
        if rc == 0 and svc_ip in got.split():
            break
        time.sleep(2)
    assert svc_ip in got.split(), (got, err)
    # the workload deployed before is still served
    web = kubectl(lab, f"-n {NS} get deploy web -o jsonpath={{.status.readyReplicas}}")
    assert web.strip() == "2", web

    # 5. nodes Ready, verify green, plan empty
    nodes = json.loads(kubectl(lab, "get nodes -o json"))["items"]
    assert len(nodes) == 3
    for n in nodes:
        ready = next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
        assert ready == "True", n["metadata"]["name"]
    assert_ok(kdeploy("verify", "-i", str(inv)))
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:]
    # the admin kubeconfig in the state dir trusts only the new CA too
    admin = (inv.parent / ".kdeploy" / LAB / "admin.conf").read_text()
    import base64
    import re
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    ca_data = base64.b64decode(re.search(r"certificate-authority-data: (\S+)", admin).group(1))
    assert [c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(ca_data)] \
        == [new["ca"]]
    print(f"ROTATE-CA killed run {killed_s:.1f} s + resumed run {rotate_s:.1f} s")


def incluster_pod(lab, image: str, name: str) -> None:
    rc, _, err = lab.run("m1", f"cat > /root/{name}.yaml <<'EOF'\n"
                               f"{INCLUSTER.replace('NAME', name).replace('IMAGE', image)}EOF\n"
                               f"{KUBECTL} -n {NS} delete pod {name} --ignore-not-found --wait && "
                               f"{KUBECTL} apply -f /root/{name}.yaml && "
                               f"{KUBECTL} -n {NS} wait --for=condition=Ready pod/{name} --timeout=120s")
    assert rc == 0, err


def incluster_ok(lab, name: str, calls: int = 3) -> None:
    """The pod's in-cluster client made `calls` requests in a row without an error, and never
    had its token or the server's certificate refused. (With one apiserver, its restarts
    refuse connections for a few seconds: "connection refused" is not an auth failure.)"""
    deadline = time.monotonic() + 90
    logs = ""
    ok_since_failure = 0
    while time.monotonic() < deadline:
        logs = kubectl(lab, f"-n {NS} logs {name}")
        tail = logs.rsplit("status=failed", 1)[-1]
        ok_since_failure = tail.count("calling /healthz")
        if ok_since_failure > calls:
            break
        time.sleep(3)
    for bad in ("Unauthorized", "x509:", "unknown authority"):
        assert bad not in logs, f"{name}: {bad} in\n{logs[-2000:]}"
    assert ok_since_failure > calls, logs[-2000:]


def test_rotate_sa_key_waits_for_tokens_then_drops_the_old_key(rot_lab):
    lab, art = rot_lab
    inv = Path(lab.inventory)
    image = images_of_dir(art).agnhost
    pki = state_pki(inv)
    if (pki / "rotate-sa.json").exists():          # left by an earlier, failed run: finish it
        assert_ok(kdeploy("certs", "rotate-sa-key", "-i", str(inv), "--yes", "--drop-after", "0"))
    old_pub = (pki / "sa.pub").read_bytes()
    incluster_pod(lab, image, "before-sa")          # its token is signed by the old key
    incluster_ok(lab, "before-sa")

    # trust + reissue; the drop waits (default 24 h) and the run says so
    t = time.monotonic()
    p = kdeploy("certs", "rotate-sa-key", "-i", str(inv), "--yes", "--json")
    first_s = time.monotonic() - t
    assert_ok(p)
    out = [e for e in events(p.stdout) if e.get("event") == "rotated-sa-key"][0]
    assert out["finished"] is False and out["dropNotBefore"], out
    assert [s["stage"] for s in out["stages"]] == ["trust", "reissue"], out
    new_pub = (pki / "sa.new.pub").read_bytes()
    rc, pub_on_host, _ = lab.run("m1", "cat /etc/kubernetes/pki/sa.pub")
    assert pub_on_host.encode() == old_pub.rstrip(b"\n") + b"\n" + new_pub, "sa.pub must list old+new"
    incluster_ok(lab, "before-sa")                 # an old token still works
    incluster_pod(lab, image, "during-sa")
    incluster_ok(lab, "during-sa")                 # a new token (new key) works
    # a second run before the time is up changes nothing
    p = kdeploy("certs", "rotate-sa-key", "-i", str(inv), "--yes", "--json")
    assert_ok(p)
    out = [e for e in events(p.stdout) if e.get("event") == "rotated-sa-key"][0]
    assert out["finished"] is False and out["stages"] == [], out

    # drop now (as if 24 h had passed)
    t = time.monotonic()
    p = kdeploy("certs", "rotate-sa-key", "-i", str(inv), "--yes", "--json", "--drop-after", "0")
    drop_s = time.monotonic() - t
    assert_ok(p)
    out = [e for e in events(p.stdout) if e.get("event") == "rotated-sa-key"][0]
    assert out["finished"] is True and out["resumedAt"] == "reissue", out
    assert (pki / "sa.pub").read_bytes() == new_pub and not (pki / "rotate-sa.json").exists()
    rc, pub_on_host, _ = lab.run("m1", "cat /etc/kubernetes/pki/sa.pub")
    assert pub_on_host.encode() == new_pub
    incluster_pod(lab, image, "after-sa")
    incluster_ok(lab, "after-sa")
    kubectl(lab, f"-n {NS} delete pod before-sa during-sa after-sa --wait=false")
    assert_ok(kdeploy("verify", "-i", str(inv)))
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(art))
    assert p.returncode == 0, p.stdout[-3000:]
    print(f"\nROTATE-SA-KEY trust+reissue {first_s:.1f} s, drop {drop_s:.1f} s")
