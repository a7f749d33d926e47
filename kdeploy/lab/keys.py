"""SSH keys for the lab: the client key pair and per-machine host keys (ed25519, OpenSSH format)."""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def new_ed25519(comment: str) -> tuple[bytes, str]:
    """(private key in OpenSSH PEM format, public key line 'ssh-ed25519 AAAA... comment')."""
    k = Ed25519PrivateKey.generate()
    priv = k.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    pub = k.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return priv, f"{pub} {comment}"


def write_key_pair(path: Path, comment: str) -> str:
    """Write path (0600) and path.pub; return the public key line."""
    priv, pub = new_ed25519(comment)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    Path(str(path) + ".pub").write_text(pub + "\n")
    return pub


def known_hosts_line(names: list[str], pub: str) -> str:
    """'m1,192.168.57.11 ssh-ed25519 AAAA...' (comment dropped)."""
    keytype, blob = pub.split()[:2]
    return f"{','.join(names)} {keytype} {blob}"
