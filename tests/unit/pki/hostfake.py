"""A host whose files live in a temp dir, running kdeploy's read script for real (sh, cat, sed)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from kdeploy.pki import PKI
from kdeploy.transport.base import CommandResult

ROOTS = ("/etc/kubernetes", "/var/lib/kubelet")


class DirHost:
    def __init__(self, root: Path):
        self.root = root
        self.scripts: list[str] = []

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def install(self, pki: PKI, host: str) -> None:
        """Every PKI file of the host, as `kdeploy up` places it (keys too)."""
        for f in pki.files_for(host):
            dst = self.path(f.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.content)
            dst.chmod(f.mode)

    def run(self, cmd, *, timeout=None, check=True, input=None, secret=False):
        assert isinstance(cmd, str)
        self.scripts.append(cmd)
        local = cmd
        for r in ROOTS:
            local = local.replace(f" {r}/", f" {self.root}{r}/")
        p = subprocess.run(["sh", "-c", local], capture_output=True, timeout=30)
        out = p.stdout.replace(str(self.root).encode(), b"")     # the host's own paths again
        return CommandResult("read-certs", p.returncode, out, p.stderr)

    def close(self):
        pass
