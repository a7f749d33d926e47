"""Write a single-layer image archive importable by `ctr -n k8s.io images import` (no docker).

    python3 -m kdeploy.artifacts.build.mkimage --ref kdeploy.invalid/pause:3.10.2 \
        --file SRC:/pause --entrypoint /pause -o pause.tar
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdeploy.artifacts.oci import ImageFile, ImageSpec, write_image_archive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--file", action="append", default=[], help="SRC:/dest (mode 0755)")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--user")
    ap.add_argument("--expose", action="append", default=[])
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    files = []
    for f in a.file:
        src, _, dest = f.rpartition(":")
        if not src or not dest.startswith("/"):
            ap.error(f"--file wants SRC:/dest, got {f!r}")
        files.append(ImageFile(Path(src), dest))
    digest = write_image_archive(ImageSpec(ref=a.ref, files=files, arch=a.arch, entrypoint=a.entrypoint,
                                           cmd=a.cmd, user=a.user, exposed_ports=a.expose), Path(a.output))
    print(f"{a.output}: {a.ref} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
