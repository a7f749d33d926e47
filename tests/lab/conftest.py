"""Shared fixtures for tests on real lab machines (systemd-nspawn), used by tests/lab/*.

    def test_x(lab_cluster):
        lab = lab_cluster(masters=1, workers=2)     # up once per topology per session
        lab.inventory                               # kdeploy inventory path (kdeploy up -i ...)
        rc, out, err = lab.run("m1", "hostname")    # paramiko, strict host keys, via the netns
        with lab.ssh("m2") as client: ...           # a connected paramiko.SSHClient
        lab.put("m1", local_path, "/tmp/x")

Every lab the session started is brought down at the end of the session.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kdeploy.lab import api
from kdeploy.lab.recipe import cache_root
from kdeploy.lab.state import LabState
from kdeploy.netns import connect_in_netns


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, cgroups, mounts, systemd-nspawn)"
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                      ("nsenter", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"lab tests need {tool} (apt-get install {pkg})"
    return None


@dataclass
class LabCluster:
    name: str
    inventory: Path
    info: dict = field(default_factory=dict)
    down_s: float | None = None

    @property
    def netns(self) -> str:
        return self.info["netns"]

    @property
    def key_file(self) -> str:
        return self.info["key_file"]

    @property
    def known_hosts(self) -> str:
        return self.info["known_hosts"]

    @property
    def machines(self) -> list[dict]:
        return self.info["machines"]

    def address(self, machine: str) -> str:
        return next(m["address"] for m in self.machines if m["name"] == machine)

    @contextmanager
    def ssh(self, machine: str, timeout: float = 15.0):
        import paramiko
        addr = self.address(machine)
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)           # the lab's known_hosts only
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = connect_in_netns(self.netns, addr, 22, timeout)
        try:
            client.connect(addr, port=22, username="root", key_filename=self.key_file, sock=sock,
                           look_for_keys=False, allow_agent=False, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
            yield client
        finally:
            client.close()
            sock.close()

    def run(self, machine: str, command: str, timeout: float = 120.0) -> tuple[int, str, str]:
        with self.ssh(machine) as c:
            _, out, err = c.exec_command(command, timeout=timeout)
            o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
            return out.channel.recv_exit_status(), o, e

    def put(self, machine: str, local: str | os.PathLike, remote: str) -> None:
        with self.ssh(machine) as c:
            sftp = c.open_sftp()
            try:
                sftp.put(str(local), remote)
            finally:
                sftp.close()

    def down(self) -> float:
        if self.down_s is None:
            self.down_s = api.down(name=self.name, log=lambda s: None)
        return self.down_s


def fresh_lab(name: str, inventory: Path, *, masters: int = 1, workers: int = 1) -> LabCluster:
    """Lab `name` up, its inventory written to `inventory` (a leftover of an earlier, killed
    run goes down first)."""
    if LabState(name).exists():
        api.down(name=name, log=lambda s: None)
    info = api.up(name=name, masters=masters, workers=workers, output=inventory, log=lambda s: None)
    return LabCluster(name=name, inventory=inventory, info=info)


def module_lab(name: str, tmp_path_factory, *, masters: int = 1, workers: int = 1):
    """The body of a module fixture owning its lab: yields (LabCluster, artifact dir), takes
    the lab down afterwards.  `yield from module_lab("rst", tmp_path_factory)`"""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    from tests.lab.test_up import artifacts_dir
    art = artifacts_dir()
    lab = fresh_lab(name, tmp_path_factory.mktemp(name) / "inventory.yaml", masters=masters, workers=workers)
    try:
        yield lab, art
    finally:
        lab.down()


@pytest.fixture(scope="session")
def lab_cluster(tmp_path_factory):
    """Factory: lab_cluster(masters=1, workers=2) -> LabCluster (one lab per topology per session)."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    labs: dict[tuple[int, int], LabCluster] = {}

    def get(masters: int = 1, workers: int = 2) -> LabCluster:
        key = (masters, workers)
        lab = labs.get(key)
        if lab is not None and lab.down_s is None:
            return lab
        name = f"pytest-{masters}m{workers}w"
        labs[key] = lab = fresh_lab(name, tmp_path_factory.mktemp(name) / "inventory.yaml",
                                    masters=masters, workers=workers)
        return lab

    yield get
    errors = []
    for lab in labs.values():
        try:
            lab.down()
        except Exception as e:  # pragma: no cover - reported, not raised over other failures
            errors.append(f"{lab.name}: {e}")
    assert not errors, errors


# --- nested container helpers (Debian packages for now; upstream containerd later) -------------

NESTED_DEBS = ("containerd", "runc", "containernetworking-plugins", "busybox-static")


def debian_debs(names=NESTED_DEBS) -> list[Path]:
    """`apt-get download` the .debs into the lab cache once; return their paths."""
    d = cache_root() / "debs"
    d.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0]: p for p in d.glob("*.deb")}
    missing = [n for n in names if n not in have]
    if missing:
        p = subprocess.run(["apt-get", "download", *missing], cwd=d, capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"apt-get download {' '.join(missing)} failed: {p.stderr.strip()[-300:]}")
        have = {p.name.split("_")[0]: p for p in d.glob("*.deb")}
    return [have[n] for n in names]


def busybox_image_archive(busybox_deb: Path, out: Path, tag: str = "lab/busybox:1") -> Path:
    """A one-layer docker-archive (`docker save` format) with a static busybox, for `ctr image import`."""
    import tempfile
    with tempfile.TemporaryDirectory() as w:
        subprocess.run(["dpkg-deb", "-x", str(busybox_deb), w], check=True)
        busybox = Path(w, "bin/busybox").read_bytes()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755 if d != "tmp" else 0o1777
            t.addfile(ti)
        ti = tarfile.TarInfo("bin/busybox")
        ti.mode, ti.size = 0o755, len(busybox)
        t.addfile(ti, io.BytesIO(busybox))
        for a in ("sh", "ls", "cat", "echo", "hostname", "id", "ip", "ps", "sleep", "uname", "mount"):
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(ti)
    layer_bytes = layer.getvalue()
    diff = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(out, "w") as t:
        for name, data in (("manifest.json", manifest), (cfg_name, config), ("layer.tar", layer_bytes)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
    return out


@pytest.fixture(scope="session")
def nested_image_tools():
    """(debian_debs, busybox_image_archive) for tests that run containers inside machines."""
    return debian_debs, busybox_image_archive
