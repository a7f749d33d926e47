"""etcd backup/restore on the deployer: snapshot checks before any connection, pruning, the
restore journal."""
import hashlib
import json

import pytest

from kdeploy.errors import KdeployError, PreflightError
from kdeploy.verbs.etcd import check_snapshot, prune, restore
from tests.unit.render.conftest import load_sample


def snap(tmp_path, data=b"etcd snapshot bytes", name="etcd-demo-20260101T000000Z.db"):
    p = tmp_path / name
    p.write_bytes(data)
    (tmp_path / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return p


def test_snapshot_is_checked_against_its_sha256(tmp_path):
    p = snap(tmp_path)
    assert check_snapshot(p) == hashlib.sha256(b"etcd snapshot bytes").hexdigest()
    p.write_bytes(b"etcd snap")                                   # truncated
    with pytest.raises(KdeployError, match="corrupted or truncated; nothing was changed"):
        check_snapshot(p)
    (tmp_path / f"{p.name}.sha256").unlink()
    with pytest.raises(KdeployError, match="no .*sha256 beside it"):
        check_snapshot(p)
    with pytest.raises(KdeployError, match="no such snapshot"):
        check_snapshot(tmp_path / "missing.db")


def test_prune_keeps_the_newest_of_this_cluster_only(tmp_path):
    for i in range(5):
        snap(tmp_path, name=f"etcd-demo-2026010{i}T000000Z.db")
    other = snap(tmp_path, name="etcd-other-20250101T000000Z.db")
    gone = prune(tmp_path, "demo", 2)
    assert gone == [f"etcd-demo-2026010{i}T000000Z.db" for i in range(3)]
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "etcd-demo-20260103T000000Z.db", "etcd-demo-20260104T000000Z.db", other.name]
    assert not list(tmp_path.glob("etcd-demo-20260100*"))        # .sha256 went with it


def test_an_unfinished_restore_of_another_snapshot_is_refused_before_any_change(tmp_path):
    c = load_sample("single-node")
    p = snap(tmp_path)
    (tmp_path / "restore.json").write_text(json.dumps({"file": "/x/other.db", "sha256": "0" * 64,
                                                       "stamp": "s", "token": "t"}))

    class Unused:
        def __getattr__(self, name):
            raise AssertionError("no host may be touched")
    hosts = {h.name: Unused() for h in c.hosts}
    with pytest.raises(PreflightError, match="interrupted restore of another snapshot"):
        restore(c, hosts, tmp_path, p)
    with pytest.raises(PreflightError, match="needs every etcd and control-plane host"):
        restore(c, {}, tmp_path, p)
