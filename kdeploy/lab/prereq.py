"""Host tools the lab needs, and the Debian package that provides each."""
from __future__ import annotations

import os
import shutil

from kdeploy.errors import PrerequisiteError

PACKAGE_OF = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
    "ssh": "openssh-client",
}


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = sorted({PACKAGE_OF.get(t, t) for t in missing})
        raise PrerequisiteError(
            f"the lab needs {', '.join(missing)} on this machine, not found in PATH",
            f"install it: apt-get install {' '.join(pkgs)}",
        )


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrerequisiteError(
            "the lab needs root (network namespaces, cgroups, overlay mounts, systemd-nspawn)",
            "run kdeploy lab as root (e.g. sudo kdeploy lab up ...)",
        )
