"""Certificates as placed on the hosts: which files to read, the script that reads them in one
round trip, its parser, and the comparison with the deployer's copies. Pure (no I/O): the verb
(kdeploy.verbs.certs) runs the script over the transports.

What leaves a host: each certificate file kdeploy placed there (CA and leaf .crt files, whole)
and, of each kubeconfig, only its `client-certificate-data` line. Key files and the kubeconfigs'
`client-key-data` are never read.
"""
from __future__ import annotations

import base64
import binascii
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kdeploy.model import defaults
from kdeploy.pki import crypto

MARK = "@@kdeploy-cert "
MISSING_MARK = "@@missing"

# host statuses, worst first (status = the worst flag)
MISSING, UNREADABLE, EXPIRED, MISMATCH, EXPIRING, UNREACHABLE, OK = (
    "missing", "unreadable", "expired", "mismatch", "expiring", "unreachable", "ok")
_ORDER = (UNREACHABLE, MISSING, UNREADABLE, EXPIRED, MISMATCH, EXPIRING)


@dataclass(frozen=True)
class Placed:
    """A certificate kdeploy placed on a host: its path there, the PKI name, how it is stored
    (crt: a PEM file; kubeconfig: embedded client-certificate-data) and the deployer's copy."""
    path: str
    name: str
    kind: str                  # crt | kubeconfig
    pem: bytes | None          # the deployer's copy (None: the deployer has none)
    is_ca: bool = False


@dataclass(frozen=True)
class HostCert:
    host: str
    path: str
    name: str
    cn: str | None = None
    not_after: datetime | None = None
    days_left: int | None = None
    fingerprint: str | None = None          # sha256 of the DER, as the host has it
    deployer_fingerprint: str | None = None
    flags: tuple[str, ...] = ()
    detail: str = ""
    is_ca: bool = False

    @property
    def status(self) -> str:
        for f in _ORDER:
            if f in self.flags:
                return f
        return OK

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def to_dict(self) -> dict:
        return {"host": self.host, "path": self.path, "name": self.name, "cn": self.cn,
                "notAfter": self.not_after.isoformat() if self.not_after else None,
                "daysLeft": self.days_left, "fingerprint": self.fingerprint,
                "deployerFingerprint": self.deployer_fingerprint, "status": self.status,
                "flags": list(self.flags), "detail": self.detail, "ca": self.is_ca}


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def read_script(placed: list[Placed]) -> str:
    """One shell script printing, per placed certificate, a marker line and the certificate
    (a .crt file whole; of a kubeconfig only its client-certificate-data value)."""
    lines = [
        "c() { echo '" + MARK + "'\"$1\"; if [ -r \"$1\" ]; then cat \"$1\"; echo; "
        "else echo '" + MISSING_MARK + "'; fi; }",
        "k() { echo '" + MARK + "'\"$1\"; if [ -r \"$1\" ]; then "
        "sed -n 's/^[[:space:]]*client-certificate-data:[[:space:]]*//p' \"$1\"; "
        "else echo '" + MISSING_MARK + "'; fi; }",
    ]
    for p in placed:
        if p.path.endswith(".key"):          # never, whatever the table says
            continue
        lines.append(f"{'k' if p.kind == 'kubeconfig' else 'c'} {shlex.quote(p.path)}")
    lines.append("true")
    return "\n".join(lines) + "\n"


def parse_read(output: str) -> dict[str, str | None]:
    """{path: text (PEM, or a kubeconfig's base64 value) | None when missing}."""
    out: dict[str, str | None] = {}
    path, buf = None, []

    def flush():
        if path is not None:
            text = "\n".join(buf).strip()
            out[path] = None if text == MISSING_MARK else text
    for line in output.splitlines():
        if line.startswith(MARK):
            flush()
            path, buf = line[len(MARK):], []
        elif path is not None:
            buf.append(line)
    flush()
    return out


def _load(kind: str, text: str) -> x509.Certificate:
    if kind == "kubeconfig":
        value = text.split()[0] if text.split() else ""
        pem = base64.b64decode(value, validate=True)
    else:
        pem = text.encode()
    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    end = pem.find(b"-----END CERTIFICATE-----")
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate")
    return x509.load_pem_x509_certificate(pem[start:end + len(b"-----END CERTIFICATE-----")] + b"\n")


def compare(host: str, placed: list[Placed], found: dict[str, str | None],
            now: datetime | None = None, renew_before_days: int = defaults.RENEW_BEFORE_DAYS
            ) -> list[HostCert]:
    """One HostCert per placed certificate: what the host holds, flagged when missing,
    unreadable, different from the deployer's copy, expired or within the renewal window."""
    now = crypto.utc(now)
    out = []
    for p in placed:
        want = None
        if p.pem:
            try:
                want = fingerprint(_load("crt", p.pem.decode()))
            except ValueError:
                want = None
        text = found.get(p.path)
        base = dict(host=host, path=p.path, name=p.name, deployer_fingerprint=want, is_ca=p.is_ca)
        if text is None or not text.strip():
            what = "no client-certificate-data" if text is not None else "not on the host"
            out.append(HostCert(**base, flags=(MISSING,), detail=what))
            continue
        try:
            cert = _load(p.kind, text)
        except (ValueError, binascii.Error, TypeError):
            out.append(HostCert(**base, flags=(UNREADABLE,), detail="not a PEM certificate"))
            continue
        fp = fingerprint(cert)
        na = cert.not_valid_after_utc
        left = na - now
        flags: list[str] = []
        details = []
        if fp != want:
            flags.append(MISMATCH)
            details.append("differs from the deployer's copy" if want else "the deployer has no copy")
        if left.total_seconds() <= 0:
            flags.append(EXPIRED)
        elif left <= timedelta(days=renew_before_days):
            flags.append(EXPIRING)
            details.append(f"expires within {renew_before_days} days")
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        out.append(HostCert(**base, cn=str(cn[0].value) if cn else None, not_after=na,
                            days_left=left.days, fingerprint=fp, flags=tuple(flags),
                            detail="; ".join(details)))
    return out


def unreachable(host: str, error: str) -> HostCert:
    return HostCert(host=host, path="-", name="-", flags=(UNREACHABLE,), detail=error)
