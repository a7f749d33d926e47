"""`kdeploy reset` on the command line: confirmation, host selection, errors without tracebacks.
The sample inventory's documentation addresses are never dialled."""
import json
import shutil

import pytest

from tests.conftest import SAMPLES
from tests.unit.cli.test_cli import kdeploy


@pytest.fixture
def sample(tmp_path):
    p = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", p)
    return p


def test_reset_is_a_verb():
    p = kdeploy("reset", "--help")
    assert p.returncode == 0 and "--yes" in p.stdout and "--host" in p.stdout


def test_reset_without_a_terminal_needs_yes(sample):
    p = kdeploy("reset", "-i", str(sample))           # stdin/stdout are pipes here
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "needs confirmation" in p.stderr and "--yes" in p.stderr
    assert not (sample.parent / ".kdeploy").exists()  # nothing was done


def test_reset_with_an_unknown_host_names_it(sample):
    p = kdeploy("reset", "-i", str(sample), "--host", "worker1", "--host", "nope", "--yes")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "unknown host(s): nope" in p.stderr and "worker1" in p.stderr


def test_unreachable_hosts_are_reported_and_the_exit_is_non_zero(sample):
    p = kdeploy("reset", "-i", str(sample), "--host", "worker2", "--yes", "--json")
    assert p.returncode == 10 and "Traceback" not in p.stderr
    events = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    failed = [e for e in events if e["event"] == "reset-failed"]
    assert [e["host"] for e in failed] == ["worker2"] and "documentation address" in failed[0]["error"]
    assert events[-1]["event"] == "done" and events[-1]["failed"] == ["worker2"]
    assert "reset failed on 1 host(s): worker2" in p.stderr
