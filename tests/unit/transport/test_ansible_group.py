"""AnsibleGroup: many hosts in ONE ansible-runner run (facts, host locks, the engine's batch
hook), against a throwaway sshd on 127.0.0.1 (two inventory hosts on it), and apply.py, the
applier the batch runs on each host."""
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from kdeploy.execute.batch import HostWork, Op
from kdeploy.execute.steps import Gate
from kdeploy.transport.ansible import AnsibleGroup, AnsibleTransport, apply_vars
from kdeploy.transport.pool import group_of, run_many

from .sshd import start_sshd
from .test_ansible import REAL_REASON, _files_under, real

from tests.unit.execute.test_batch import APPLY_PY, applier  # noqa: E402,F401 (apply.py as a module)


# --- pure ------------------------------------------------------------------------------------

def test_apply_vars_keep_contents_out_of_host_vars(tmp_path):
    art = tmp_path / "kubelet"
    art.write_bytes(b"ELF")
    w = HostWork("n1", [Op("file", "/etc/k/ca.key", content=b"PRIVATE KEY", mode=0o600, secret=True),
                        Op("binary", "/usr/local/bin/kubelet", local_path=str(art),
                           sha256=hashlib.sha256(b"ELF").hexdigest(), mode=0o755),
                        Op("run", argv=("systemctl", "restart", "kubelet"), key="unit-restart:kubelet")],
                 gates=[Gate("node", "node", "true", 5, "ok")])
    hv, files, members = apply_vars(w, APPLY_PY.read_text())
    assert "PRIVATE KEY" not in json.dumps(hv) and "ca.key" not in json.dumps(hv)
    assert set(files) == {"kd_ops", "kd_gates"} and members == [("0", str(art.resolve()))]
    assert hv["kd_tar_dest"].startswith("/var/lib/kdeploy/.upload-")
    assert b"PRIVATE KEY" not in files["kd_ops"]            # base64 in the script, never plain
    assert b"PRIVATE KEY" not in files["kd_gates"]


def test_group_of_only_for_ansible_transports():
    from kdeploy.transport.fake import FakeTransport
    a, b = AnsibleTransport("a", "127.0.0.1"), AnsibleTransport("b", "127.0.0.1")
    assert isinstance(group_of({"a": a, "b": b}), AnsibleGroup)
    assert group_of({"a": a, "f": FakeTransport("f")}) is None
    assert group_of({"f": FakeTransport("f")}) is None


def test_applier_ops_write_atomically_keep_order_and_clear_the_journal(tmp_path):
    mod = applier()
    j = tmp_path / "pending.json"
    marker = tmp_path / "order"
    bundle = {"mode": "ops", "ops": [
        {"kind": "file", "path": str(tmp_path / "d" / "a.conf"), "content": "aGVsbG8K",
         "mode": 0o640, "owner": "root", "group": "root"},
        {"kind": "run", "argv": ["sh", "-c", f"cat {tmp_path}/d/a.conf >> {marker}"], "timeout": 10,
         "check": True, "key": "run:x"}],
        "journal": {"path": str(j), "add": [], "done": ["run:x"], "known": ["run:x", "run:y"]}}
    j.write_text(json.dumps(["run:x", "run:y", "run:stale"]))
    assert mod.do_ops(bundle) == 2
    st = os.stat(tmp_path / "d" / "a.conf")
    assert stat.S_IMODE(st.st_mode) == 0o640 and marker.read_text() == "hello\n"
    assert json.loads(j.read_text()) == ["run:y"]            # done removed, stale dropped
    assert not list((tmp_path / "d").glob(".*kdeploy-tmp"))


def test_applier_failed_command_keeps_the_journal_and_says_why(tmp_path, capsys):
    mod = applier()
    j = tmp_path / "pending.json"
    j.write_text(json.dumps(["run:x"]))
    bundle = {"mode": "ops", "ops": [{"kind": "run", "argv": ["sh", "-c", "echo boom >&2; exit 4"],
                                      "timeout": 10, "check": True, "key": "run:x"}],
              "journal": {"path": str(j), "add": [], "done": ["run:x"], "known": ["run:x"]}}
    assert mod.main(bundle) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "exit code 4" in out["error"] and "boom" in out["error"]
    assert json.loads(j.read_text()) == ["run:x"]            # the next run does it again


