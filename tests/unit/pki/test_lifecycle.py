"""Idempotence: reuse, and reissuing exactly what changed."""
from __future__ import annotations

import hashlib
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kdeploy.pki import PKIError, ensure_pki, load_pki

from .conftest import HOSTS, load, write_inventory


def snapshot(state: Path) -> dict[str, str]:
    return {str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.rglob("*")) if p.is_file() and p.name != ".lock"}


def all_files(pki):
    return {h.name: [(f.path, f.content) for f in pki.files_for(h)] for h in pki.cluster.hosts}


def test_second_ensure_issues_nothing_and_changes_no_byte(fresh):
    cluster = load(fresh / "inventory.yaml")
    state = fresh / ".kdeploy" / "demo"
    before, files_before = snapshot(state), all_files(load_pki(cluster))
    pki = ensure_pki(cluster)
    assert pki.issued == []
    assert snapshot(state) == before
    assert all_files(pki) == files_before


def test_first_ensure_issues_everything(base_pki):
    # base_pki is the first run; its issued list is the complete inventory of material
    assert set(base_pki.issued) == {"ca", "etcd/ca", "front-proxy-ca", "sa", "encryption",
                                    *(i.name for i in base_pki.table.identities)}
    assert all(base_pki.reasons[n] != "spec changed" for n in base_pki.issued)


def test_new_san_reissues_only_the_apiserver_cert(fresh):
    before = snapshot(fresh / ".kdeploy" / "demo")
    inv = write_inventory(fresh, extra_sans=["api.example.test", "203.0.113.5", "api2.example.test"])
    pki = ensure_pki(load(inv))
    assert pki.issued == ["apiserver"] and pki.reasons["apiserver"] == "spec changed"
    after = snapshot(fresh / ".kdeploy" / "demo")
    assert {k for k in after if after[k] != before.get(k)} == {
        "pki/apiserver.crt", "pki/apiserver.key", "pki/apiserver.json"}
    assert "api2.example.test" in next(c for c in pki.certificates() if c.name == "apiserver").sans


def test_san_order_does_not_reissue(fresh):
    inv = write_inventory(fresh, extra_sans=["203.0.113.5", "API.example.test"])
    assert ensure_pki(load(inv)).issued == []


def test_new_node_gets_only_its_own_certs(fresh):
    hosts = HOSTS + [{"name": "w3", "address": "198.51.100.23", "roles": ["worker"]}]
    inv = write_inventory(fresh, hosts=hosts, extra_sans=["api.example.test", "203.0.113.5"])
    pki = ensure_pki(load(inv))
    assert sorted(pki.issued) == ["nodes/w3/kubelet-client", "nodes/w3/kubelet-serving"]
    assert len(pki.files_for("w3")) == 5


def test_changed_node_address_reissues_its_serving_cert(fresh):
    hosts = [dict(h) for h in HOSTS]
    hosts[3]["address"] = "198.51.100.99"   # w1
    inv = write_inventory(fresh, hosts=hosts, extra_sans=["api.example.test", "203.0.113.5"])
    assert ensure_pki(load(inv)).issued == ["nodes/w1/kubelet-serving"]


def test_near_expiry_reissues_leaves_not_cas(fresh):
    cluster = load(fresh / "inventory.yaml")
    later = datetime.now(timezone.utc) + timedelta(days=340)   # 25 days left < RENEW_BEFORE_DAYS
    check = load_pki(cluster, now=later)
    assert {c.status for c in check.certificates() if not c.is_ca} == {"expiring"}
    pki = ensure_pki(cluster, now=later)
    assert set(pki.issued) == {i.name for i in pki.table.identities}
    assert all(pki.reasons[n] == "expires soon" for n in pki.issued)
    assert ensure_pki(cluster, now=later).issued == []
    assert pki.warnings == []


def test_ca_expiry_is_reported_not_renewed(fresh):
    cluster = load(fresh / "inventory.yaml")
    late = datetime.now(timezone.utc) + timedelta(days=3640)
    pki = load_pki(cluster, now=late)
    assert any("CA ca expires" in w for w in pki.warnings)
    assert {c.status for c in pki.certificates() if c.is_ca} == {"expiring"}


