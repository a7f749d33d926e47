"""Rendered units pass `systemd-analyze verify` (skipped where systemd-analyze is missing).

The units are verified under --root=TMP: a copy of the machine's unit directory (for the
targets they name) plus stand-in executables at every ExecStart path, so nothing on the
machine itself is touched.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kdeploy.render import render_host

from .conftest import SAMPLE_NAMES, load_sample

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                     if p.is_dir()), None)

pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None or SYSTEM_UNITS is None,
                                reason="systemd-analyze not installed")


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_units_verify(tmp_path, name):
    c = load_sample(name)
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    execs: set[str] = set()
    units: list[Path] = []
    for h in c.hosts:
        for f in render_host(c, h).files:
            if not f.path.startswith("/etc/systemd/system/"):
                continue
            text = f.content.decode()
            execs.update(re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.M))
            d = root / "hosts" / h.name
            d.mkdir(parents=True, exist_ok=True)
            # verify wants the unit where systemd would load it; one host at a time
            units.append(d / Path(f.path).name)
            units[-1].write_bytes(f.content)
    for e in execs:
        p = root / e.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    by_host: dict[Path, list[Path]] = {}
    for u in units:
        by_host.setdefault(u.parent, []).append(u)
    for d, us in by_host.items():
        target = root / "etc/systemd/system"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        paths = []
        for u in us:
            shutil.copy(u, target / u.name)
            paths.append(str(target / u.name))
        r = subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", *paths],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), (
            f"{d.name}: {r.stdout}{r.stderr}")
