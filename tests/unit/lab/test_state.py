import json
from pathlib import Path

import pytest

from kdeploy.errors import LabError
from kdeploy.lab import api
from kdeploy.lab.state import LabState

from .fakes import FakeBackend, FakeOps


@pytest.fixture
def env(tmp_path, monkeypatch):
    root = tmp_path / "state"
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    monkeypatch.setattr(api, "ensure_rootfs", lambda log=None: (rootfs, None))
    ops = FakeOps(tmp_path, state_file=root / "lab" / "state.json")
    be = FakeBackend(ops=ops, poll=0.001)
    return root, ops, be, tmp_path


def _up(env, **kw):
    root, ops, be, tmp = env
    return api.up(name="lab", output=tmp / "inv.yaml", backend=be, root=root, log=lambda s: None, **kw)


def _nothing_left(ops, root, tmp):
    assert ops.alive_pids() == []
    assert ops.netns == set() and ops.mounts == set()
    assert not list((tmp / "cgroup").rglob("kdeploy-lab"))
    assert not (root / "lab").exists()


def test_up_records_everything_and_writes_inventory(env):
    root, ops, be, tmp = env
    r = _up(env, masters=1, workers=2)
    assert (tmp / "inv.yaml").is_file()
    st = json.loads((root / "lab" / "state.json").read_text())
    kinds = [x["kind"] for x in st["resources"]]
    assert kinds.count("process") == 3 and kinds.count("mount") == 3 and kinds.count("netns") == 1
    assert st["phase"] == "up"
    kh = Path(r["known_hosts"]).read_text().splitlines()
    assert [ln.split()[0] for ln in kh] == ["m1,192.168.57.11", "m2,192.168.57.12", "m3,192.168.57.13"]
    # the host key in known_hosts is the one written into the machine
    m1 = root / "lab/machines/m1/rootfs"
    assert (m1 / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1] == kh[0].split()[2]
    assert (m1 / "root/.ssh/authorized_keys").read_text().strip() == \
        Path(r["key_file"] + ".pub").read_text().strip()
    assert "Address=192.168.57.11/24" in (m1 / "etc/systemd/network/10-lab.network").read_text()
    assert (m1 / "etc/hostname").read_text() == "m1\n"


def test_second_up_is_a_clear_error(env):
    root, ops, be, tmp = env
    _up(env)
    with pytest.raises(LabError) as e:
        _up(env)
    assert "is up" in e.value.message and "lab down" in e.value.hint
    assert len(ops.spawned) == 3  # nothing more started


def test_up_while_another_command_holds_the_lock(env):
    root, ops, be, tmp = env
    other = LabState("lab", root)
    other.acquire("up")
    try:
        with pytest.raises(LabError) as e:
            _up(env)
        assert "another kdeploy command" in e.value.message
    finally:
        other.release()


def test_down_removes_everything(env):
    root, ops, be, tmp = env
    _up(env, masters=3, workers=0)
    api.down(name="lab", root=root, backend=be, log=lambda s: None)
    _nothing_left(ops, root, tmp)
    with pytest.raises(LabError):
        api.down(name="lab", root=root, backend=be, log=lambda s: None)


def test_down_after_crashed_up(env):
    """`lab up` died (kill -9) after starting 2 of 3 machines: down removes all of it."""
    root, ops, be, tmp = env
    ops.fail_spawn_at = 2

    # simulate a crash: no cleanup in up (as after SIGKILL)
    def crash_down(*a, **k):
        raise RuntimeError("process died")
    orig = be.down
    be.down = crash_down
    with pytest.raises(KeyboardInterrupt):
        _up(env)
    be.down = orig
    assert len(ops.alive_pids()) == 4 and ops.netns
    st = LabState("lab", root)
    assert st.load().phase == "creating"
    with pytest.raises(LabError) as e:
        _up(env)
    assert "leftovers" in e.value.message
    api.down(name="lab", root=root, backend=be, log=lambda s: None)
    _nothing_left(ops, root, tmp)


def test_interrupted_up_cleans_up(env):
    root, ops, be, tmp = env
    ops.fail_spawn_at = 1
    with pytest.raises(KeyboardInterrupt):
        _up(env)
    _nothing_left(ops, root, tmp)
    assert not (tmp / "inv.yaml").exists()


def test_down_sigkills_a_machine_that_ignores_poweroff(env):
    root, ops, be, tmp = env
    _up(env, masters=1, workers=0)
    nspawn = int((root / "lab/machines/m1/nspawn.pid").read_text())
    ops.ignore_term.add(nspawn)
    api.down(name="lab", root=root, backend=be, log=lambda s: None, timeout=0.05)
    assert (nspawn, 9) in ops.killed
    _nothing_left(ops, root, tmp)


def test_status(env):
    root, ops, be, tmp = env
    _up(env)
    [lab] = api.status(name="lab", root=root, backend=be)
    assert [(m["name"], m["state"], m["ssh"]) for m in lab["machines"]] == \
        [("m1", "running", True), ("m2", "running", True), ("m3", "running", True)]
    assert lab["netns"] == "kdeploy-lab"


def test_bad_name():
    with pytest.raises(LabError):
        LabState("Bad_Name")


def test_down_of_one_lab_leaves_another_lab_running(tmp_path, monkeypatch):
    """The first lab creates the shared top cgroup dir; its `down` must not kill what other labs
    started below it (it did: a recursive walk of the shared dir)."""
    root = tmp_path / "state"
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    monkeypatch.setattr(api, "ensure_rootfs", lambda log=None: (rootfs, None))
    ops = FakeOps(tmp_path)
    be = FakeBackend(ops=ops, poll=0.001)
    api.up(name="first", output=tmp_path / "a.yaml", backend=be, root=root, log=lambda s: None,
           masters=1, workers=0)
    before = set(ops.alive_pids())
    api.up(name="second", output=tmp_path / "b.yaml", backend=be, root=root, log=lambda s: None,
           masters=1, workers=0)
    second = set(ops.alive_pids()) - before
    assert second
    api.down(name="first", root=root, backend=be, log=lambda s: None)
    assert set(ops.alive_pids()) == second
