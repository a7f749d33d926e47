"""Build (once) and cache the base root filesystem every lab machine is a copy-on-write view of.

Built with debootstrap into a temporary directory next to the cache entry, customised, then
renamed into place: a crashed build never leaves a half rootfs under the final name.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from kdeploy.errors import LabError
from kdeploy.lab import prereq
from kdeploy.lab.recipe import Recipe, cache_root, debian_mirror, rootfs_dir

MARKER = ".kdeploy-lab-rootfs.json"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "lib/systemd/systemd").exists() \
        and (path / "usr/sbin/sshd").exists()


def ensure_rootfs(recipe: Recipe | None = None, *, log: Callable[[str], None] = lambda s: None,
                  mirror: str | None = None) -> tuple[Path, float | None]:
    """Return (path of the cached base rootfs, seconds spent building or None if cached)."""
    recipe = recipe or Recipe()
    final = rootfs_dir(recipe)
    if is_complete(final):
        return final, None
    prereq.require("debootstrap", "chroot")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / f"rootfs-{recipe.hash()}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another `lab up` may be building the same recipe
        if is_complete(final):
            return final, None
        if final.exists():  # an old, incomplete directory under the final name: never trust it
            shutil.rmtree(final)
        for stale in root.glob(f".rootfs-{recipe.hash()}.tmp-*"):
            _remove_tree(stale)
        mirror = mirror or os.environ.get("KDEPLOY_LAB_MIRROR") or debian_mirror(recipe.suite)
        tmp = root / f".rootfs-{recipe.hash()}.tmp-{os.getpid()}"
        logfile = root / f"rootfs-{recipe.hash()}.debootstrap.log"
        log(f"building base rootfs (debootstrap {recipe.suite} from {mirror}); log: {logfile}")
        t0 = time.monotonic()
        try:
            _debootstrap(recipe, mirror, tmp, logfile)
            customise(tmp, recipe)
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        return final, time.monotonic() - t0
    finally:
        lock.close()


def _debootstrap(recipe: Recipe, mirror: str, tmp: Path, logfile: Path) -> None:
    argv = ["debootstrap", f"--variant={recipe.variant}", f"--arch={recipe.arch}",
            "--include=" + ",".join(recipe.packages), recipe.suite, str(tmp), mirror]
    with open(logfile, "w") as lf:
        lf.write(" ".join(argv) + "\n")
        lf.flush()
        # own process group: on Ctrl-C/SIGTERM we stop debootstrap and its dpkg/wget children
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            rc = p.wait()
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            except ProcessLookupError:
                pass
            raise
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise LabError(f"debootstrap failed (exit {rc}) building the lab rootfs:\n  " + "\n  ".join(tail),
                       f"see {logfile}; check that the mirror {mirror} is reachable "
                       "(set KDEPLOY_LAB_MIRROR to use another)")


def _remove_tree(path: Path) -> None:
    """rm -rf a (partial) debootstrap tree, first unmounting what debootstrap mounted inside
    (proc, sys, devpts ...) so rmtree never walks into the host's /proc or /sys."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        below = [ln.split()[1].replace("\\040", " ") for ln in f]
    for mnt in sorted((m for m in below if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(path, ignore_errors=True)


def customise(root: Path, recipe: Recipe) -> None:
    """Make a debootstrapped tree a bootable, key-less machine template (idempotent)."""
    for rel, text in recipe.files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "etc/fstab").write_text("# kdeploy lab machine: no fstab, no swap\n")
    (root / "etc/machine-id").write_text("")  # nspawn hands each machine its own id
    for p in [root / "var/lib/dbus/machine-id", *(root / "etc/ssh").glob("ssh_host_*")]:
        p.unlink(missing_ok=True)
    # enable: chroot systemctl works offline and honours [Install] sections
    subprocess.run(["chroot", str(root), "systemctl", "enable", *recipe.enable], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for unit in recipe.mask:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # smaller cache: no downloaded .debs, no package lists (machines are not meant to apt-get)
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / d).glob("*"):
            if p.is_file() and p.name != "lock":
                p.unlink()
    (root / MARKER).write_text(recipe.canonical() + "\n")
