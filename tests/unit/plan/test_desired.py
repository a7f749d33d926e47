"""The whole pipeline on the sample inventories, without hosts: render -> plan -> outcome."""
import shutil

import pytest

from kdeploy.model import load_inventory
from kdeploy.pki import ensure_pki
from kdeploy.plan.desired import desired_state
from kdeploy.plan.planner import outcome, plan
from tests.conftest import SAMPLES


@pytest.mark.parametrize("sample", ["single-node.yaml", "cluster.yaml", "ha.yaml"])
def test_plan_against_its_own_outcome_is_empty_and_rendering_is_stable(tmp_path, sample):
    inv = tmp_path / sample
    shutil.copy(SAMPLES / sample, inv)
    cluster, _ = load_inventory(inv)
    pki = ensure_pki(cluster)
    first = desired_state(cluster, pki=pki)
    again = desired_state(cluster, pki=ensure_pki(cluster))
    assert {h: r.files for h, r in first.items()} == {h: r.files for h, r in again.items()}
    bare = plan(first, {})
    assert not bare.empty and set(bare.hosts()) == {h.name for h in cluster.hosts}
    assert plan(first, outcome(first)).empty


def test_addons_only_on_the_first_control_plane_host(tmp_path):
    inv = tmp_path / "ha.yaml"
    shutil.copy(SAMPLES / "ha.yaml", inv)
    cluster, _ = load_inventory(inv)
    desired = desired_state(cluster, pki=ensure_pki(cluster))
    with_addons = [h for h, r in desired.items() if any(f.phase == "addons" for f in r.files)]
    assert with_addons == ["cp1"]
    addons = {f.path: f.run_on_change for f in desired["cp1"].files if f.phase == "addons"}
    assert all(run[0][-3:-1] == ("apply", "-f") for p, run in addons.items() if p.endswith(".yaml"))
    labels = next(f for f in desired["cp1"].files if f.path.endswith("node-labels.sh")).content.decode()
    assert "label node cp2 --overwrite node-role.kubernetes.io/control-plane=" in labels
    assert "label node worker3 --overwrite node-role.kubernetes.io/worker=" in labels
