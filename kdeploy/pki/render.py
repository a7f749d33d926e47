"""Rendering of kubeconfigs and the encryption config from templates/ (Jinja2, StrictUndefined)."""
from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

import jinja2

import kdeploy

TEMPLATES_DIR = Path(kdeploy.__file__).resolve().parent.parent / "templates"
KUBECONFIG_TEMPLATE = "kubeconfig/kubeconfig.yaml.j2"
ENCRYPTION_TEMPLATE = "control-plane/encryption-config.yaml.j2"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # kdeploy/render/env.py (the shared factory) did not exist when this was written; switch
    # to it once it does. Same settings: templates/ dir, StrictUndefined, trailing newline kept.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)


@lru_cache(maxsize=4)
def _template(name: str) -> jinja2.Template:
    return environment().get_template(name)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kubeconfig(*, cluster_name: str, server: str, ca_pem: bytes, user: str, cert_pem: bytes,
               key_pem: bytes) -> bytes:
    return _template(KUBECONFIG_TEMPLATE).render(
        cluster_name=cluster_name, server=server, ca_data=b64(ca_pem), user=user,
        context=f"{user}@{cluster_name}", cert_data=b64(cert_pem), key_data=b64(key_pem),
    ).encode()


def encryption_config(keys: list[tuple[str, bytes]]) -> bytes:
    """keys: [(name, 32 raw bytes)], the first one encrypts."""
    return _template(ENCRYPTION_TEMPLATE).render(
        keys=[{"name": n, "secret": b64(k)} for n, k in keys]).encode()