def test_leaf_never_outlives_its_ca(fresh):
    cluster = load(fresh / "inventory.yaml")
    late = datetime.now(timezone.utc) + timedelta(days=3500)
    pki = ensure_pki(cluster, now=late)
    ca = next(c for c in pki.certificates() if c.name == "ca")
    assert all(c.not_after <= ca.not_after for c in pki.certificates())


@pytest.mark.parametrize("victim", ["nodes/w1/kubelet-client.key", "nodes/w1/kubelet-client.crt",
                                    "nodes/w1/kubelet-client.json"])
def test_missing_or_corrupt_leaf_file_is_reissued(fresh, victim):
    p = fresh / ".kdeploy/demo/pki" / victim
    p.write_bytes(p.read_bytes()[:-20] + b"garbage\n")
    cluster = load(fresh / "inventory.yaml")
    pki = ensure_pki(cluster)
    assert pki.issued == ["nodes/w1/kubelet-client"]
    p.unlink()
    assert ensure_pki(cluster).issued == ["nodes/w1/kubelet-client"]


def test_ca_without_key_is_an_error_not_a_new_ca(fresh):
    (fresh / ".kdeploy/demo/pki/ca.key").unlink()
    with pytest.raises(PKIError, match="not a matching") as e:
        ensure_pki(load(fresh / "inventory.yaml"))
    assert "backup" in e.value.hint


def test_deleting_a_ca_pair_reissues_everything_it_signed(fresh):
    for ext in ("crt", "key"):
        (fresh / f".kdeploy/demo/pki/front-proxy-ca.{ext}").unlink()
    pki = ensure_pki(load(fresh / "inventory.yaml"))
    assert pki.issued == ["front-proxy-ca", "front-proxy-client"]
    assert pki.reasons["front-proxy-client"] == "spec changed"


def test_corrupt_encryption_key_is_an_error(fresh):
    (fresh / ".kdeploy/demo/pki/encryption.json").write_text("{}")
    with pytest.raises(PKIError, match="encryption.json is corrupt"):
        ensure_pki(load(fresh / "inventory.yaml"))


def test_missing_sa_pub_is_rederived(fresh):
    pub = fresh / ".kdeploy/demo/pki/sa.pub"
    old = pub.read_bytes()
    pub.unlink()
    pki = ensure_pki(load(fresh / "inventory.yaml"))
    assert pki.issued == [] and pub.read_bytes() == old


def test_loose_key_mode_is_tightened(fresh):
    key = fresh / ".kdeploy/demo/pki/ca.key"
    os.chmod(key, 0o644)
    ensure_pki(load(fresh / "inventory.yaml"))
    assert key.stat().st_mode & 0o777 == 0o600


def test_concurrent_ensures_issue_once(tmp_path):
    cluster = load(write_inventory(tmp_path, hosts=HOSTS[:2]))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_pki(cluster).issued)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(len, results))[0] == 0 and ensure_pki(cluster).issued == []


def test_bad_extra_san_is_an_inventory_error(tmp_path):
    from kdeploy.errors import InventoryError
    cluster = load(write_inventory(tmp_path, extra_sans=["not a name"]))
    with pytest.raises(InventoryError, match=r"extraSANs\[0\]"):
        ensure_pki(cluster)


def test_explicit_state_dir(tmp_path):
    cluster = load(write_inventory(tmp_path, hosts=HOSTS[:1]))
    pki = ensure_pki(cluster, tmp_path / "elsewhere" / "state")
    assert (tmp_path / "elsewhere/state/pki/ca.crt").is_file()
    assert not (tmp_path / ".kdeploy").exists()
    assert (tmp_path / "elsewhere").stat().st_mode & 0o777 == 0o700
    assert pki.files_for("cp1")


def test_expired_ca_is_a_clear_error(fresh):
    cluster = load(fresh / "inventory.yaml")
    with pytest.raises(PKIError, match="CA ca expired"):
        ensure_pki(cluster, now=datetime.now(timezone.utc) + timedelta(days=3660))