def test_applier_gate_gives_up_with_its_name_and_last_line(capsys):
    mod = applier()
    assert mod.main({"mode": "gates", "gates": [
        {"cmd": "echo not yet >&2; false", "timeout": 1, "what": "etcd endpoint health"}]}) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert err == "etcd endpoint health did not pass within 1 s: not yet"


# --- real runs: two inventory hosts on one sshd ---------------------------------------------

@pytest.fixture(scope="module")
def group(tmp_path_factory):
    if REAL_REASON:
        pytest.skip(REAL_REASON)
    s = start_sshd(tmp_path_factory.mktemp("ansible-group-sshd"))
    ts = {n: AnsibleTransport(n, "127.0.0.1", port=s.port, known_hosts_file=s.known_hosts,
                              key_file=s.client_key) for n in ("n1", "n2")}
    yield AnsibleGroup(ts)
    for t in ts.values():
        t.close()
    s.stop()


@real
def test_run_many_one_run_for_every_host(group):
    res = run_many(group.t, {"n1": ["sh", "-c", "echo one"], "n2": "echo two >&2; exit 3"})
    assert (res["n1"].rc, res["n1"].out) == (0, "one")
    assert (res["n2"].rc, res["n2"].err) == (3, "two")


@real
def test_apply_places_files_binaries_blocks_runs_and_gates_in_one_run(group, tmp_path):
    art = tmp_path / "art"
    art.write_bytes(os.urandom(100_000))
    sha = hashlib.sha256(art.read_bytes()).hexdigest()
    out = tmp_path / "host"
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    events = []
    work = {}
    for h in ("n1", "n2"):
        work[h] = HostWork(h, [
            Op("binary", str(out / h / "bin" / "tool"), local_path=str(art), sha256=sha, mode=0o750),
            Op("file", str(out / h / "secret.key"), content=b"KEY {{ x }}", mode=0o600, secret=True),
            Op("block", str(hosts), content=b"# BEGIN k\n10.0.0.1 cp1\n# END k\n", begin="# BEGIN k", end="# END k"),
            Op("run", argv=("sh", "-c", f"test -x {out / h / 'bin' / 'tool'} && touch {out / h / 'ran'}"))],
            gates=[Gate("x", "node", f"test -f {out / h / 'ran'}", 10, "ran")])
    failed = group.apply(work, emit=events.append, step="node")
    assert failed == {}
    for h in ("n1", "n2"):
        assert (out / h / "bin" / "tool").read_bytes() == art.read_bytes()
        assert stat.S_IMODE((out / h / "bin" / "tool").stat().st_mode) == 0o750
        assert (out / h / "secret.key").read_bytes() == b"KEY {{ x }}"     # never templated
        assert stat.S_IMODE((out / h / "secret.key").stat().st_mode) == 0o600
        assert (out / h / "ran").exists()
    assert hosts.read_text() == "127.0.0.1 localhost\n# BEGIN k\n10.0.0.1 cp1\n# END k\n"
    assert {e["host"] for e in events if e["event"] == "gate"} == {"n1", "n2"}
    assert not list(Path("/var/lib/kdeploy").glob(".upload-*"))           # uploads removed
    root = group._root
    assert root is not None and not any(b"KEY" in v for v in _files_under(root).values())


@real
def test_apply_failures_are_per_host_messages(group, tmp_path):
    work = {"n1": HostWork("n1", [Op("run", argv=("sh", "-c", "echo nope >&2; exit 2"))]),
            "n2": HostWork("n2", [Op("binary", str(tmp_path / "b"), local_path=__file__,
                                     sha256="0" * 64, mode=0o755)])}
    failed = group.apply(work, step="os")
    assert set(failed) == {"n1", "n2"}
    assert failed["n1"].startswith("host n1 (127.0.0.1:") and "exit code 2" in failed["n1"]
    assert "nope" in failed["n1"]
    assert "sha256 mismatch" in failed["n2"] and not (tmp_path / "b").exists()
