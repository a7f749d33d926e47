from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "inventories" / "sample"


def fake_artifact_set(d: Path, *, kube_bench: bool = True) -> Path:
    """Every file of a built artifact set under d (content: its name), no manifest;
    kube_bench=False: without the optional tools/kube-bench/ (a set from before it, or fetched)."""
    from kdeploy.artifacts import catalog
    files = [(s.relpath, s.name) for s in catalog.file_specs()]
    if kube_bench:
        files += [(rel, rel.rsplit("/", 1)[1]) for rel in catalog.kube_bench_files()]
    for rel, content in files:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode())
    return d


def path_without(tmp_path: Path, tool: str) -> str:
    """A PATH of this machine's shell tools without `tool`: a host that lacks it."""
    import shutil
    d = tmp_path / f"path-without-{tool}"
    d.mkdir()
    for name in ("sh", "sed", "cut", "awk", "stat", "xargs", "mktemp", "cp", "sha256sum", "openssl",
                 "gzip", "mkdir", "rm", "chown", "chmod", "sync", "mv", "install", "cat"):
        if name != tool and shutil.which(name):
            (d / name).symlink_to(shutil.which(name))
    return str(d)


@pytest.fixture
def write_inv(tmp_path):
    """Write an inventory text to a tmp file and return its path."""
    def _write(text: str, name: str = "cluster.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return _write


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) a lab test that cannot run fails: a green run with the lab skipped
    would prove nothing."""
    import os
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("lab"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"lab test skipped in CI (a failure there): {reason}"
