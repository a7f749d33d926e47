"""Rendering of kubeconfigs and the encryption config from templates/ through the shared
environment (kdeploy.render.env: StrictUndefined, no autoescape, trailing newline kept)."""
from __future__ import annotations

import base64

from kdeploy.render.env import render

KUBECONFIG_TEMPLATE = "kubeconfig/kubeconfig.yaml.j2"
ENCRYPTION_TEMPLATE = "control-plane/encryption-config.yaml.j2"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kubeconfig(*, cluster_name: str, server: str, ca_pem: bytes, user: str, cert_pem: bytes,
               key_pem: bytes) -> bytes:
    return render(KUBECONFIG_TEMPLATE, {
        "cluster_name": cluster_name, "server": server, "ca_data": b64(ca_pem), "user": user,
        "context": f"{user}@{cluster_name}", "cert_data": b64(cert_pem), "key_data": b64(key_pem),
    }).encode()


def encryption_config(keys: list[tuple[str, bytes]]) -> bytes:
    """keys: [(name, 32 raw bytes)], the first one encrypts."""
    return render(ENCRYPTION_TEMPLATE, {"keys": [{"name": n, "secret": b64(k)} for n, k in keys]}).encode()
