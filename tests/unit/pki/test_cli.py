"""kdeploy certs / certs check."""
from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from kdeploy.cli import app
from kdeploy.pki import PKIError

from .conftest import HOSTS, write_inventory

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["certs", *args])


def test_issue_then_up_to_date_then_check(tmp_path):
    inv = write_inventory(tmp_path, hosts=HOSTS[:1] + HOSTS[3:4])
    r = run("-i", str(inv))
    assert r.exit_code == 0, r.output
    assert "issued" in r.output and "apiserver" in r.output
    r = run("-i", str(inv))
    assert r.exit_code == 0 and "all certificates up to date" in r.output
    r = run("generate", "-i", str(inv))
    assert r.exit_code == 0 and "all certificates up to date" in r.output
    r = run("check", "--offline", "-i", str(inv))
    assert r.exit_code == 0, r.output
    assert "kubelet-serving" in r.output
    r = run("check", "--offline", "-i", str(inv), "--json")
    doc = json.loads(r.output)
    assert r.exit_code == 0 and doc["ok"] and {c["status"] for c in doc["certificates"]} == {"ok"}
    assert "PRIVATE KEY" not in r.output and "LS0tLS1CRUdJTi" not in r.output


def test_check_fails_when_missing(tmp_path):
    inv = write_inventory(tmp_path, hosts=HOSTS[:1])
    r = run("check", "--offline", "-i", str(inv))
    assert isinstance(r.exception, PKIError) and "kdeploy certs -i" in r.exception.hint
    assert not (tmp_path / ".kdeploy").exists()
    run("-i", str(inv))
    (tmp_path / ".kdeploy/demo/pki/apiserver.crt").unlink()
    r = run("check", "--offline", "-i", str(inv), "--json")
    assert isinstance(r.exception, PKIError)
    doc = json.loads(r.stdout)
    assert [c["name"] for c in doc["certificates"] if c["status"] != "ok"] == ["apiserver"]


def test_check_exit_code_through_main(tmp_path):
    inv = write_inventory(tmp_path, hosts=HOSTS[:1])
    r = subprocess.run([sys.executable, "-m", "kdeploy", "certs", "check", "--offline", "-i", str(inv)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "error:" in r.stderr and "hint:" in r.stderr
