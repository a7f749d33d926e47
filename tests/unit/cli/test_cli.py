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
    # a plan writes nothing beside the inventory (the PKI it shows lives in a scratch copy)
    assert not (sample.parent / ".kdeploy").exists()


def test_plan_with_only_documentation_addresses_dials_nothing(sample):
    p = kdeploy("plan", "-i", str(sample), "--no-diff")
    assert p.returncode == 2 and "planning against bare hosts" in p.stderr


def test_up_against_documentation_addresses_is_refused(sample):
    p = kdeploy("up", "-i", str(sample))
    assert p.returncode == 6 and "documentation address" in p.stderr and "Traceback" not in p.stderr


def test_plan_and_verify_write_no_local_state(sample):
    """plan (and verify) compute what `up` would issue in a scratch copy: the state dir beside
    the inventory is neither created nor changed."""
    state = sample.parent / ".kdeploy"
    assert kdeploy("plan", "--offline", "-i", str(sample)).returncode == 2
    assert not state.exists()
    assert kdeploy("certs", "-i", str(sample)).returncode == 0
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    assert kdeploy("plan", "--offline", "-i", str(sample)).returncode == 2
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
    assert kdeploy("verify", "-i", str(sample)).returncode != 0   # documentation addresses
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before


def test_upgrade_refuses_a_target_the_inventory_does_not_name(sample):
    p = kdeploy("upgrade", "-i", str(sample), "--to", "1.36.3")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "does not match the inventory's spec.kubernetes.version 1.37.2" in p.stderr
    p = kdeploy("upgrade", "-i", str(sample), "--to", "1.37.2", "--batch", "0")
    assert p.returncode != 0 and "not a count or a percentage" in p.stderr


def test_node_remove_refuses_unknown_hosts_and_the_last_control_plane_before_connecting(sample):
    import yaml
    hosts = yaml.safe_load(sample.read_text())["hosts"]
    cp = [h["name"] for h in hosts if "control-plane" in h["roles"]]
    p = kdeploy("node", "remove", "-i", str(sample), "nosuch", "--yes")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "not in the inventory: nosuch" in p.stderr
    p = kdeploy("node", "remove", "-i", str(sample), *cp, "--yes")
    assert p.returncode != 0 and "without any control-plane host" in p.stderr
    assert "kdeploy reset" in p.stderr
    # documentation addresses: never dialled, named as unreachable (the removed one needs --force)
    worker = next(h["name"] for h in hosts if h["name"] not in cp)
    p = kdeploy("node", "remove", "-i", str(sample), worker, "--yes")
    assert p.returncode != 0 and "documentation address" in p.stderr and "Traceback" not in p.stderr
