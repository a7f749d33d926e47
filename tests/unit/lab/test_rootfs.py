import subprocess

import pytest

from kdeploy.errors import LabError
from kdeploy.lab import rootfs
from kdeploy.lab.recipe import Recipe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(rootfs.prereq, "require", lambda *a: None)
    monkeypatch.setenv("KDEPLOY_LAB_MIRROR", "http://mirror.invalid/debian")
    return tmp_path / "kdeploy" / "lab"


def fake_debootstrap(recipe, mirror, tmp, logfile):
    for d in ("lib/systemd", "usr/sbin", "etc/ssh", "etc/systemd/system", "var/lib/dbus"):
        (tmp / d).mkdir(parents=True)
    (tmp / "lib/systemd/systemd").write_text("")
    (tmp / "usr/sbin/sshd").write_text("")
    (tmp / "etc/ssh/ssh_host_rsa_key").write_text("secret")
    (tmp / "etc/machine-id").write_text("abc\n")


def test_crashed_build_never_leaves_a_rootfs(cache, monkeypatch):
    def boom(recipe, mirror, tmp, logfile):
        fake_debootstrap(recipe, mirror, tmp, logfile)
        raise LabError("debootstrap failed")
    monkeypatch.setattr(rootfs, "_debootstrap", boom)
    with pytest.raises(LabError):
        rootfs.ensure_rootfs(Recipe(arch="amd64"))
    assert not (cache / f"rootfs-{Recipe(arch='amd64').hash()}").exists()
    assert not list(cache.glob(".rootfs-*"))


def test_build_customises_then_renames_and_caches(cache, monkeypatch):
    calls = []
    monkeypatch.setattr(rootfs, "_debootstrap", fake_debootstrap)
    monkeypatch.setattr(rootfs.subprocess, "run", lambda argv, **kw: calls.append(argv) or
                        subprocess.CompletedProcess(argv, 0))
    r = Recipe(arch="amd64")
    path, built = rootfs.ensure_rootfs(r)
    assert built is not None and path == cache / f"rootfs-{r.hash()}" and rootfs.is_complete(path)
    assert not list((path / "etc/ssh").glob("ssh_host_*"))         # per machine, never shared
    assert (path / "etc/machine-id").read_text() == ""
    assert (path / "etc/systemd/system/cgroup-rw.service").is_file()
    assert (path / "etc/systemd/system/apt-daily.timer").resolve().as_posix() == "/dev/null"
    assert calls and calls[0][:3] == ["chroot", str(path.parent / f".rootfs-{r.hash()}.tmp-{__import__('os').getpid()}"), "systemctl"]
    assert rootfs.ensure_rootfs(r) == (path, None)                 # cached now


def test_incomplete_dir_under_final_name_is_rebuilt(cache, monkeypatch):
    r = Recipe(arch="amd64")
    (cache / f"rootfs-{r.hash()}" / "etc").mkdir(parents=True)
    monkeypatch.setattr(rootfs, "_debootstrap", fake_debootstrap)
    monkeypatch.setattr(rootfs.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 0))
    path, built = rootfs.ensure_rootfs(r)
    assert built is not None and rootfs.is_complete(path)
