"""Reissuing leaf certificates on request (`kdeploy certs renew`): never a CA or another secret."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509

from kdeploy.pki import PKIError, ensure_pki, load_pki

from .conftest import load

NEVER = ("ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key", "front-proxy-ca.crt",
         "front-proxy-ca.key", "sa.key", "sa.pub", "encryption.json")


def certs(pki) -> dict[str, x509.Certificate]:
    return {i.name: x509.load_pem_x509_certificate((pki.dir / f"{i.name}.crt").read_bytes())
            for i in pki.table.identities}


def digest(pki) -> dict[str, str]:
    return {n: hashlib.sha256((pki.dir / n).read_bytes()).hexdigest() for n in NEVER}


def test_forced_renewal_reissues_every_leaf_but_no_ca(fresh):
    cluster = load(fresh / "inventory.yaml")
    before_pki = load_pki(cluster)
    before, secrets = certs(before_pki), digest(before_pki)
    later = datetime.now(timezone.utc) + timedelta(days=3)
    pki = ensure_pki(cluster, renew=True, now=later)
    assert set(pki.issued) == set(before)
    assert set(pki.reasons.values()) == {"renewed on request"}
    after = certs(pki)
    for name, c in after.items():
        assert c.serial_number != before[name].serial_number, name
        assert c.not_valid_after_utc > before[name].not_valid_after_utc, name
        assert c.public_key().public_bytes(*_spki()) != before[name].public_key().public_bytes(*_spki())
        assert c.subject == before[name].subject
    assert digest(pki) == secrets                         # CAs, SA pair, encryption key untouched
    assert {c.status for c in load_pki(cluster, now=later).certificates()} == {"ok"}
    assert ensure_pki(cluster).issued == []               # and a plain ensure is a no-op after


def test_named_renewal_and_unknown_names(fresh):
    cluster = load(fresh / "inventory.yaml")
    pki = ensure_pki(cluster, renew=["apiserver", "nodes/w1/kubelet-client"])
    assert sorted(pki.issued) == ["apiserver", "nodes/w1/kubelet-client"]
    with pytest.raises(PKIError, match="no leaf certificate named ca"):
        ensure_pki(cluster, renew=["ca"])


def test_without_force_only_what_expires_is_reissued(fresh):
    cluster = load(fresh / "inventory.yaml")
    now = datetime.now(timezone.utc)
    ensure_pki(cluster, renew=["apiserver"], now=now + timedelta(days=300))   # 65 days left: ok
    later = now + timedelta(days=340)     # 25 days left < window, the apiserver's 325
    pki = ensure_pki(cluster, now=later)
    assert "apiserver" not in pki.issued
    assert set(pki.issued) == {i.name for i in pki.table.identities} - {"apiserver"}
    assert set(pki.reasons.values()) == {"expires soon"}
    assert ensure_pki(cluster, now=later).issued == []


def _spki():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
