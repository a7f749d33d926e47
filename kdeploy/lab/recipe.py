"""What goes into a lab machine's base root filesystem, and the hash that names its cache.

The hash covers everything that changes the *content* of the base rootfs (suite, variant,
packages, the customisation below, the recipe version), not the mirror it is fetched from.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from kdeploy.errors import LabError

RECIPE_VERSION = 1
SUITE = "bookworm"
VARIANT = "minbase"

# Everything kubelet/containerd/kube-proxy and kdeploy's SSH transport need at runtime.
# minbase already has mount, util-linux, tar, gzip, findutils, coreutils. zstd: a Debian 12 host
# with a kernel has it (initramfs-tools recommends it); kdeploy's uploads use it where present.
PACKAGES: tuple[str, ...] = (
    "systemd-sysv", "dbus", "openssh-server", "openssh-sftp-server", "python3",
    "iproute2", "iptables", "nftables", "conntrack", "socat", "ipset", "ethtool", "kmod",
    "ca-certificates", "iputils-ping", "procps", "libseccomp2", "xz-utils", "zstd",
)

# nspawn mounts the cgroup v1 controllers and /proc/sys read-only; runc must mkdir cgroups and
# kubelet sets sysctls, so remount them read-write very early in boot (see lab notes).
CGROUP_RW_UNIT = """\
[Unit]
Description=Remount nspawn's read-only cgroup v1 controllers and /proc/sys read-write (kdeploy lab)
DefaultDependencies=no
# After systemd-sysctl: it stays skipped (read-only /proc/sys), so the rootfs' sysctl.d is not
# applied to the kernel that all machines share with the host.
After=systemd-sysctl.service
Before=sysinit.target systemd-tmpfiles-setup.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mount -o remount,rw /sys/fs/cgroup; for m in /sys/fs/cgroup/*; do [ -L $$m ] || ! mountpoint -q $$m || mount -o remount,bind,rw $$m; done'
ExecStart=-/bin/sh -c 'mountpoint -q /proc/sys && mount -o remount,bind,rw /proc/sys'

[Install]
WantedBy=sysinit.target
"""

# sshd: only the ed25519 host key kdeploy generates per machine (no noise about missing rsa/ecdsa).
SSHD_DROPIN = """\
# kdeploy lab: host key generated per machine by `kdeploy lab up`
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
"""

# Units that make no sense in a container machine sharing the host kernel.
MASK_UNITS: tuple[str, ...] = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
    "systemd-timesyncd.service", "getty-static.service",
)
ENABLE_UNITS: tuple[str, ...] = ("cgroup-rw.service", "systemd-networkd.service", "ssh.service")


@dataclass(frozen=True)
class Recipe:
    suite: str = SUITE
    variant: str = VARIANT
    arch: str = field(default_factory=lambda: _debian_arch())
    packages: tuple[str, ...] = PACKAGES
    files: tuple[tuple[str, str], ...] = (
        ("etc/systemd/system/cgroup-rw.service", CGROUP_RW_UNIT),
        ("etc/ssh/sshd_config.d/kdeploy-lab.conf", SSHD_DROPIN),
    )
    mask: tuple[str, ...] = MASK_UNITS
    enable: tuple[str, ...] = ENABLE_UNITS
    version: int = RECIPE_VERSION

    def canonical(self) -> str:
        return json.dumps({
            "version": self.version, "suite": self.suite, "variant": self.variant,
            "arch": self.arch, "packages": sorted(self.packages),
            "files": sorted([list(f) for f in self.files]),
            "mask": sorted(self.mask), "enable": sorted(self.enable),
        }, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]


def _debian_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdeploy" / "lab"


def rootfs_dir(recipe: Recipe | None = None) -> Path:
    return cache_root() / f"rootfs-{(recipe or Recipe()).hash()}"


# --- mirror -------------------------------------------------------------------------------

def _parse_one_line(line: str) -> list[tuple[str, list[str]]]:
    line = line.split("#", 1)[0].strip()
    if not line.startswith("deb "):
        return []
    parts = line.split()[1:]
    if parts and parts[0].startswith("["):  # options: deb [arch=amd64 signed-by=...] URI suite
        while parts and not parts[0].endswith("]"):
            parts.pop(0)
        parts = parts[1:]
    if len(parts) < 2:
        return []
    return [(parts[0], [parts[1]])]


def _parse_deb822(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for ln in stanza.splitlines():
            if ln.lstrip().startswith("#") or ":" not in ln:
                continue
            k, v = ln.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append((uri, fields.get("suites", "").split()))
    return out


def apt_sources(root: Path = Path("/")) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled `deb` source in /etc/apt/sources.list(.d)."""
    out: list[tuple[str, list[str]]] = []
    main = root / "etc/apt/sources.list"
    files = [main] if main.is_file() else []
    d = root / "etc/apt/sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            out += _parse_deb822(text)
        else:
            for ln in text.splitlines():
                out += _parse_one_line(ln)
    return out


def debian_mirror(suite: str = SUITE, root: Path = Path("/")) -> str:
    """The Debian mirror apt is configured with for `suite` (not -security/-updates)."""
    for uri, suites in apt_sources(root):
        if suite in suites and not uri.rstrip("/").endswith("-security"):
            return uri
    raise LabError(
        f"no Debian '{suite}' mirror configured in /etc/apt/sources.list or sources.list.d",
        f"add a 'deb <mirror> {suite} main' source (e.g. http://deb.debian.org/debian), "
        "or set KDEPLOY_LAB_MIRROR=<url>",
    )
