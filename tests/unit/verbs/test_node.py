"""node remove without hosts: what may be removed, the order of the steps, the removal record."""
import json

import pytest

from kdeploy.errors import InventoryError, KdeployError
from kdeploy.execute.removed import REMOVED, refuse_removed, removed_hosts
from kdeploy.verbs.node import Removal, RemoveOutcome, check_removal, forget, remove_steps
from tests.unit.render.conftest import load_sample


def test_the_staying_cluster_and_what_is_refused():
    c = load_sample("ha")
    cps = [h.name for h in c.control_plane]
    stay = check_removal(c, [cps[1]])
    assert [h.name for h in stay.hosts] == [h.name for h in c.hosts if h.name != cps[1]]
    with pytest.raises(InventoryError, match="not in the inventory: ghost"):
        check_removal(c, ["ghost"])
    with pytest.raises(KdeployError, match="without any control-plane host"):
        check_removal(c, cps)
    with pytest.raises(KdeployError, match="at least one host"):
        check_removal(c, [])


def test_steps_drain_first_then_converge_then_leave_etcd_reset_and_delete():
    c = load_sample("ha")
    victim = c.control_plane[1].name
    stay = check_removal(c, [victim])
    r = Removal(c, {}, stay, 300, RemoveOutcome())
    steps = remove_steps(c, stay, [victim], r, converge=())
    assert [s.name for s in steps] == ["drain", "etcd-remove", "reset", "delete-node"]
    assert all(s.always and s.hosts == (victim,) for s in steps)
    worker = c.workers[-1].name
    steps = remove_steps(c, check_removal(c, [worker]), [worker], r, converge=())
    assert next(s for s in steps if s.name == "etcd-remove").hosts == ()


def test_a_removed_host_is_refused_until_the_inventory_drops_it(tmp_path):
    c = load_sample("cluster")
    gone = c.workers[-1]
    (tmp_path / "pki" / "nodes" / gone.name).mkdir(parents=True)
    forget(tmp_path, [gone.name], c)
    assert not (tmp_path / "pki" / "nodes" / gone.name).exists()
    rec = removed_hosts(tmp_path)
    assert rec[gone.name]["address"] == gone.address and (tmp_path / REMOVED).stat().st_mode & 0o777 == 0o600
    with pytest.raises(InventoryError, match=f"{gone.name}: removed by `kdeploy node remove`"):
        refuse_removed(c, tmp_path, forget_absent=True)
    stay = check_removal(c, [gone.name])
    refuse_removed(stay, tmp_path)                       # plan/verify: refuse only, forget nothing
    assert removed_hosts(tmp_path)
    refuse_removed(stay, tmp_path, forget_absent=True)   # up without it: forgotten
    assert removed_hosts(tmp_path) == {}
    refuse_removed(c, tmp_path)                          # the name may come back as a new node
    (tmp_path / REMOVED).write_text(json.dumps(["garbage"]))
    assert removed_hosts(tmp_path) == {}
