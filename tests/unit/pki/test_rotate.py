"""CA rotation in the PKI store: each stage's bundles and signers, resumption, the old CA kept,
and the rendering after the last stage equal to a fresh PKI of the rotated state."""
from __future__ import annotations

import stat

import pytest
from cryptography import x509

from kdeploy.pki import PKIError, ensure_pki, load_pki, paths, rotation
from kdeploy.pki.identities import CLUSTER_CA, ETCD_CA, FRONT_PROXY_CA
from tests.unit.pki.conftest import load, write_inventory


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _spki():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def files(pki, host) -> dict[str, bytes]:
    return {f.path: f.content for f in pki.files_for(host)}


def kubeconfig_ca(content: bytes) -> bytes:
    import base64
    import yaml
    doc = yaml.safe_load(content)
    return base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])


def kubeconfig_cert(content: bytes) -> x509.Certificate:
    import base64
    import yaml
    doc = yaml.safe_load(content)
    return x509.load_pem_x509_certificate(base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]))


def issuer_key_id(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


@pytest.fixture
def cluster(tmp_path):
    return load(write_inventory(tmp_path))


def begin(pki, cas=rotation.ALL_CAS):
    return rotation.begin(pki.dir, cas, {s.name: s.cn for s in pki.table.cas}, days=3650,
                          kind="ecdsa-p256")


def stage_to(state, rot, stage):
    while rot.stage != stage:
        rot = rotation.advance(state / "pki", rot)
    return rot


def test_stages_bundles_signers_and_finish(cluster, tmp_path):
    state = tmp_path / "state"
    before = ensure_pki(cluster, state)
    old = {n: certs(before.trust_bundle(n))[0] for n in rotation.ALL_CAS}
    old_apiserver = files(before, "cp1")[paths.APISERVER_CRT]
    rot = begin(before)
    new = {n: certs((state / "pki" / f"{rotation.new_name(n)}.crt").read_bytes())[0]
           for n in rotation.ALL_CAS}
    assert stat.S_IMODE((state / "pki" / "ca.new.key").stat().st_mode) == 0o600

    # 1. trust: bundles old+new (the signing CA first), leaves unchanged, old CA signs
    trust = ensure_pki(cluster, state)
    assert trust.issued == []
    f = files(trust, "cp1")
    for path, ca in ((paths.CA_CRT, CLUSTER_CA), (paths.ETCD_CA_CRT, ETCD_CA),
                     (paths.FRONT_PROXY_CA_CRT, FRONT_PROXY_CA)):
        assert [ski(c) for c in certs(f[path])] == [ski(old[ca]), ski(new[ca])], path
    assert [ski(c) for c in certs(kubeconfig_ca(f[paths.ADMIN_CONF]))] == [ski(old[CLUSTER_CA]), ski(new[CLUSTER_CA])]
    assert [ski(c) for c in certs(kubeconfig_ca(files(trust, "w1")[paths.KUBELET_CONF]))] == \
        [ski(old[CLUSTER_CA]), ski(new[CLUSTER_CA])]
    assert f[paths.APISERVER_CRT] == old_apiserver
    assert certs(f[paths.CLUSTER_SIGNING_CRT]) == [old[CLUSTER_CA]]        # one certificate only
    assert f[paths.CA_KEY] == (state / "pki" / "ca.key").read_bytes()

    # 2. reissue: every leaf signed by the new CA, bundles new+old, the new pair signs
    rot = rotation.advance(state / "pki", rot)
    re = ensure_pki(cluster, state)
    assert set(re.issued) == {i.name for i in re.table.identities}
    f = files(re, "cp1")
    assert [ski(c) for c in certs(f[paths.CA_CRT])] == [ski(new[CLUSTER_CA]), ski(old[CLUSTER_CA])]
    for path, ca in ((paths.APISERVER_CRT, CLUSTER_CA), (paths.ETCD_SERVER_CRT, ETCD_CA),
                     (paths.APISERVER_ETCD_CLIENT_CRT, ETCD_CA),
                     (paths.FRONT_PROXY_CLIENT_CRT, FRONT_PROXY_CA), (paths.KUBELET_SERVING_CRT, CLUSTER_CA)):
        assert issuer_key_id(certs(f[path])[0]) == ski(new[ca]), path
    assert issuer_key_id(kubeconfig_cert(f[paths.ADMIN_CONF])) == ski(new[CLUSTER_CA])
    assert issuer_key_id(kubeconfig_cert(files(re, "w1")[paths.KUBELET_CONF])) == ski(new[CLUSTER_CA])
    assert certs(f[paths.CLUSTER_SIGNING_CRT]) == [new[CLUSTER_CA]]
    assert f[paths.CA_KEY] == (state / "pki" / "ca.new.key").read_bytes()
    assert ensure_pki(cluster, state).issued == []          # a second run of the stage: nothing

    # 3. drop: only the new CA, nothing reissued
    rot = rotation.advance(state / "pki", rot)
    drop = ensure_pki(cluster, state)
    assert drop.issued == []
    dropped = {h.name: files(drop, h.name) for h in cluster.hosts}
    f = dropped["cp1"]
    for path, ca in ((paths.CA_CRT, CLUSTER_CA), (paths.ETCD_CA_CRT, ETCD_CA),
                     (paths.FRONT_PROXY_CA_CRT, FRONT_PROXY_CA)):
        assert certs(f[path]) == [new[ca]], path
    assert certs(kubeconfig_ca(f[paths.ADMIN_CONF])) == [new[CLUSTER_CA]]

    # finish: the new CA is the CA, the old pair kept 0600 under a dated name, record gone
    kept = rotation.finish(state / "pki", rot)
    assert rotation.read(state / "pki") is None
    assert not (state / "pki" / "ca.new.crt").exists()
    rel = [str(p.relative_to(state / "pki")) for p in kept]
    assert {r.split(".old-")[0] for r in rel} == {"ca", "etcd/ca", "front-proxy-ca"}
    old_ca_files = [p for p, r in zip(kept, rel) if r.startswith("ca.old-")]
    assert sorted(p.suffix for p in old_ca_files) == [".crt", ".key"]
    for p in kept:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert certs([p for p in old_ca_files if p.suffix == ".crt"][0].read_bytes()) == [old[CLUSTER_CA]]
    assert rotation.archived(state / "pki") and len(rotation.archived(state / "pki")) == 6

    # after: the same files as during the drop stage (so `plan` is empty), nothing issued
    after = ensure_pki(cluster, state)
    assert after.issued == []
    assert {h.name: files(after, h.name) for h in cluster.hosts} == dropped
    # and a second finish (a killed run repeated) changes nothing
    assert rotation.finish(state / "pki", rotation.Rotation(rotation.DROP, rot.cas, rot.started)) == []
    assert {h.name: files(ensure_pki(cluster, state), h.name) for h in cluster.hosts} == dropped


@pytest.mark.parametrize("stage", rotation.STAGES)
def test_resume_from_each_stage_renders_the_same(cluster, tmp_path, stage):
    """A new process (a re-run after a failure) renders exactly what the stage rendered."""
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    assert stage_to(state, begin(pki), stage).stage == stage
    first = ensure_pki(cluster, state)
    want = {h.name: files(first, h.name) for h in cluster.hosts}
    again = ensure_pki(cluster, state)                 # the re-run
    assert again.issued == []
    assert again.rotation.stage == stage
    assert {h.name: files(again, h.name) for h in cluster.hosts} == want
    # plan/verify's read-only view agrees
    assert {h.name: files(load_pki(cluster, state), h.name) for h in cluster.hosts} == want


def test_begin_again_keeps_a_generated_new_ca(cluster, tmp_path):
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    begin(pki)
    new = (state / "pki" / "ca.new.crt").read_bytes()
    begin(pki)                                         # killed after generating, run again
    assert (state / "pki" / "ca.new.crt").read_bytes() == new


def test_finish_cut_short_is_completed(cluster, tmp_path):
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    rot = stage_to(state, begin(pki), rotation.DROP)
    ensure_pki(cluster, state)
    want = {h.name: files(load_pki(cluster, state), h.name) for h in cluster.hosts}
    # as if killed after the cluster CA was moved, before the record went
    for ext in ("crt", "key"):
        (state / "pki" / f"ca.{ext}").write_bytes((state / "pki" / f"ca.new.{ext}").read_bytes())
        (state / "pki" / f"ca.new.{ext}").unlink()
    mid = ensure_pki(cluster, state)
    assert mid.issued == []
    assert {h.name: files(mid, h.name) for h in cluster.hosts} == want
    rotation.finish(state / "pki", rot)
    assert {h.name: files(ensure_pki(cluster, state), h.name) for h in cluster.hosts} == want


def test_one_ca_only(cluster, tmp_path):
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    etcd_before = files(pki, "cp1")[paths.ETCD_CA_CRT]
    rot = rotation.advance(state / "pki", begin(pki, (CLUSTER_CA,)))
    re = ensure_pki(cluster, state)
    assert {i.signer for i in re.table.identities if i.name in re.issued} == {CLUSTER_CA}
    assert files(re, "cp1")[paths.ETCD_CA_CRT] == etcd_before
    assert len(certs(files(re, "cp1")[paths.CA_CRT])) == 2
    assert rot.cas == (CLUSTER_CA,)


def test_missing_new_ca_during_rotation_is_a_clear_error(cluster, tmp_path):
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    begin(pki)
    (state / "pki" / "ca.new.key").unlink()
    with pytest.raises(PKIError, match="being rotated"):
        ensure_pki(cluster, state)


def test_corrupt_record_is_a_clear_error(cluster, tmp_path):
    state = tmp_path / "state"
    ensure_pki(cluster, state)
    (state / "pki" / rotation.ROTATION_FILE).write_text("{not json")
    with pytest.raises(PKIError, match="corrupt"):
        ensure_pki(cluster, state)


# --- the service-account key -------------------------------------------------------------

def pubs(pem: bytes) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization
    blocks = [b for b in pem.split(b"-----END PUBLIC KEY-----") if b.strip()]
    return [serialization.load_pem_public_key(b + b"-----END PUBLIC KEY-----\n").public_bytes(*_spki())
            for b in blocks]


def test_sa_key_stages_and_finish(cluster, tmp_path):
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    old_key, old_pub = files(pki, "cp1")[paths.SA_KEY], files(pki, "cp1")[paths.SA_PUB]
    rot = rotation.begin_sa(state / "pki", kind="rsa-2048")
    new_key = (state / "pki" / "sa.new.key").read_bytes()
    new_pub = (state / "pki" / "sa.new.pub").read_bytes()
    assert stat.S_IMODE((state / "pki" / "sa.new.key").stat().st_mode) == 0o600
    f = files(ensure_pki(cluster, state), "cp1")                     # trust: both verify, old signs
    assert f[paths.SA_KEY] == old_key and pubs(f[paths.SA_PUB]) == pubs(old_pub) + pubs(new_pub)
    rot = rotation.advance(state / "pki", rot)                        # reissue: the new key signs
    f = files(ensure_pki(cluster, state), "cp1")
    assert f[paths.SA_KEY] == new_key and pubs(f[paths.SA_PUB]) == pubs(old_pub) + pubs(new_pub)
    rot = rotation.advance(state / "pki", rot)                        # drop: only the new key
    drop = {h.name: files(ensure_pki(cluster, state), h.name) for h in cluster.hosts}
    assert drop["cp1"][paths.SA_KEY] == new_key and drop["cp1"][paths.SA_PUB] == new_pub
    kept = rotation.finish_sa(state / "pki", rot)
    assert sorted(p.suffix for p in kept) == [".key", ".pub"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert [p for p in kept if p.suffix == ".key"][0].read_bytes() == old_key
    after = ensure_pki(cluster, state)
    assert after.issued == [] and after.sa_rotation is None
    assert {h.name: files(after, h.name) for h in cluster.hosts} == drop
    assert rotation.finish_sa(state / "pki", rot) == []               # repeated: nothing more


def test_sa_and_ca_rotations_are_independent(cluster, tmp_path):
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    rotation.begin_sa(state / "pki", kind="rsa-2048")
    assert rotation.read(state / "pki") is None
    begin(pki)
    p = ensure_pki(cluster, state)
    assert p.rotation.cas == rotation.ALL_CAS and p.sa_rotation.cas == (rotation.SA,)


def test_certs_check_compares_the_first_of_the_bundle(cluster, tmp_path):
    """`certs check` fingerprints the first certificate of a host's CA file: the signing CA."""
    state = tmp_path / "state"
    pki = ensure_pki(cluster, state)
    rot = begin(pki)
    for stage, want in ((rotation.TRUST, "ca.crt"), (rotation.REISSUE, "ca.new.crt")):
        rot = stage_to(state, rot, stage)
        p = ensure_pki(cluster, state)
        placed = {x.path: x for x in p.placed_certificates("cp1")}
        first = certs(files(p, "cp1")[paths.CA_CRT])[0]
        assert certs(placed[paths.CA_CRT].pem) == [first]
        assert placed[paths.CA_CRT].pem == (state / "pki" / want).read_bytes()
