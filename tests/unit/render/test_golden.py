"""Golden files: tests/golden/<sample>/<host>/<path on host>, compared byte for byte.

Regenerate after an intended change with:  KDEPLOY_UPDATE_GOLDEN=1 pytest tests/unit/render
PKI material (random) is not part of the goldens: they come from render_host/render_addons.
Blocks are stored as the marked block alone (what kdeploy owns inside e.g. /etc/hosts).
"""
from __future__ import annotations

import os
import shutil

import pytest

from kdeploy.render import addons_host, render_addons, render_host

from .conftest import REPO, SAMPLE_NAMES, load_sample

GOLDEN = REPO / "tests" / "golden"
UPDATE = os.environ.get("KDEPLOY_UPDATE_GOLDEN") == "1"


def expected_tree(name: str) -> dict[str, bytes]:
    c = load_sample(name)
    out: dict[str, bytes] = {}
    first = addons_host(c)
    for h in c.hosts:
        res = render_host(c, h)
        files = list(res.files) + (render_addons(c) if h.name == first else [])
        for f in files:
            out[f"{h.name}{f.path}"] = f.content
        for b in res.blocks:
            out[f"{h.name}{b.path}"] = f"# BEGIN {b.marker}\n{b.content}# END {b.marker}\n".encode()
    return out


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_golden(name):
    want = expected_tree(name)
    root = GOLDEN / name
    if UPDATE:
        if root.exists():
            shutil.rmtree(root)
        for rel, content in want.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
    assert root.is_dir(), f"no goldens for {name}: run with KDEPLOY_UPDATE_GOLDEN=1"
    have = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert sorted(have) == sorted(want), "set of rendered files changed (KDEPLOY_UPDATE_GOLDEN=1 to accept)"
    for rel in want:
        assert have[rel] == want[rel], f"{name}/{rel} differs (KDEPLOY_UPDATE_GOLDEN=1 to accept)"
