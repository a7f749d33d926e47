"""`kdeploy artifacts build`: the offline artifact set built from the upstream Go modules at the
catalog's pins. build.sh does the work (its Python steps: mkimage.py writes the image archives,
mkmanifest.py writes and checks manifest.json); this module finds it and checks what it needs
first. Times, sizes and notes: docs/artifacts-build.md.

    preflight()                                   raises ArtifactError (no Go, Go too old, ...)
    run_build("1.37.2", arch="amd64", output=DIR)   -> build.sh's exit status

The set is cached in ${XDG_CACHE_HOME:-~/.cache}/kdeploy/artifacts-build/<version>-<arch>/ with a
stamp per component (.stamps/<component>): a rerun with a valid manifest takes seconds.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kdeploy.errors import ArtifactError

SCRIPT = Path(__file__).resolve().with_name("build.sh")
# build.sh's components, in build order (its run_component lines)
COMPONENTS = ("kubernetes", "etcd", "containerd", "runc", "cni", "crictl", "coredns", "api-lb",
              "images", "kube-bench")
# the go.mod build.sh writes says `go 1.26.0`, and it builds with GOTOOLCHAIN=local
MIN_GO = (1, 26)
_GO_HINT = (f"install Go {MIN_GO[0]}.{MIN_GO[1]} or newer from https://go.dev/dl/ and put its bin/ "
            "on PATH (Debian 12's golang-go is too old)")


def _go_version(go: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "local")},
                             ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"go(\d+)\.(\d+)", out.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def preflight() -> None:
    """Raise ArtifactError when build.sh cannot run here. What it installs itself (gcc,
    libc6-dev, libseccomp-dev with apt-get, which needs root) it reports itself."""
    if not sys.platform.startswith("linux"):
        raise ArtifactError("the artifact build runs on Linux only",
                            "run it on a Debian 12 machine (the api-lb step downloads Debian "
                            "12 packages)")
    if not SCRIPT.is_file():
        raise ArtifactError(f"the build script {SCRIPT} is missing from this kdeploy installation",
                            "reinstall kdeploy (the wheel ships kdeploy/artifacts/build/build.sh)")
    missing = [t for t in ("bash", "flock", "sha256sum") if not shutil.which(t)]
    if missing:
        raise ArtifactError(f"the artifact build needs {', '.join(missing)}",
                            "apt-get install -y bash util-linux coreutils")
    go = shutil.which("go")
    if go is None:
        raise ArtifactError("Go is not installed (the build compiles the upstream Go modules)",
                            _GO_HINT)
    have = _go_version(go)
    if have is None:
        raise ArtifactError(f"cannot tell the version of {go} (`go env GOVERSION` failed)", _GO_HINT)
    if have < MIN_GO and os.environ.get("GOTOOLCHAIN", "local") == "local":
        raise ArtifactError(f"{go} is Go {have[0]}.{have[1]}; the build needs "
                            f"{MIN_GO[0]}.{MIN_GO[1]} or newer", _GO_HINT)


def check_components(only: list[str]) -> None:
    unknown = [c for c in only if c not in COMPONENTS]
    if unknown:
        raise ArtifactError(f"unknown component(s) for --only: {', '.join(unknown)}",
                            f"choose from: {', '.join(COMPONENTS)}")


def run_build(version: str, *, arch: str | None = None, output: Path | None = None,
              only: list[str] | None = None, force: bool = False) -> int:
    """Run build.sh (its output goes to this process's stdout/stderr); its exit status."""
    argv = ["bash", str(SCRIPT), "--k8s-version", version]
    if arch:
        argv += ["--arch", arch]
    if output is not None:
        argv += ["-o", str(output)]
    if only:
        check_components(only)
        argv += ["--only", ",".join(only)]
    if force:
        argv.append("--force")
    # the interpreter that runs kdeploy has its dependencies (build.sh imports kdeploy)
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(argv, env=env).returncode
