"""Certificates as the hosts hold them: the read script, its parser, the comparison."""
from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

from kdeploy.pki import ensure_pki, load_pki
from kdeploy.pki.hosts import (EXPIRED, EXPIRING, MISMATCH, MISSING, OK, UNREADABLE, Placed,
                               compare, parse_read, read_script)

from .conftest import load
from .hostfake import DirHost

KEY_MARKERS = ("PRIVATE KEY", "client-key-data", "LS0tLS1CRUdJTiBFQyBQUklWQVRF",
               "LS0tLS1CRUdJTiBQUklWQVRF")


def read(pki, host, tmp_path, now=None):
    h = DirHost(tmp_path / host)
    h.install(pki, host)
    placed = pki.placed_certificates(host)
    r = h.run(read_script(placed))
    assert r.ok, r.err
    return h, placed, r.out, compare(host, placed, parse_read(r.out), now)


def test_placements_cover_every_cert_and_kubeconfig_never_a_key(base_pki):
    placed = base_pki.placed_certificates("cp1")
    paths = [p.path for p in placed]
    assert not any(p.endswith(".key") for p in paths)
    assert "/etc/kubernetes/kubelet.conf" in paths and "/etc/kubernetes/pki/ca.crt" in paths
    assert "/etc/kubernetes/pki/etcd/peer.crt" in paths
    assert {p.name for p in placed if p.is_ca} == {"ca", "etcd/ca", "front-proxy-ca"}
    w = {p.path: p for p in base_pki.placed_certificates("w1")}
    assert set(w) == {"/etc/kubernetes/kube-proxy.conf", "/etc/kubernetes/kubelet.conf",
                      "/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/pki/kubelet.crt"}
    assert w["/etc/kubernetes/kubelet.conf"].kind == "kubeconfig"
    assert w["/etc/kubernetes/kubelet.conf"].name == "nodes/w1/kubelet-client"


def test_a_deployed_host_is_clean_and_no_key_leaves_it(base_pki, tmp_path):
    _, placed, out, rows = read(base_pki, "cp1", tmp_path)
    assert {r.status for r in rows} == {OK}, [r for r in rows if r.flags]
    assert len(rows) == len(placed) == 16
    for m in KEY_MARKERS:
        assert m not in out
    kc = next(r for r in rows if r.path == "/etc/kubernetes/kubelet.conf")
    assert kc.cn == "system:node:cp1" and kc.fingerprint == kc.deployer_fingerprint
    assert kc.days_left in (364, 365)


def test_missing_different_and_unreadable_are_flagged(fresh, tmp_path):
    cluster = load(fresh / "inventory.yaml")
    old = load_pki(cluster)
    h = DirHost(tmp_path / "w1")
    h.install(old, "w1")
    new = ensure_pki(cluster, renew=["nodes/w1/kubelet-serving", "kube-proxy"])   # deployer moved on
    h.path("/etc/kubernetes/kubelet.conf").unlink()
    h.path("/etc/kubernetes/pki/ca.crt").write_text("garbage\n")
    placed = new.placed_certificates("w1")
    rows = {r.path: r for r in compare("w1", placed, parse_read(h.run(read_script(placed)).out))}
    assert rows["/etc/kubernetes/kubelet.conf"].status == MISSING
    assert rows["/etc/kubernetes/pki/ca.crt"].status == UNREADABLE
    assert rows["/var/lib/kubelet/pki/kubelet.crt"].status == MISMATCH
    assert rows["/etc/kubernetes/kube-proxy.conf"].status == MISMATCH   # the embedded client cert
    assert rows["/etc/kubernetes/kube-proxy.conf"].cn == "system:kube-proxy"


def test_expiring_and_expired_by_the_renewal_window(base_pki, tmp_path):
    later = datetime.now(timezone.utc) + timedelta(days=340)
    _, _, _, rows = read(base_pki, "w1", tmp_path, now=later)
    by = {r.path: r for r in rows}
    assert by["/var/lib/kubelet/pki/kubelet.crt"].status == EXPIRING
    assert by["/etc/kubernetes/kubelet.conf"].status == EXPIRING
    assert by["/etc/kubernetes/pki/ca.crt"].status == OK          # the CA lives 10 years
    _, _, _, rows = read(base_pki, "w1", tmp_path / "x", now=later + timedelta(days=60))
    assert {r.status for r in rows if not r.is_ca} == {EXPIRED}


def test_parser_and_kubeconfig_value():
    pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    out = ("@@kdeploy-cert /a.crt\n" + pem.decode() + "\n@@kdeploy-cert /b.conf\n"
           + base64.b64encode(pem).decode() + "\n@@kdeploy-cert /c.crt\n@@missing\n")
    got = parse_read(out)
    assert got["/c.crt"] is None and got["/a.crt"].startswith("-----BEGIN")
    assert base64.b64decode(got["/b.conf"]) == pem
    # a placement table naming a key is never read
    s = read_script([Placed("/x/y.key", "y", "crt", None), Placed("/x/y.crt", "y", "crt", None)])
    assert "/x/y.key" not in s and "c /x/y.crt" in s
    assert re.search(r"sed -n 's/\^\[\[:space:\]\]\*client-certificate-data", s)
