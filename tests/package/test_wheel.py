"""kdeploy as a user installs it: build the wheel from this checkout, install it into a fresh
virtualenv outside the checkout, and run the installed `kdeploy` from another directory.

The wheel must carry everything kdeploy reads at run time: templates/ (render, plan),
playbooks/ (the ansible transport) and the artifact build recipe (`kdeploy artifacts build`).
Nothing here opens a network connection beyond pip's: the sample inventory's documentation
addresses (192.0.2.x) are never dialled, and where `unshare` can, the commands run in an empty
network namespace so that any attempt would fail. Takes about 15-25 s (pip's cache warm).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES, fake_artifact_set

# what the installed package must contain (relative to site-packages)
SHIPPED = ["kdeploy/templates/containerd/config.toml.j2", "kdeploy/playbooks/transport/run.yml",
           "kdeploy/playbooks/transport/put.yml", "kdeploy/playbooks/transport/get.yml",
           "kdeploy/artifacts/build/build.sh", "kdeploy/artifacts/build/mkmanifest.py",
           "kdeploy/artifacts/build/mkimage.py", "kdeploy/cis/config.yaml.j2"]
# not part of the package source: left out of the copy the wheel is built from
_NOT_SOURCE_TOP = {".git", "tests", "bench", "_out", "build", "dist", ".venv"}
_NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
                                     ".hypothesis", ".kdeploy")


def _ignore(d: str, names: list[str]) -> set[str]:
    top = _NOT_SOURCE_TOP & set(names) if Path(d) == REPO else set()
    return top | _NOT_SOURCE(d, names)


def _run(argv, *, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"{' '.join(p.args)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def _no_network_prefix() -> list[str]:
    """`unshare --net` (a namespace with no interfaces) when it works here, else nothing."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0 and _run([unshare, "--net", "true"], timeout=30).returncode == 0:
        return [unshare, "--net"]
    return []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (the build leaves nothing in the repo)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_ignore)
    # build isolation: pip takes setuptools/wheel from its cache or PyPI (pyproject's requires)
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", src]))
    (whl,) = (tmp / "dist").glob("kdeploy-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed. It sees this interpreter's site-packages for
    the dependencies (no downloads; pip still checks they satisfy the wheel's requirements)."""
    d = tmp_path_factory.mktemp("venv") / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", d]))
    _ok(_run([sys.executable, "-m", "pip", "--python", d / "bin" / "python", "install", "-q",
              "--disable-pip-version-check", wheel], cwd=d.parent))
    return d


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH to a checkout, a private cache."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "KDEPLOY_PLAYBOOKS", "VIRTUAL_ENV")}
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return e


@pytest.fixture
def work(tmp_path) -> Path:
    """A working directory outside the checkout with a copy of a sample inventory."""
    d = tmp_path / "work"
    d.mkdir()
    shutil.copy(SAMPLES / "cluster.yaml", d / "cluster.yaml")
    return d


def test_wheel_carries_templates_playbooks_and_build_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"the wheel lacks {missing}: check [tool.setuptools.package-data]"
    templates = {str(p.relative_to(REPO)) for p in (REPO / "templates").rglob("*") if p.is_file()}
    shipped = {n.removeprefix("kdeploy/") for n in names if n.startswith("kdeploy/templates/")}
    assert templates == shipped


def test_installed_package_is_the_wheel(venv, env, tmp_path):
    probe = ("import kdeploy, kdeploy.render.env as r, kdeploy.transport.ansible as a, "
             "kdeploy.artifacts.build as b; "
             "print(kdeploy.__file__, r.TEMPLATES_DIR, a.PLAYBOOKS, b.SCRIPT, sep='\\n')")
    out = _ok(_run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=env)).stdout.split()
    for path in out:  # never the checkout's (an editable install or PYTHONPATH would shadow it)
        assert Path(path).is_relative_to(venv), f"{path} is not inside the venv {venv}"
    init, templates, playbooks, script = map(Path, out)
    assert (templates / "containerd" / "config.toml.j2").is_file()
    assert (playbooks / "transport" / "run.yml").is_file()
    assert script.is_file() and script.name == "build.sh"


def test_installed_kdeploy_validates_renders_and_plans_offline(venv, env, work):
    kdeploy = [*_no_network_prefix(), venv / "bin" / "kdeploy"]
    inv = "cluster.yaml"

    p = _ok(_run([*kdeploy, "--version"], cwd=work, env=env))
    assert p.stdout.startswith("kdeploy ")

    p = _ok(_run([*kdeploy, "inventory", "validate", "-i", inv], cwd=work, env=env))
    assert "valid" in p.stdout and "3 hosts" in p.stdout

    p = _ok(_run([*kdeploy, "render", "-i", inv, "-o", "out"], cwd=work, env=env))
    assert "3 hosts" in p.stdout
    for host in ("cp1", "worker1", "worker2"):
        cfg = work / "out" / host / "etc" / "containerd" / "config.toml"
        assert cfg.is_file() and "sandbox" in cfg.read_text()
    assert (work / "out" / "cp1" / "etc" / "systemd" / "system" / "kube-apiserver.service").is_file()
    assert (work / "out" / "cp1" / "etc" / "kubernetes" / "pki" / "ca.crt").is_file()

    # offline: no connection at all; exit 2 = changes pending
    p = _run([*kdeploy, "plan", "-i", inv, "--offline", "--no-diff"], cwd=work, env=env)
    assert p.returncode == 2, p.stderr
    assert "host cp1" in p.stdout and "kube-apiserver.service" in p.stdout
    assert "Plan:" in p.stdout and "on 3 host(s)" in p.stdout

    # the ansible transport: every address is a documentation address, none is dialled
    p = _run([*kdeploy, "plan", "-i", inv, "--transport", "ansible", "--no-diff"],
             cwd=work, env=env)
    assert p.returncode == 2, p.stderr
    assert "planning against bare hosts" in p.stderr and "on 3 host(s)" in p.stdout

    p = _ok(_run([*kdeploy, "artifacts", "build", "--help"], cwd=work, env=env))
    assert "Build the offline artifact set" in p.stdout and "--k8s-version" in p.stdout


@pytest.mark.skipif(shutil.which("go") is None or shutil.which("flock") is None,
                    reason="needs go and flock on PATH")
def test_installed_build_recipe_finds_a_cached_set(venv, env, work):
    """The packaged build.sh runs from site-packages and reuses a valid cached set (building
    nothing: should its check fail, GOPROXY=off stops it at the first module download)."""
    arch = _ok(_run(["go", "env", "GOARCH"])).stdout.strip()
    env = {**env, "GOPROXY": "off", "GOMODCACHE": str(work / "gomod")}
    dest = fake_artifact_set(Path(env["XDG_CACHE_HOME"]) / "kdeploy" / "artifacts-build"
                             / f"1.37.2-{arch}")
    _ok(_run([venv / "bin" / "python", "-m", "kdeploy.artifacts.build.mkmanifest", "--write", dest,
              "--k8s-version", "1.37.2", "--arch", arch], cwd=work, env=env))
    p = _ok(_run([*_no_network_prefix(), venv / "bin" / "kdeploy", "artifacts", "build",
                  "--k8s-version", "1.37.2", "-o", "set"], cwd=work, env=env, timeout=120))
    assert f"cached and valid: {dest}" in p.stdout and "building" not in p.stdout
    assert (work / "set" / "manifest.json").is_file()


def test_installed_ansible_transport_runs_its_playbooks(venv, env, tmp_path):
    """One command through the wheel's playbooks against a throwaway sshd on 127.0.0.1."""
    from tests.unit.transport.sshd import sshd_missing_reason, start_sshd
    why = sshd_missing_reason()
    if why:
        pytest.skip(why)
    sshd = start_sshd(tmp_path / "sshd")
    try:
        code = (
            "from kdeploy.transport.ansible import AnsibleTransport, PLAYBOOKS\n"
            f"t = AnsibleTransport('node1', '127.0.0.1', port={sshd.port}, "
            f"key_file={str(sshd.client_key)!r}, known_hosts_file={str(sshd.known_hosts)!r})\n"
            "try:\n"
            "    print(PLAYBOOKS)\n"
            "    print(t.run(['echo', 'hello from the wheel']).stdout.decode())\n"
            "finally:\n"
            "    t.close()\n")
        p = _ok(_run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env, timeout=180))
    finally:
        sshd.stop()
    playbooks, out = p.stdout.splitlines()[:2]
    assert Path(playbooks).is_relative_to(venv) and out == "hello from the wheel"
