"""CA rotation as state: which CAs are being replaced and how far the rotation got.

Kubernetes' multi-step CA rotation
(https://kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/) in three stages,
each a convergent desired state that the PKI store renders (kdeploy.pki.store):

    trust    every place that trusts the CA holds old+new; leaves still signed by the old CA
    reissue  every leaf (and kubeconfig client cert) signed by the new CA; trust still old+new
    drop     trust only the new CA; the new CA is the CA

The record is pki/rotate-ca.json in the state dir (inside pki/, so `plan` and `verify`, which
work on a scratch copy of pki/, render the same stage as `up`). The new CAs live beside the
old ones as pki/<ca>.new.crt/.key until finish() makes them the CAs; the old pair is kept as
pki/<ca>.old-<UTC stamp>.crt/.key (0600), never deleted.

This module writes only the state dir; rolling the stages out is kdeploy.verbs.rotate's job.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kdeploy.pki import crypto
from kdeploy.pki.identities import CLUSTER_CA, ETCD_CA, FRONT_PROXY_CA

ROTATION_FILE = "rotate-ca.json"
SA_ROTATION_FILE = "rotate-sa.json"
SA = "sa"                 # the service-account key pair (pki/sa.key, sa.pub)
TRUST, REISSUE, DROP = "trust", "reissue", "drop"
STAGES = (TRUST, REISSUE, DROP)
# --ca names -> the CA's name in the state dir
CA_NAMES = {"cluster": CLUSTER_CA, "etcd": ETCD_CA, "front-proxy": FRONT_PROXY_CA}
ALL_CAS = tuple(CA_NAMES.values())


def new_name(ca: str) -> str:
    """pki/<ca>.new.crt/.key: the CA that replaces <ca> while a rotation is in progress."""
    return f"{ca}.new"


@dataclass
class Rotation:
    stage: str
    cas: tuple[str, ...] = ALL_CAS
    started: str = ""
    history: list[dict] = field(default_factory=list)   # [{stage, at}] stages reached
    rolled_out: str = ""     # when the current stage's rollout finished (service-account key)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "cas": list(self.cas), "started": self.started,
                "history": self.history, "rolledOut": self.rolled_out}

    def rotating(self, ca: str) -> bool:
        return ca in self.cas

    @property
    def next_stage(self) -> str | None:
        i = STAGES.index(self.stage)
        return STAGES[i + 1] if i + 1 < len(STAGES) else None


class RotationError(Exception):
    """The rotation record is unreadable (turned into a PKIError by the store)."""


def read(pki_dir: Path, file: str = ROTATION_FILE) -> Rotation | None:
    path = Path(pki_dir) / file
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(raw)
        stage, cas = d["stage"], tuple(d["cas"])
        known = (SA,) if file == SA_ROTATION_FILE else ALL_CAS
        if stage not in STAGES or not cas or any(c not in known for c in cas):
            raise ValueError
        return Rotation(stage, cas, str(d.get("started", "")), list(d.get("history", [])),
                        str(d.get("rolledOut", "")))
    except (ValueError, KeyError, TypeError):
        raise RotationError(f"{path} is corrupt") from None


def write(pki_dir: Path, rot: Rotation, file: str | None = None) -> None:
    file = file or (SA_ROTATION_FILE if rot.cas == (SA,) else ROTATION_FILE)
    crypto.write_atomic(Path(pki_dir) / file,
                        (json.dumps(rot.to_dict(), indent=1) + "\n").encode(), 0o600, durable=True)


def stamp(now: datetime) -> str:
    return crypto.utc(now).strftime("%Y%m%dT%H%M%SZ")


def begin(pki_dir: Path, cas: tuple[str, ...], cns: dict[str, str], *, now: datetime | None = None,
          days: int, kind: str) -> Rotation:
    """Generate a new CA beside each old one (a valid pair left by a killed begin() is kept)
    and record the rotation at its first stage."""
    pki_dir = Path(pki_dir)
    now = crypto.utc(now)
    for ca in cas:
        base = pki_dir / new_name(ca)
        if _valid_pair(base):
            continue
        key, cert = crypto.make_ca(cns[ca], days, now, kind)
        crypto.write_atomic(base.with_name(base.name + ".key"), crypto.key_pem(key), 0o600, durable=True)
        crypto.write_atomic(base.with_name(base.name + ".crt"), crypto.cert_pem(cert), 0o644, durable=True)
    rot = Rotation(TRUST, tuple(cas), now.isoformat(), [{"stage": TRUST, "at": now.isoformat()}])
    write(pki_dir, rot)
    return rot


def advance(pki_dir: Path, rot: Rotation, *, now: datetime | None = None) -> Rotation:
    nxt = rot.next_stage
    if nxt is None:
        raise ValueError(f"stage {rot.stage} is the last")
    at = crypto.utc(now).isoformat()
    rot = Rotation(nxt, rot.cas, rot.started, [*rot.history, {"stage": nxt, "at": at}])
    write(pki_dir, rot)
    return rot


def mark_rolled_out(pki_dir: Path, rot: Rotation, *, now: datetime | None = None) -> Rotation:
    """Record when the current stage finished rolling out (once: a repeated call keeps it)."""
    if rot.rolled_out:
        return rot
    rot = Rotation(rot.stage, rot.cas, rot.started, rot.history, crypto.utc(now).isoformat())
    write(pki_dir, rot)
    return rot


# --- the service-account key: the same three stages ---------------------------------------
# trust: kube-apiserver's --service-account-key-file (sa.pub) lists old+new public keys;
# reissue: the new key signs (--service-account-signing-key-file, controller-manager's
# --service-account-private-key-file), sa.pub still old+new while tokens signed by the old key
# live (kubelet refreshes projected tokens within 24 h); drop: sa.pub holds the new key only.

def begin_sa(pki_dir: Path, *, now: datetime | None = None, kind: str) -> Rotation:
    pki_dir = Path(pki_dir)
    now = crypto.utc(now)
    key_p, pub_p = pki_dir / f"{SA}.new.key", pki_dir / f"{SA}.new.pub"
    key = None
    if _read(key_p) is not None:
        try:
            key = crypto.load_key(_read(key_p))
        except ValueError:
            key = None
    if key is None:
        key = crypto.new_key(kind)
        crypto.write_atomic(key_p, crypto.key_pem(key), 0o600, durable=True)
    crypto.write_atomic(pub_p, crypto.pub_pem(key), 0o644, durable=True)
    rot = Rotation(TRUST, (SA,), now.isoformat(), [{"stage": TRUST, "at": now.isoformat()}])
    write(pki_dir, rot)
    return rot


def finish_sa(pki_dir: Path, rot: Rotation) -> list[Path]:
    """After the drop stage: the old pair kept as sa.old-<start>.key/.pub (0600), the new pair
    becomes sa.key/sa.pub, the .new files and the record go. Repeatable."""
    pki_dir = Path(pki_dir)
    if rot.stage != DROP:
        raise ValueError("finish_sa() after the drop stage only")
    when = stamp(datetime.fromisoformat(rot.started) if rot.started else crypto.utc(None))
    kept: list[Path] = []
    new_key, new_pub = _read(pki_dir / f"{SA}.new.key"), _read(pki_dir / f"{SA}.new.pub")
    if new_key is not None and new_pub is not None:
        cur_key, cur_pub = _read(pki_dir / f"{SA}.key"), _read(pki_dir / f"{SA}.pub")
        if cur_key is not None and cur_key != new_key:
            for ext, data in (("key", cur_key), ("pub", cur_pub)):
                if data is None:
                    continue
                p = pki_dir / f"{SA}.old-{when}.{ext}"
                if not p.exists():
                    crypto.write_atomic(p, data, 0o600, durable=True)
                kept.append(p)
        crypto.write_atomic(pki_dir / f"{SA}.key", new_key, 0o600, durable=True)
        crypto.write_atomic(pki_dir / f"{SA}.pub", new_pub, 0o644, durable=True)
        for ext in ("key", "pub"):
            (pki_dir / f"{SA}.new.{ext}").unlink(missing_ok=True)
    (pki_dir / SA_ROTATION_FILE).unlink(missing_ok=True)
    return kept


def finish(pki_dir: Path, rot: Rotation, *, now: datetime | None = None) -> list[Path]:
    """After the drop stage is rolled out: keep each old CA pair under a dated name (0600),
    make the new pair the CA, remove the .new files and then the record. Every step can be
    repeated (a run killed half way finishes on the next). Returns the archived files."""
    pki_dir = Path(pki_dir)
    if rot.stage != DROP:
        raise ValueError("finish() after the drop stage only")
    # the rotation's start names the archive: a repeated finish() never makes a second copy
    when = stamp(datetime.fromisoformat(rot.started) if rot.started else crypto.utc(now))
    kept: list[Path] = []
    for ca in rot.cas:
        cur, new = pki_dir / ca, pki_dir / new_name(ca)
        new_crt, new_key = _read(new.with_name(new.name + ".crt")), _read(new.with_name(new.name + ".key"))
        if new_crt is None or new_key is None:
            continue                                 # finished for this CA by an earlier run
        cur_crt, cur_key = _read(cur.with_name(cur.name + ".crt")), _read(cur.with_name(cur.name + ".key"))
        if cur_crt is not None and cur_crt != new_crt:
            old = pki_dir / f"{ca}.old-{when}"
            for ext, data in (("crt", cur_crt), ("key", cur_key)):
                if data is None:
                    continue
                p = old.with_name(f"{old.name}.{ext}")
                if not p.exists():
                    crypto.write_atomic(p, data, 0o600, durable=True)
                kept.append(p)
        crypto.write_atomic(cur.with_name(cur.name + ".key"), new_key, 0o600, durable=True)
        crypto.write_atomic(cur.with_name(cur.name + ".crt"), new_crt, 0o644, durable=True)
        for ext in ("crt", "key"):
            new.with_name(f"{new.name}.{ext}").unlink(missing_ok=True)
    (pki_dir / ROTATION_FILE).unlink(missing_ok=True)
    return kept


def archived(pki_dir: Path) -> list[Path]:
    """Old CA files kept by earlier rotations."""
    return sorted(p for p in Path(pki_dir).rglob("*.old-*.*") if p.suffix in (".crt", ".key"))


def _read(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return None


def _valid_pair(base: Path) -> bool:
    from cryptography import x509
    crt, key = _read(base.with_name(base.name + ".crt")), _read(base.with_name(base.name + ".key"))
    if crt is None or key is None:
        return False
    try:
        return crypto.same_public_key(crypto.load_key(key), x509.load_pem_x509_certificate(crt))
    except ValueError:
        return False
