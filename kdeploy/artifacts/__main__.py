"""python -m kdeploy.artifacts --shell K8S_VERSION: the build's pins as shell assignments
(kdeploy/artifacts/build/build.sh reads them; catalog.py is the single source of versions)."""
from __future__ import annotations

import sys

from kdeploy.artifacts.catalog import shell_pins
from kdeploy.errors import KdeployError


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--shell":
        try:
            print(shell_pins(argv[1]))
        except KdeployError as e:
            print(f"error: {e.message}\nhint: {e.hint}", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m kdeploy.artifacts --shell K8S_VERSION", file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))
