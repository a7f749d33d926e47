"""kdeploy certs check (from the hosts) and certs renew: output, exit codes, no key material."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kdeploy.cli import app
from kdeploy.pki import ensure_pki
from kdeploy.verbs import certs as verb
from kdeploy.verbs.certs import CertificatesFlagged, RenewOutcome
from kdeploy.plan.planner import Plan
from tests.unit.pki.conftest import load, write_inventory
from tests.unit.pki.hostfake import DirHost

runner = CliRunner()
HOSTS = [{"name": "cp1", "address": "192.0.2.10", "roles": ["control-plane", "etcd"]},
         {"name": "w1", "address": "198.51.100.21", "roles": ["worker"]}]
KEY_MARKERS = ("PRIVATE KEY", "client-key-data", "LS0tLS1CRUdJTiBFQyBQUklWQVRF")


@pytest.fixture
def deployed(tmp_path, monkeypatch):
    inv = write_inventory(tmp_path, hosts=HOSTS)
    cluster = load(inv)
    pki = ensure_pki(cluster)
    hosts = {}
    for h in HOSTS:
        hosts[h["name"]] = DirHost(tmp_path / "hosts" / h["name"])
        hosts[h["name"]].install(pki, h["name"])
    import kdeploy.execute.session as session
    monkeypatch.setattr(session, "connect", lambda cluster, factory=None, hosts_=None: (dict(hosts), {}))
    return inv, cluster, hosts


def test_check_reads_the_hosts_clean_then_flags_a_stale_copy(deployed):
    inv, cluster, hosts = deployed
    r = runner.invoke(app, ["certs", "check", "-i", str(inv), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["ok"] and {c["host"] for c in doc["certificates"]} == {"cp1", "w1"}
    assert {c["status"] for c in doc["certificates"]} == {"ok"}
    assert any(c["path"] == "/etc/kubernetes/kubelet.conf" and c["cn"] == "system:node:w1"
               for c in doc["certificates"])
    ensure_pki(cluster, renew=["kube-proxy"])          # the deployer renewed, hosts not yet
    r = runner.invoke(app, ["certs", "check", "-i", str(inv)])
    assert isinstance(r.exception, CertificatesFlagged) and CertificatesFlagged.exit_code == 2
    assert "kube-proxy.conf" in r.exception.message and "certs renew" in r.exception.hint
    assert "mismatch" in r.output and "w1" in r.output
    for out in (r.output, runner.invoke(app, ["certs", "check", "-i", str(inv), "--json"]).output):
        for m in KEY_MARKERS:
            assert m not in out


def test_check_offline_keeps_the_deployer_view(deployed):
    inv, _, hosts = deployed
    r = runner.invoke(app, ["certs", "check", "--offline", "-i", str(inv), "--json"])
    assert r.exit_code == 0 and "certificates" in json.loads(r.output)
    assert all(not h.scripts for h in hosts.values())


def test_renew_nothing_to_do_dry_run_and_confirmation(deployed, monkeypatch):
    inv, _, _ = deployed
    seen = {}

    def fake(cluster, **kw):
        seen.update(kw)
        o = RenewOutcome(renewed=dict(seen.get("_renewed", {})), plan=Plan())
        if o.renewed and not kw["dry_run"]:
            kw["confirm"](o)
        return o
    monkeypatch.setattr(verb, "run_renew", fake)
    r = runner.invoke(app, ["certs", "renew", "-i", str(inv)])
    assert r.exit_code == 0 and "Nothing to renew" in r.output and seen["renew_all"] is False
    r = runner.invoke(app, ["certs", "renew", "-i", str(inv), "--all", "--dry-run"])
    assert r.exit_code == 0 and seen["renew_all"] is True and seen["dry_run"] is True
    seen["_renewed"] = {"apiserver": "renewed on request"}
    r = runner.invoke(app, ["certs", "renew", "-i", str(inv), "--dry-run"])
    assert r.exit_code == 2 and "apiserver" in r.output
    r = runner.invoke(app, ["certs", "renew", "-i", str(inv)])          # no terminal, no --yes
    assert r.exception is not None and "pass --yes" in str(r.exception)
    r = runner.invoke(app, ["certs", "renew", "-i", str(inv), "--batch", "zero"])
    assert r.exception is not None and "not a count or a percentage" in str(r.exception)
