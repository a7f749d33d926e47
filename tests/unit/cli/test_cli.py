"""The command line as a user meets it: exit codes, errors without tracebacks, offline plan."""
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, SAMPLES


def kdeploy(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "kdeploy", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def sample(tmp_path):
    p = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", p)
    return p


def test_version_and_help():
    p = kdeploy("--version")
    assert p.returncode == 0 and p.stdout.startswith("kdeploy ")
    p = kdeploy("--help")
    for verb in ("inventory", "certs", "render", "plan", "up", "verify", "artifacts", "lab"):
        assert verb in p.stdout


@pytest.mark.parametrize("args", [("plan", "--bogus"), ("plan",), ("inventory", "validate")])
def test_usage_errors_exit_64_without_traceback(args):
    p = kdeploy(*args)
    assert p.returncode == 64 and "Traceback" not in p.stderr and "Usage:" in p.stderr


def test_invalid_inventory_exit_3_names_file_line_field(sample):
    sample.write_text(sample.read_text().replace("  kubeProxy:\n", "  kubeProxi:\n"))
    p = kdeploy("inventory", "validate", "-i", str(sample))
    assert p.returncode == 3 and "Traceback" not in p.stderr
    assert f"{sample}:" in p.stderr and "spec.kubeProxi" in p.stderr and "hint:" in p.stderr


def test_offline_plan_exits_2_and_json_round_trips(sample):
    p = kdeploy("plan", "-i", str(sample), "--offline", "--json")
    assert p.returncode == 2, p.stderr
    plan = json.loads(p.stdout)
    assert not plan["empty"] and {c["host"] for c in plan["changes"]} == {"cp1", "worker1", "worker2"}
    assert all(c["diff"] is None for c in plan["changes"] if c["secret"])
    # the PKI was created beside the inventory, private
    state = sample.parent / ".kdeploy" / "demo"
    assert state.stat().st_mode & 0o077 == 0


def test_plan_with_only_documentation_addresses_dials_nothing(sample):
    p = kdeploy("plan", "-i", str(sample), "--no-diff")
    assert p.returncode == 2 and "planning against bare hosts" in p.stderr


def test_up_against_documentation_addresses_is_refused(sample):
    p = kdeploy("up", "-i", str(sample))
    assert p.returncode == 6 and "documentation address" in p.stderr and "Traceback" not in p.stderr
