"""etcd backup and restore on a real HA lab cluster (3 control-plane+etcd hosts, 1 worker):
ConfigMap A, backup, B created and A deleted, restore: A is back, B gone, a Secret still
decrypts, every member healthy, nodes Ready, verify green, plan empty. A corrupted or truncated
snapshot is refused before anything stops; a restore that failed half way is finished by
running it again.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from kdeploy.components.etcd import ETCDCTL
from tests.lab.test_up import artifacts_dir, assert_ok, kdeploy
from tests.lab.test_upgrade import KUBECTL

pytestmark = pytest.mark.lab
FIGURES: dict[str, float] = {}


def k(lab, args: str, check: bool = True) -> tuple[int, str]:
    rc, out, err = lab.run("m1", f"{KUBECTL} {args}")
    assert rc == 0 or not check, f"kubectl {args}: {err}"
    return rc, out + err


def apiserver_started(lab) -> dict[str, str]:
    return {m: lab.run(m, "systemctl show kube-apiserver -p ExecMainPID")[1].strip() for m in ("m1", "m2", "m3")}


@pytest.fixture(scope="module")
def ha(lab_cluster):
    lab = lab_cluster(masters=3, workers=1)
    inv = Path(lab.inventory)
    assert_ok(kdeploy("up", "-i", str(inv), "--artifacts", str(artifacts_dir()), "--json"))
    yield lab, inv
    print(f"\netcd figures (s): {json.dumps(FIGURES)}")
    lab.down()


def test_backup_then_restore_brings_the_cluster_back(ha, tmp_path):
    lab, inv = ha
    k(lab, "create configmap restore-a --from-literal=k=a")
    k(lab, "create secret generic restore-s --from-literal=p=before")
    t = time.monotonic()
    p = kdeploy("etcd", "backup", "-i", str(inv), "--json")
    FIGURES["backup"] = round(time.monotonic() - t, 1)
    assert_ok(p)
    b = json.loads(p.stdout.strip().splitlines()[-1])
    snap = Path(b["path"])
    assert snap.stat().st_mode & 0o777 == 0o600 and b["members"] == ["m1", "m2", "m3"]
    assert Path(f"{snap}.sha256").read_text().split()[0] == b["sha256"] and b["keys"] > 0
    assert json.loads(Path(f"{snap}.json").read_text())["etcd_cluster_id"]
    k(lab, "create configmap restore-b --from-literal=k=b")
    k(lab, "delete configmap restore-a")

    # a healthy cluster is refused without --force; bad snapshots before anything stops
    before = apiserver_started(lab)
    p = kdeploy("etcd", "restore", "-i", str(inv), str(snap), "--yes")
    assert p.returncode != 0 and "pass --force" in p.stderr, p.stderr[-2000:]
    trunc = tmp_path / "trunc.db"
    trunc.write_bytes(snap.read_bytes()[: b["bytes"] // 2])
    shutil.copy(f"{snap}.sha256", f"{trunc}.sha256")
    p = kdeploy("etcd", "restore", "-i", str(inv), str(trunc), "--yes", "--force")
    assert p.returncode != 0 and "corrupted or truncated" in p.stderr, p.stderr[-2000:]
    bad = tmp_path / "bad.db"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    bad.write_bytes(bytes(data))
    import hashlib
    Path(f"{bad}.sha256").write_text(f"{hashlib.sha256(bytes(data)).hexdigest()}  bad.db\n")
    p = kdeploy("etcd", "restore", "-i", str(inv), str(bad), "--yes", "--force")
    assert p.returncode != 0 and "does not restore" in p.stderr and "nothing was stopped" in p.stderr, \
        p.stderr[-2000:]
    assert apiserver_started(lab) == before, "a refused restore stopped an apiserver"

    # a restore that fails half way (m3 cannot restore) is finished by running it again
    assert lab.run("m3", "mv /usr/local/bin/etcdutl /usr/local/bin/etcdutl.away")[0] == 0
    try:
        p = kdeploy("etcd", "restore", "-i", str(inv), str(snap), "--yes", "--force")
        assert p.returncode != 0 and "m3" in p.stderr and "resumes" in p.stderr, p.stderr[-2000:]
    finally:
        lab.run("m3", "mv /usr/local/bin/etcdutl.away /usr/local/bin/etcdutl")
    t = time.monotonic()
    p = kdeploy("etcd", "restore", "-i", str(inv), str(snap), "--yes", "--json")   # no --force needed
    FIGURES["restore (finishing an interrupted one, with verify)"] = round(time.monotonic() - t, 1)
    assert_ok(p)
    assert '"resumed": true' in p.stdout

    # the cluster is back at the snapshot
    assert k(lab, "get configmap restore-a -o jsonpath={.data.k}")[1] == "a"
    rc, out = k(lab, "get configmap restore-b", check=False)
    assert rc != 0 and "NotFound" in out
    assert k(lab, "get secret restore-s -o jsonpath={.data.p}")[1] == "YmVmb3Jl"   # "before"
    rc, out, err = lab.run("m1", f"{ETCDCTL} endpoint health --cluster -w json")
    assert rc == 0 and sum(e["health"] for e in json.loads(out)) == 3, out + err
    nodes = json.loads(k(lab, "get nodes -o json")[1])["items"]
    assert all(next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready") == "True"
               for n in nodes) and len(nodes) == 4
    # a fresh restore with --force also works end to end (timed), then plan is empty. Without
    # verify: its workload check right after a second restore within minutes fails its Service
    # dial (agnhost answers 400 for ~90 s; open, see the closing note of issue 14); the first
    # restore above ran the full verify
    t = time.monotonic()
    assert_ok(kdeploy("etcd", "restore", "-i", str(inv), str(snap), "--yes", "--force", "--json",
                      "--no-verify"))
    FIGURES["restore --force (no verify)"] = round(time.monotonic() - t, 1)
    rc, out, err = lab.run("m1", f"{ETCDCTL} endpoint health --cluster -w json")
    assert rc == 0 and sum(e["health"] for e in json.loads(out)) == 3, out + err
    assert k(lab, "get configmap restore-a -o jsonpath={.data.k}")[1] == "a"
    p = kdeploy("plan", "-i", str(inv), "--artifacts", str(artifacts_dir()))
    assert p.returncode == 0, p.stdout[-3000:]
