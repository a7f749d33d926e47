"""Certificates: chains, SANs, usages, subjects."""
from __future__ import annotations

import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from kdeploy.pki import paths


def cert(pki, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki.dir / f"{name}.crt").read_bytes())


def sans(c: x509.Certificate) -> set[str]:
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)) | {
        str(i) for i in ext.get_values_for_type(x509.IPAddress)}


def orgs(c):
    return [a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def cn(c):
    return c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_every_leaf_verifies_against_its_ca_with_openssl(base_pki, openssl):
    by_signer: dict[str, list] = {}
    for ident in base_pki.table.identities:
        by_signer.setdefault(ident.signer, []).append(ident)
    for signer, idents in by_signer.items():
        ca = base_pki.dir / f"{signer}.crt"
        for ident in idents:
            crt = base_pki.dir / f"{ident.name}.crt"
            for purpose in (["sslserver"] if "server" in ident.usages else []) + \
                           (["sslclient"] if "client" in ident.usages else []):
                r = subprocess.run([openssl, "verify", "-purpose", purpose, "-CAfile", str(ca), str(crt)],
                                   capture_output=True, text=True)
                assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (ident.name, purpose, r)


def test_wrong_ca_does_not_verify(base_pki, openssl):
    r = subprocess.run([openssl, "verify", "-CAfile", str(base_pki.dir / "etcd/ca.crt"),
                        str(base_pki.dir / "apiserver.crt")], capture_output=True)
    assert r.returncode != 0


def test_cas(base_pki):
    for name, expect_cn in (("ca", "kubernetes"), ("etcd/ca", "etcd-ca"), ("front-proxy-ca", "front-proxy-ca")):
        c = cert(base_pki, name)
        assert cn(c) == expect_cn and c.issuer == c.subject
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == 0
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_cert_sign and ku.crl_sign
        ski = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        days = (c.not_valid_after_utc - c.not_valid_before_utc).days
        assert 3649 <= days <= 3651


def test_apiserver_sans(base_pki):
    got = sans(cert(base_pki, "apiserver"))
    assert got == {"cp1", "cp2", "192.0.2.10", "192.0.2.11", "api.example.test", "203.0.113.5",
                   "10.96.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local", "localhost", "127.0.0.1"}


def test_apiserver_sans_include_endpoint_and_domain(tmp_path):
    from kdeploy.pki import build_table
    from .conftest import load, write_inventory
    c = load(write_inventory(tmp_path, endpoint="lb.example.test:443"))
    api = next(i for i in build_table(c).identities if i.name == "apiserver")
    assert "lb.example.test" in api.dns_sans


def test_etcd_member_and_kubelet_serving_sans(base_pki):
    for h, addr in (("cp1", "192.0.2.10"), ("cp2", "192.0.2.11"), ("etcd3", "192.0.2.12")):
        for kind in ("server", "peer"):
            c = cert(base_pki, f"etcd/{h}/{kind}")
            assert sans(c) == {h, addr, "localhost", "127.0.0.1", "::1"}
            assert cn(c) == h
    for h in base_pki.cluster.hosts:
        c = cert(base_pki, f"nodes/{h.name}/kubelet-serving")
        assert sans(c) == {h.name, h.address}
        assert c.issuer == cert(base_pki, "ca").subject


def _eku(c):
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.mark.parametrize("name,ekus", [
    ("apiserver", {EKU.SERVER_AUTH}),
    ("nodes/w1/kubelet-serving", {EKU.SERVER_AUTH}),
    ("etcd/cp1/peer", {EKU.SERVER_AUTH, EKU.CLIENT_AUTH}),
    ("etcd/cp1/server", {EKU.SERVER_AUTH, EKU.CLIENT_AUTH}),
    ("apiserver-kubelet-client", {EKU.CLIENT_AUTH}),
    ("apiserver-etcd-client", {EKU.CLIENT_AUTH}),
    ("front-proxy-client", {EKU.CLIENT_AUTH}),
    ("etcd/healthcheck-client", {EKU.CLIENT_AUTH}),
    ("admin", {EKU.CLIENT_AUTH}),
    ("nodes/w2/kubelet-client", {EKU.CLIENT_AUTH}),
])
def test_key_usages(base_pki, name, ekus):
    c = cert(base_pki, name)
    assert _eku(c) == ekus
    ku = c.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer = cert(base_pki, next(i.signer for i in base_pki.table.identities if i.name == name))
    assert aki.key_identifier == issuer.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    days = (c.not_valid_after_utc - c.not_valid_before_utc).days
    assert 365 <= days <= 366


@pytest.mark.parametrize("name,want_cn,want_o", [
    ("admin", "kubernetes-admin", ["system:masters"]),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]),
    ("controller-manager", "system:kube-controller-manager", []),
    ("scheduler", "system:kube-scheduler", []),
    ("kube-proxy", "system:kube-proxy", []),
    ("nodes/w1/kubelet-client", "system:node:w1", ["system:nodes"]),
    ("apiserver-etcd-client", "kube-apiserver-etcd-client", []),
    ("front-proxy-client", "front-proxy-client", []),
])
def test_subjects(base_pki, name, want_cn, want_o):
    c = cert(base_pki, name)
    assert cn(c) == want_cn and orgs(c) == want_o


def test_leaf_keys_are_ecdsa_sa_key_is_rsa(base_pki):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    assert isinstance(cert(base_pki, "apiserver").public_key(), ec.EllipticCurvePublicKey)
    sa = serialization.load_pem_private_key((base_pki.dir / "sa.key").read_bytes(), None)
    assert isinstance(sa, rsa.RSAPrivateKey) and sa.key_size == 2048
    cp1 = {f.path: f for f in base_pki.files_for("cp1")}
    assert cp1[paths.SA_PUB].content == sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_certificates_report(base_pki):
    infos = {i.name: i for i in base_pki.certificates()}
    assert len(infos) == 3 + len(base_pki.table.identities)
    assert infos["ca"].is_ca and infos["ca"].days_left >= 3648
    api = infos["apiserver"]
    assert api.status == "ok" and api.issuer == "kubernetes" and api.cn == "kube-apiserver"
    assert 363 <= api.days_left <= 365 and "10.96.0.1" in api.sans
    assert all(not i.needs_action for i in infos.values())
