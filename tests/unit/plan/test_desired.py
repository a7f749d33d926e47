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
    assert "node-role.kubernetes.io/worker=" in labels and "label node --overwrite" in labels


STUB_KUBECTL = r"""#!/usr/bin/env python3
# a kubectl for the node-labels script: nodes registered in $STATE/nodes (name label,label...),
# every call appended to $STATE/calls; calls run side by side: one at a time on the state
import fcntl, os, sys
state = os.environ["STATE"]
lock = open(f"{state}/lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)
args = [a for a in sys.argv[1:] if not a.startswith(("--kubeconfig", "--server"))]
with open(f"{state}/calls", "a") as f:
    f.write(" ".join(args) + "\n")
nodes = {}
for ln in open(f"{state}/nodes").read().split("\n"):
    if ln.strip():
        name, _, labels = ln.partition(" ")
        nodes[name] = set(labels.split(",")) - {""}
if args[:2] == ["get", "nodes"]:
    sel = set(args[args.index("-l") + 1].split(",")) if "-l" in args else set()
    print(" ".join(n for n, ls in nodes.items() if sel <= ls))
elif args[:3] == ["label", "node", "--overwrite"]:
    names = [a for a in args[3:] if "=" not in a]
    for n in names:
        nodes[n] |= {a for a in args[3:] if "=" in a}
    open(f"{state}/nodes", "w").write("".join(f"{n} {','.join(sorted(ls))}\n" for n, ls in nodes.items()))
"""


def test_node_labels_waits_for_every_node_then_labels_only_those_missing_them(tmp_path):
    """The script itself (sh, a stub kubectl): it waits until every node has registered, then
    labels only nodes without their labels, at most 5 per kubectl call (kubectl throttles
    itself after 10 requests); a second run labels nothing."""
    import os
    import subprocess
    import time

    import yaml
    inv = tmp_path / "big.yaml"
    doc = yaml.safe_load((SAMPLES / "ha.yaml").read_text())
    doc["hosts"] += [{"name": f"w{i}", "address": f"198.51.100.{100 + i}", "roles": ["worker"]}
                     for i in range(20)]
    inv.write_text(yaml.safe_dump(doc))
    cluster, _ = load_inventory(inv)
    desired = desired_state(cluster, pki=ensure_pki(cluster))
    script = next(f for f in desired["cp1"].files if f.path.endswith("node-labels.sh")).content.decode()
    stub = tmp_path / "kubectl"
    stub.write_text(STUB_KUBECTL)
    stub.chmod(0o755)
    assert 'K="/usr/local/bin/kubectl' in script
    (tmp_path / "s.sh").write_text(script.replace('K="/usr/local/bin/kubectl', f'K="{stub}', 1))
    (tmp_path / "calls").write_text("")
    workers = [h.name for h in cluster.workers]
    # every node registered but the last worker; three workers labelled already
    (tmp_path / "nodes").write_text("".join(
        f"{h.name} {'node-role.kubernetes.io/worker=' if h.name in workers[:3] else ''}\n"
        for h in cluster.hosts if h.name != workers[-1]))
    env = {**os.environ, "STATE": str(tmp_path)}
    proc = subprocess.Popen(["sh", str(tmp_path / "s.sh")], env=env)
    time.sleep(1.5)
    assert proc.poll() is None, "it went on before every node had registered"
    assert not any(c.startswith("label") for c in (tmp_path / "calls").read_text().splitlines())
    with open(tmp_path / "nodes", "a") as f:
        f.write(f"{workers[-1]} \n")
    assert proc.wait(timeout=30) == 0
    labels = [c.split()[3:] for c in (tmp_path / "calls").read_text().splitlines() if c.startswith("label")]
    labelled = [n for c in labels for n in c if "=" not in n]
    assert sorted(labelled) == sorted([h.name for h in cluster.control_plane] + workers[3:])
    assert all(len([n for n in c if "=" not in n]) <= 5 for c in labels)
    nodes = dict(ln.split(" ", 1) for ln in (tmp_path / "nodes").read_text().splitlines())
    assert all("node-role.kubernetes.io/worker=" in nodes[w] for w in workers)
    assert all("node-role.kubernetes.io/control-plane=" in nodes[h.name] for h in cluster.control_plane)
    (tmp_path / "calls").write_text("")
    assert subprocess.run(["sh", str(tmp_path / "s.sh")], env=env).returncode == 0
    assert not any(c.startswith("label") for c in (tmp_path / "calls").read_text().splitlines())
