"""The cluster PKI on the deployer: kept in the state dir, issued on demand, handed out per host.

State layout (<inventory dir>/.kdeploy/<cluster>/, mode 0700):

    pki/ca.crt ca.key  etcd/ca.crt etcd/ca.key  front-proxy-ca.crt front-proxy-ca.key
    pki/sa.key sa.pub  encryption.json                      (0600 for every secret)
    pki/<identity>.crt .key .json                           e.g. pki/nodes/w1/kubelet-client.*

The .json beside each leaf records the spec fingerprint it was issued for (subject, SANs,
usages, key type, and the signing CA's fingerprint), the sha256 of its .crt and .key and its
notAfter: reuse checks read three small files per certificate and parse nothing.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import ipaddress
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Collection

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kdeploy.errors import InventoryError, KdeployError
from kdeploy.model import defaults
from kdeploy.model.cluster import Cluster, Host
from kdeploy.plan.resources import PHASES, File
from kdeploy.pki import crypto, render, rotation
from kdeploy.pki.identities import LOCAL, CASpec, Identity, Place, Table, build_table, local_server

SPEC_VERSION = 1
SA_KEY_TYPE = "rsa-2048"        # kube-apiserver accepts RSA and ECDSA; RSA is what everyone expects
CA_KEY_TYPE = "ecdsa-p256"
ENCRYPTION_FILE = "encryption.json"

OK, EXPIRING, EXPIRED, MISSING, CORRUPT, CHANGED = "ok", "expiring", "expired", "missing", "corrupt", "changed"
_REASONS = {MISSING: "new", CORRUPT: "missing or corrupt file", CHANGED: "spec changed",
            EXPIRING: "expires soon", EXPIRED: "expired", OK: "renewed on request"}
_DNS = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


class PKIError(KdeployError):
    """The PKI state cannot be used as is (a CA without its key, a corrupt secret ...)."""
    exit_code = 1


@dataclass(frozen=True)
class CertInfo:
    name: str
    cn: str | None
    issuer: str | None
    not_after: datetime | None
    days_left: int | None
    sans: tuple[str, ...]
    status: str                 # ok | expiring | expired | missing | corrupt | changed
    is_ca: bool = False

    @property
    def needs_action(self) -> bool:
        return self.status != OK

    def to_dict(self) -> dict:
        return {"name": self.name, "cn": self.cn, "issuer": self.issuer,
                "notAfter": self.not_after.isoformat() if self.not_after else None,
                "daysLeft": self.days_left, "sans": list(self.sans), "status": self.status,
                "ca": self.is_ca}


@dataclass
class _Leaf:
    crt: bytes | None = None
    key: bytes | None = None
    not_after: datetime | None = None
    status: str = MISSING


@dataclass
class _CA:
    crt: bytes | None = None
    key: bytes | None = None
    cert: x509.Certificate | None = None
    status: str = MISSING
    _key_obj: object = None

    @property
    def fingerprint(self) -> str:
        return _sha(self.crt or b"")

    def key_obj(self):
        if self._key_obj is None:
            self._key_obj = crypto.load_key(self.key)
        return self._key_obj


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _read(p: Path | str) -> bytes | None:
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def default_state_dir(cluster: Cluster) -> Path:
    if not cluster.source:
        raise PKIError("the cluster has no inventory file, so there is no default state directory",
                       "pass a state directory explicitly")
    return Path(cluster.source).resolve().parent / defaults.STATE_DIRNAME / cluster.name


def check_sans(cluster: Cluster) -> None:
    for i, san in enumerate(cluster.spec.control_plane.extra_sans):
        v = san.strip().lower()
        try:
            ipaddress.ip_address(v.strip("[]"))
            continue
        except ValueError:
            pass
        if len(v) > 253 or not _DNS.match(v):
            raise InventoryError(f"'{san}' is neither an IP address nor a DNS name",
                                 "use names like api.example.com (or *.example.com) and IP addresses",
                                 file=cluster.source, field=f"spec.controlPlane.extraSANs[{i}]")


class PKI:
    """The cluster's certificates and keys as found in (or written to) the state dir."""

    def __init__(self, cluster: Cluster, state_dir: Path, now: datetime | None = None, *,
                 scan: bool = True):
        check_sans(cluster)
        self.cluster = cluster
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "pki"
        self.now = crypto.utc(now)
        self.table: Table = build_table(cluster)
        self.issued: list[str] = []            # names issued by the last ensure()
        self.reasons: dict[str, str] = {}      # name -> why it was issued
        self.warnings: list[str] = []
        self._cas: dict[str, _CA] = {}
        self._new_cas: dict[str, _CA] = {}     # CAs being rotated in (pki/<ca>.new.*)
        self.rotation: rotation.Rotation | None = None
        self.sa_rotation: rotation.Rotation | None = None
        self._sa_new_key: bytes | None = None
        self._sa_new_pub: bytes | None = None
        self._leaves: dict[str, _Leaf] = {}
        self._sa_key: bytes | None = None
        self._sa_pub: bytes | None = None
        self._enc_keys: list[tuple[str, bytes]] | None = None
        self._parsed: dict[str, x509.Certificate] = {}
        self._render_cache: dict[tuple, bytes] = {}
        self._index: dict[str, list[tuple[object, Place]]] | None = None
        if scan:
            self._scan()

    # --- reading --------------------------------------------------------------------------
    def _scan(self) -> None:
        self.warnings = []
        try:
            self.rotation = rotation.read(self.dir)
            self.sa_rotation = rotation.read(self.dir, rotation.SA_ROTATION_FILE)
        except rotation.RotationError as e:
            raise PKIError(str(e), "restore it from a backup, or run `kdeploy certs rotate-ca` "
                           "only after fixing it by hand (stage: trust|reissue|drop)") from None
        self._new_cas = {}
        for ca in self.table.cas:
            self._cas[ca.name] = self._scan_ca(ca)
            if self.rotation is not None and self.rotation.rotating(ca.name):
                new = self._scan_ca(ca, rotation.new_name(ca.name))
                if new.status != MISSING:
                    self._new_cas[ca.name] = new
                    if self.rotation.stage == rotation.DROP:
                        self._cas[ca.name] = new     # the old CA is no longer used anywhere
        self._sa_key = _read(self.dir / "sa.key")
        self._sa_pub = _read(self.dir / "sa.pub")
        self._sa_new_key = self._sa_new_pub = None
        if self.sa_rotation is not None:
            self._sa_new_key = _read(self.dir / "sa.new.key")
            self._sa_new_pub = _read(self.dir / "sa.new.pub")
        self._enc_keys = self._read_encryption()
        renew = timedelta(days=defaults.RENEW_BEFORE_DAYS)
        for ident in self.table.identities:
            self._leaves[ident.name] = self._scan_leaf(ident, renew)
        for name, ca in self._cas.items():
            if ca.cert is not None:
                left = ca.cert.not_valid_after_utc - self.now
                if left <= renew:
                    self.warnings.append(
                        f"CA {name} expires {ca.cert.not_valid_after_utc:%Y-%m-%d} "
                        f"({left.days} days left); replace it with `kdeploy certs rotate-ca`")

    def _scan_ca(self, spec: CASpec, name: str | None = None) -> _CA:
        name = name or spec.name
        crt, key = _read(self.dir / f"{name}.crt"), _read(self.dir / f"{name}.key")
        if crt is None and key is None:
            return _CA()
        ca = _CA(crt=crt, key=key, status=CORRUPT)
        if crt is None or key is None:
            return ca
        try:
            ca.cert = x509.load_pem_x509_certificate(crt)
            k = crypto.load_key(key)
        except ValueError:
            ca.cert = None
            return ca
        if not crypto.same_public_key(k, ca.cert):
            return ca
        ca._key_obj = k
        left = ca.cert.not_valid_after_utc - self.now
        ca.status = (EXPIRED if left <= timedelta(0) else
                     EXPIRING if left <= timedelta(days=defaults.RENEW_BEFORE_DAYS) else OK)
        return ca

    def _read_encryption(self) -> list[tuple[str, bytes]] | None:
        raw = _read(self.dir / ENCRYPTION_FILE)
        if raw is None:
            return None
        try:
            keys = [(k["name"], base64.b64decode(k["secret"], validate=True))
                    for k in json.loads(raw)["keys"]]
            if not keys or any(len(v) != 32 for _, v in keys):
                raise ValueError
            return keys
        except (ValueError, KeyError, TypeError):
            raise PKIError(f"{self.dir / ENCRYPTION_FILE} is corrupt",
                           "restore it from a backup: without this key the cluster's Secrets cannot "
                           "be decrypted. Delete it only for a cluster that was never deployed") from None

    # --- CA rotation (kdeploy.pki.rotation): what signs, what is trusted -----------------------
    def _signer(self, name: str) -> _CA:
        """The CA that signs leaves now: the new one from the rotation's reissue stage on."""
        new = self._new_cas.get(name)
        if new is not None and self.rotation is not None and self.rotation.stage == rotation.REISSUE:
            return new
        return self._cas[name]

    def trust_bundle(self, name: str) -> bytes | None:
        """What every place that trusts CA `name` holds: old+new while it is rotated (the CA
        that signs now first), else the CA alone."""
        ca, new = self._cas[name], self._new_cas.get(name)
        if ca.crt is None or ca.status == CORRUPT:
            return None
        if new is None or self.rotation is None or self.rotation.stage == rotation.DROP:
            return ca.crt
        first, second = (ca, new) if self.rotation.stage == rotation.TRUST else (new, ca)
        return first.crt.rstrip(b"\n") + b"\n" + second.crt.rstrip(b"\n") + b"\n"

    def sa_material(self, what: str) -> bytes | None:
        """sa.key / sa.pub as placed: while the key is rotated, sa.pub lists old+new public
        keys (until the drop stage) and the new key signs from the reissue stage on."""
        rot, new_key, new_pub = self.sa_rotation, self._sa_new_key, self._sa_new_pub
        if rot is None or new_key is None or new_pub is None:
            return self._sa_key if what == "key" else self._sa_pub
        if what == "key":
            return self._sa_key if rot.stage == rotation.TRUST else new_key
        if rot.stage == rotation.DROP or self._sa_pub is None:
            return new_pub
        return self._sa_pub.rstrip(b"\n") + b"\n" + new_pub.rstrip(b"\n") + b"\n"

    def ca_fingerprints(self, name: str) -> dict[str, str]:
        """sha256 of the DER of the old and (while rotating) new CA certificate: how a host's
        trust files are checked (`openssl x509 -fingerprint -sha256`)."""
        out = {}
        for role, ca in (("current", self._cas[name]), ("new", self._new_cas.get(name))):
            if ca is not None and ca.cert is not None:
                out[role] = ca.cert.fingerprint(hashes.SHA256()).hex()
        return out

    def _fingerprint(self, ident: Identity) -> str:
        spec = {"v": SPEC_VERSION, "ca": self._signer(ident.signer).fingerprint, **ident.spec()}
        return _sha(json.dumps(spec, sort_keys=True).encode())

    def _scan_leaf(self, ident: Identity, renew: timedelta) -> _Leaf:
        base = f"{self.dir}/{ident.name}"      # plain strings: pathlib is the hot spot at 1,000 hosts
        crt, key, meta = _read(base + ".crt"), _read(base + ".key"), _read(base + ".json")
        leaf = _Leaf(crt=crt, key=key)
        if crt is None and key is None and meta is None:
            return leaf                                      # MISSING
        leaf.status = CORRUPT
        if crt is None or key is None or meta is None:
            return leaf
        try:
            m = json.loads(meta)
            if m["crt"] != _sha(crt) or m["key"] != _sha(key):
                return leaf
            leaf.not_after = datetime.fromisoformat(m["notAfter"])
        except (ValueError, KeyError, TypeError):
            return leaf
        if m.get("spec") != self._fingerprint(ident):
            leaf.status = CHANGED
            return leaf
        left = leaf.not_after - self.now
        leaf.status = EXPIRED if left <= timedelta(0) else EXPIRING if left <= renew else OK
        return leaf

    # --- issuing --------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        crypto.ensure_dir(self.dir)
        os.chmod(self.state_dir, 0o700)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure(self, renew: bool | Collection[str] = False) -> None:
        self.issued, self.reasons = [], {}
        names = {i.name for i in self.table.identities}
        if renew is True:
            force = names
        else:
            force = set(renew or ())
            unknown = sorted(force - names)
            if unknown:
                raise PKIError(f"no leaf certificate named {', '.join(unknown)}",
                               "`kdeploy certs check --offline -i INV` lists them (CAs are never renewed)")
        with self._locked():
            self._scan()
            for spec in self.table.cas:
                self._ensure_ca(spec)
            self._ensure_sa()
            self._ensure_encryption()
            for ident in self.table.identities:
                leaf = self._leaves[ident.name]
                if leaf.status != OK or ident.name in force:
                    self._issue(ident, leaf)
        self._render_cache.clear()
        self._parsed.clear()

    def _mark(self, name: str, reason: str) -> None:
        self.issued.append(name)
        self.reasons[name] = reason

    def _ensure_ca(self, spec: CASpec) -> None:
        ca = self._cas[spec.name]
        if self.rotation is not None and self.rotation.rotating(spec.name):
            new = self._new_cas.get(spec.name)
            # in the drop stage the new pair may already be the CA (a finish() cut short)
            need_new = self.rotation.stage != rotation.DROP or new is not None
            if ca.status in (MISSING, CORRUPT) or (need_new and (new is None or new.status == CORRUPT)):
                raise PKIError(
                    f"CA {spec.name} is being rotated (stage {self.rotation.stage}) but its old or "
                    f"new pair ({self.dir / spec.name}.crt/.key, "
                    f"{self.dir / rotation.new_name(spec.name)}.crt/.key) is missing or corrupt",
                    "restore the files from a backup of the state dir, then run "
                    "`kdeploy certs rotate-ca` again")
            _fix_mode(self.dir / f"{rotation.new_name(spec.name)}.key")
        if ca.status == MISSING:
            key, cert = crypto.make_ca(spec.cn, defaults.CA_VALIDITY_DAYS, self.now, CA_KEY_TYPE)
            ca.key, ca.crt, ca.cert, ca._key_obj = crypto.key_pem(key), crypto.cert_pem(cert), cert, key
            crypto.write_atomic(self.dir / f"{spec.name}.key", ca.key, 0o600, durable=True)
            crypto.write_atomic(self.dir / f"{spec.name}.crt", ca.crt, 0o644, durable=True)
            ca.status = OK
            self._mark(spec.name, "new CA")
            # a new CA invalidates every certificate it signed
            for ident in self.table.identities:
                if ident.signer == spec.name and self._leaves[ident.name].status != MISSING:
                    self._leaves[ident.name].status = CHANGED
        elif ca.status == CORRUPT:
            raise PKIError(
                f"CA {spec.name}: {self.dir / spec.name}.crt and .key are not a matching, readable pair",
                "restore both files from a backup; delete both only to start a new CA "
                "(every certificate it signed is then reissued and must be redeployed)")
        else:
            _fix_mode(self.dir / f"{spec.name}.key")

    def _ensure_sa(self) -> None:
        key_path, pub_path = self.dir / "sa.key", self.dir / "sa.pub"
        rot = self.sa_rotation
        if rot is not None:
            new_missing = self._sa_new_key is None or self._sa_new_pub is None
            if self._sa_key is None or (new_missing and rot.stage != rotation.DROP):
                raise PKIError(
                    f"the service-account key is being rotated (stage {rot.stage}) but "
                    f"{key_path} or {self.dir / 'sa.new.key'} (.pub) is missing",
                    "restore the files from a backup of the state dir, then run "
                    "`kdeploy certs rotate-sa-key` again")
            _fix_mode(self.dir / "sa.new.key")
        if self._sa_key is None:
            key = crypto.new_key(SA_KEY_TYPE)
            self._sa_key = crypto.key_pem(key)
            crypto.write_atomic(key_path, self._sa_key, 0o600, durable=True)
            self._mark("sa", "new key pair")
            self._sa_pub = None
        else:
            try:
                key = crypto.load_key(self._sa_key)
            except ValueError:
                raise PKIError(f"{key_path} is corrupt",
                               "restore it from a backup; deleting it creates a new key and "
                               "invalidates every service account token") from None
            _fix_mode(key_path)
        pub = crypto.pub_pem(key)
        if self._sa_pub != pub:
            self._sa_pub = pub
            crypto.write_atomic(pub_path, pub, 0o644)

    def _ensure_encryption(self) -> None:
        if self._enc_keys is None:
            self._enc_keys = [("key1", crypto.random_key(32))]
            doc = {"keys": [{"name": n, "secret": base64.b64encode(k).decode()} for n, k in self._enc_keys]}
            crypto.write_atomic(self.dir / ENCRYPTION_FILE, json.dumps(doc, indent=1).encode() + b"\n",
                                0o600, durable=True)
            self._mark("encryption", "new key")
        else:
            _fix_mode(self.dir / ENCRYPTION_FILE)

    def _issue(self, ident: Identity, leaf: _Leaf) -> None:
        ca = self._signer(ident.signer)
        if ca.status == EXPIRED:
            raise PKIError(f"CA {ident.signer} expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}; "
                           f"cannot issue {ident.name}",
                           "replace CAs before they expire (`kdeploy certs rotate-ca`); an expired "
                           "CA: create a new cluster PKI (delete the CA pair in the state dir and "
                           "redeploy every host) or renew the CA by hand")
        key, cert = crypto.issue(
            ca.key_obj(), ca.cert, cn=ident.cn, orgs=ident.orgs, dns=ident.dns_sans,
            ips=ident.ip_sans, usages=ident.usages, days=defaults.CERT_VALIDITY_DAYS,
            now=self.now, kind=ident.key_type)
        reason = _REASONS[leaf.status]
        leaf.key, leaf.crt = crypto.key_pem(key), crypto.cert_pem(cert)
        leaf.not_after = cert.not_valid_after_utc
        base = self.dir / ident.name
        meta = {"spec": self._fingerprint(ident), "crt": _sha(leaf.crt), "key": _sha(leaf.key),
                "notAfter": leaf.not_after.isoformat()}
        crypto.write_atomic(base.with_name(base.name + ".key"), leaf.key, 0o600)
        crypto.write_atomic(base.with_name(base.name + ".crt"), leaf.crt, 0o644)
        # written last: the marker that the pair above is complete
        crypto.write_atomic(base.with_name(base.name + ".json"),
                            json.dumps(meta, sort_keys=True).encode() + b"\n", 0o644)
        leaf.status = OK
        self._mark(ident.name, reason)

    # --- handing out ------------------------------------------------------------------------
    def _require(self, name: str, have) -> None:
        if have is None:
            raise PKIError(f"PKI material '{name}' does not exist yet",
                           "run `kdeploy certs -i INVENTORY` (or ensure_pki) first")

    def _content(self, source, place: Place) -> tuple[bytes, bool]:
        """(content, secret) of one placement."""
        what = place.what
        if isinstance(source, CASpec):
            ca = self._signer(source.name)
            data = (self.trust_bundle(source.name) if what == "crt" else
                    ca.crt if what == "signer" else ca.key)
            if ca.status == CORRUPT:
                data = None
            self._require(source.name, data)
            return data, what == "key"
        if isinstance(source, Identity):
            leaf = self._leaves[source.name]
            if leaf.status in (MISSING, CORRUPT):
                self._require(source.name, None)
            if what == "crt":
                return leaf.crt, False
            if what == "key":
                return leaf.key, True
            server = local_server(self.cluster) if place.server == LOCAL else place.server
            return self._kubeconfig(source, server), True
        if source.name == "sa":
            data = self.sa_material(what)
            self._require("sa", data)
            return data, what == "key"
        if source.name == "encryption":
            self._require("encryption", self._enc_keys)
            ck = ("encryption",)
            if ck not in self._render_cache:
                self._render_cache[ck] = render.encryption_config(self._enc_keys)
            return self._render_cache[ck], True
        raise AssertionError(source)

    def _kubeconfig(self, ident: Identity, server: str) -> bytes:
        ck = (ident.name, server)
        out = self._render_cache.get(ck)
        if out is None:
            leaf = self._leaves[ident.name]
            ca_pem = self.trust_bundle(ident.signer)
            self._require(ident.signer, ca_pem)
            out = render.kubeconfig(cluster_name=self.cluster.name, server=server, ca_pem=ca_pem,
                                    user=ident.user or ident.cn, cert_pem=leaf.crt, key_pem=leaf.key)
            self._render_cache[ck] = out
        return out

    def _host_index(self) -> dict[str, list[tuple[object, Place]]]:
        if self._index is None:
            idx: dict[str, list[tuple[object, Place]]] = {h.name: [] for h in self.cluster.hosts}
            for src in (*self.table.cas, *self.table.extras, *self.table.identities):
                for place in src.places:
                    for h in place.hosts:
                        idx[h].append((src, place))
            self._index = idx
        return self._index

    def _places(self, host: Host | str) -> list:
        """(source, placement) of everything the PKI places on this host."""
        name = host if isinstance(host, str) else host.name
        idx = self._host_index()
        if name not in idx:
            raise PKIError(f"host '{name}' is not in the inventory", "check the host name")
        return idx[name]

    def files_for(self, host: Host | str) -> list[File]:
        """Exactly the PKI material (and kubeconfigs, encryption config) this host needs,
        sorted by path. A path used by several consumers gets the earliest phase and every
        consumer's restarts."""
        merged: dict[str, dict] = {}
        for src, place in self._places(host):
            content, secret = self._content(src, place)
            m = merged.get(place.path)
            if m is None:
                merged[place.path] = {"content": content, "secret": secret, "phase": place.phase,
                                      "restarts": list(place.restarts), "run": list(place.run_on_change)}
                continue
            assert m["content"] == content, place.path
            m["run"] += [r for r in place.run_on_change if r not in m["run"]]
            if PHASES.index(place.phase) < PHASES.index(m["phase"]):
                m["phase"] = place.phase
            m["restarts"] += [r for r in place.restarts if r not in m["restarts"]]
        return [File(path=p, content=m["content"], phase=m["phase"],
                     mode=0o600 if m["secret"] else 0o644, secret=m["secret"],
                     restarts=tuple(m["restarts"]), run_on_change=tuple(m["run"]))
                for p, m in sorted(merged.items())]

    def placed_certificates(self, host: Host | str) -> list:
        """Every certificate this host holds (kdeploy.pki.hosts.Placed), by path: CA certs, leaf
        .crt files and the client certificate inside each kubeconfig, with the deployer's copy.
        Keys, the service-account pair and the encryption config are not certificates."""
        from kdeploy.pki.hosts import Placed
        out: dict[str, Placed] = {}
        for src, place in self._places(host):
            if place.what not in ("crt", "kubeconfig") or place.path in out:
                continue
            if isinstance(src, CASpec):
                ca = self._signer(src.name)      # the first of the bundle while it is rotated
                out[place.path] = Placed(place.path, src.name, "crt",
                                         ca.crt if ca.cert is not None else None, True)
            elif isinstance(src, Identity):
                leaf = self._leaves[src.name]
                pem = leaf.crt if leaf.status not in (MISSING, CORRUPT) else None
                out[place.path] = Placed(place.path, src.name, place.what, pem)
        return [out[p] for p in sorted(out)]

    def admin_kubeconfig(self, server: str | None = None) -> bytes:
        """A cluster-admin kubeconfig for the user (default server: the cluster's API endpoint)."""
        ident = next(i for i in self.table.identities if i.name == "admin")
        leaf = self._leaves["admin"]
        if leaf.status in (MISSING, CORRUPT):
            self._require("admin", None)
        return self._kubeconfig(ident, server or self.cluster.api_server_url)

    # --- reporting --------------------------------------------------------------------------
    def _cert(self, name: str, pem: bytes) -> x509.Certificate:
        c = self._parsed.get(name)
        if c is None:
            c = self._parsed[name] = x509.load_pem_x509_certificate(pem)
        return c

    def certificates(self) -> list[CertInfo]:
        """Every CA and leaf certificate of the cluster, CAs first, with expiry and status."""
        out = []
        for spec in self.table.cas:
            ca = self._cas[spec.name]
            out.append(self._info(spec.name, ca.crt if ca.cert is not None else None, ca.status, True))
            new = self._new_cas.get(spec.name)
            if new is not None and new is not ca:
                out.append(self._info(rotation.new_name(spec.name), new.crt if new.cert is not None else None,
                                      new.status, True))
        for ident in self.table.identities:
            leaf = self._leaves[ident.name]
            pem = leaf.crt if leaf.status not in (MISSING, CORRUPT) else None
            out.append(self._info(ident.name, pem, leaf.status, False))
        return out

    def _info(self, name: str, pem: bytes | None, status: str, is_ca: bool) -> CertInfo:
        if pem is None:
            return CertInfo(name, None, None, None, None, (), status, is_ca)
        c = self._cert(name, pem)
        cn = _cn(c.subject)
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
                str(i) for i in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            sans = ()
        na = c.not_valid_after_utc
        return CertInfo(name, cn, _cn(c.issuer), na, (na - self.now).days, sans, status, is_ca)


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _fix_mode(path: Path) -> None:
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        pass


def load_pki(cluster: Cluster, state_dir: Path | None = None, *, now: datetime | None = None) -> PKI:
    """Read the PKI without writing anything (for `certs check`, plans)."""
    return PKI(cluster, Path(state_dir) if state_dir else default_state_dir(cluster), now)


def ensure_pki(cluster: Cluster, state_dir: Path | None = None, *, now: datetime | None = None,
               renew: bool | Collection[str] = False) -> PKI:
    """Load the PKI and issue whatever is missing, changed, corrupt or about to expire.
    renew: also reissue these leaf certificates although valid (True: every leaf). CAs, the
    service-account key pair and the encryption key are never renewed here.
    pki.issued names what was (re)issued in this call."""
    pki = PKI(cluster, Path(state_dir) if state_dir else default_state_dir(cluster), now, scan=False)
    pki._ensure(renew)
    return pki
