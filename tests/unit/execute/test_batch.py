"""The engine's batch hook (kdeploy.execute.batch): a transport family that applies a whole
batch of hosts per call (ansible: one ansible-runner run per step) gets exactly the work the
per-host path does, and the hosts end up the same."""
import importlib.util
import shutil
from pathlib import Path

import pytest

from kdeploy.errors import ApplyError
from kdeploy.execute import journal, run
from kdeploy.execute.batch import HostWork, host_ops, journal_known
from kdeploy.execute.engine import Engine
from kdeploy.model import load_inventory
from kdeploy.plan.desired import roles_of
from kdeploy.plan.planner import Block, apply_block, plan
from tests.conftest import SAMPLES
from tests.unit.execute.test_engine import fakes_for

APPLY_PY = Path(__file__).resolve().parents[3] / "playbooks" / "transport" / "apply.py"


def applier():
    spec = importlib.util.spec_from_file_location("kdeploy_apply_py", APPLY_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeBatch:
    """A BatchApplier over FakeTransports: what apply.py does, through each fake's calls."""

    def __init__(self, fakes, fail: dict | None = None):
        self.t = fakes
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail or {}

    def apply(self, work, *, emit, stop, step):
        self.calls.append((step, dict(work)))
        failed = {}
        for h, w in work.items():
            if (step, h) in self.fail:
                failed[h] = self.fail[(step, h)]
                continue
            t = self.t[h]
            if w.journal_add:
                cur = journal.parse(t.get(journal.PATH))
                new = {k for k in cur | w.journal_add if k in w.known}
                t.put(journal.PATH, journal.dump(new), mode=0o600)
            for o in w.ops:
                if o.kind == "binary":
                    t.put_file(o.path, o.local_path, mode=o.mode, sha256=o.sha256)
                elif o.kind == "file":
                    t.put(o.path, o.content, mode=o.mode, owner=o.owner, group=o.group)
                elif o.kind == "mode":
                    t.run(["chown", f"{o.owner}:{o.group}", o.path])
                    t.run(["chmod", format(o.mode, "o"), o.path])
                elif o.kind == "block":
                    old = (t.get(o.path) or b"").decode()
                    new = applier().apply_block(old, o.content.decode(), o.begin, o.end)
                    t.put(o.path, new.encode(), mode=0o644)
                elif o.kind == "run":
                    t.run(o.argv[2] if o.argv[:2] == ("sh", "-c") else list(o.argv),
                          check=o.check)
            if w.journal_done:
                cur = journal.parse(t.get(journal.PATH))
                t.put(journal.PATH, journal.dump({k for k in cur - w.journal_done if k in w.known}),
                      mode=0o600)
            for g in w.gates:
                t.run(g.cmd, check=True)
        return failed


@pytest.fixture
def inv(tmp_path):
    p = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", p)
    return p


def _bare(inv):
    """(cluster, deployment, bare fake hosts, the plan against them)."""
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    return cluster, dep, fakes, plan(dep.desired, run.gather(dep, fakes)[1])


def _converge(dep, fakes, batch=None):
    from kdeploy.components import gates
    facts, observed = run.gather(dep, fakes)
    p = plan(dep.desired, observed)
    Engine(dep.desired, fakes, roles=roles_of(dep.cluster), gates=gates(dep.cluster),
           batch=batch).apply(p)
    return p


def _state(fakes):
    return {h: {p: (f.data, f.mode, f.owner, f.group) for p, f in t.fs.items()
                if p != journal.PATH} for h, t in fakes.items()}


def test_batched_hosts_end_like_the_per_host_path_and_replan_is_empty(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    per_host, batched = fakes_for(cluster, dep), fakes_for(cluster, dep)
    first = _converge(dep, per_host)
    batch = FakeBatch(batched)
    assert _converge(dep, batched, batch).changes == first.changes
    assert _state(batched) == _state(per_host)
    assert {h: t.units for h, t in batched.items()} == {h: t.units for h, t in per_host.items()}
    # one call for the journal, then one per step with changes (up: one per phase)
    assert [s for s, _ in batch.calls] == ["journal", *first.phases()]
    assert _converge(dep, batched, FakeBatch(batched)).empty


def test_a_parallel_step_gates_every_host_of_the_role_after_all_changes(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    batch = FakeBatch(fakes)
    _converge(dep, fakes, batch)
    etcd = dict(batch.calls)["etcd"]
    etcd_hosts = {h.name for h in cluster.etcd}
    assert {h for h, w in etcd.items() if w.gates} == etcd_hosts
    assert all(g.phase == "etcd" for w in etcd.values() for g in w.gates)


def test_a_failed_host_fails_the_step_with_its_message_and_stops_the_run(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    h = cluster.hosts[0].name
    batch = FakeBatch(fakes, fail={("os", h): f"host {h}: command failed (exit code 1): sysctl"})
    events = []
    facts, observed = run.gather(dep, fakes)
    with pytest.raises(ApplyError) as e:
        Engine(dep.desired, fakes, roles=roles_of(cluster), batch=batch,
               emit=events.append).apply(plan(dep.desired, observed))
    assert "phase os failed on 1 host(s)" in e.value.message and "sysctl" in e.value.message
    assert [s for s, _ in batch.calls] == ["journal", "os"]          # nothing after the failure
    assert {"event": "host-failed", "phase": "os", "host": h,
            "error": f"host {h}: command failed (exit code 1): sysctl"} in events


def test_host_ops_keep_the_engines_order_and_clear_only_what_ran(inv):
    cluster, dep, fakes, p = _bare(inv)
    cp = cluster.control_plane[0].name
    changes = p.for_host_phase(cp, "control-plane")
    ops = host_ops(dep.desired[cp], changes)
    kinds = [o.kind for o in ops]
    # every write before the first command; daemon-reload before the units start
    assert max(i for i, k in enumerate(kinds) if k in ("file", "binary", "mode", "block")) < kinds.index("run")
    runs = [o.argv for o in ops if o.kind == "run"]
    assert runs.index(("systemctl", "daemon-reload")) < runs.index(("systemctl", "start", "kube-apiserver"))
    # secrets are marked (the ansible applier never shows them)
    assert any(o.secret for o in ops if o.kind == "file" and o.path.endswith(".key"))
    assert all(repr(o).count("BEGIN") == 0 for o in ops)
    keys = {o.key for o in ops if o.key}
    assert keys <= journal_known(dep.desired[cp])


def test_the_hosts_apply_block_is_the_planners():
    mod = applier()
    b = Block("/etc/hosts", "10.0.0.1 cp1\n", "os")
    from kdeploy.plan.planner import BLOCK_BEGIN, BLOCK_END, render_block
    begin, end = BLOCK_BEGIN.format(marker="kdeploy"), BLOCK_END.format(marker="kdeploy")
    for old in ("", "127.0.0.1 localhost", "127.0.0.1 localhost\n",
                f"a\n{begin}\nold\n{end}\nb\n", f"a\n{begin}\nno end\n"):
        assert mod.apply_block(old, render_block(b), begin, end) == apply_block(old, b)


def test_host_work_carries_the_journal_of_the_runs(inv):
    cluster, dep, fakes, p = _bare(inv)
    from kdeploy.execute.batch import host_work
    h = cluster.hosts[0].name
    changes = p.for_host_phase(h, "os")
    w = host_work(h, dep.desired[h], changes)
    assert isinstance(w, HostWork)
    assert w.journal_done == {c.key() for c in changes if c.kind in ("run", "unit-restart")}


def test_rolling_step_with_hooks_runs_them_around_each_batch_and_gates_each_host(inv):
    from kdeploy.execute.steps import Hook, Policy, Step
    cluster, dep, fakes, p = _bare(inv)
    seen = []
    workers = tuple(h.name for h in cluster.workers)
    step = Step("nodes", ("runtime", "images", "node"), Policy("batch", size=1), hosts=workers,
                before=(Hook("drain", lambda ctx, h: seen.append(("drain", h))),),
                after=(Hook("uncordon", lambda ctx, h: seen.append(("uncordon", h))),))
    batch = FakeBatch(fakes)
    from kdeploy.components import gates
    Engine(dep.desired, fakes, roles=roles_of(cluster), gates=gates(cluster), batch=batch).apply(p, (step,))
    calls = [(s, sorted(w)) for s, w in batch.calls if s != "journal"]
    assert calls == [("nodes", [h]) for h in workers]               # one run per batch of one
    assert seen == [x for h in workers for x in (("drain", h), ("uncordon", h))]
    for _, w in batch.calls[1:]:
        (hw,) = w.values()
        assert {g.phase for g in hw.gates} <= {"runtime", "images", "node"} and hw.gates


def test_a_joining_worker_alone_is_asked_whether_its_containerd_answers(inv):
    """A per-host gate (containerd answering) of a parallel step: the batch asks it of the
    hosts the step changed only, as the per-host path does; etcd's gate stays cluster-wide."""
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    _converge(dep, fakes, FakeBatch(fakes))
    inv.write_text(inv.read_text() + "  - name: worker3\n    address: 192.0.2.23\n    roles: [worker]\n")
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = {**fakes, "worker3": fakes_for(cluster, dep)["worker3"]}
    batch = FakeBatch(fakes)
    _converge(dep, fakes, batch)
    runtime = dict(batch.calls)["runtime"]
    assert {h for h, w in runtime.items() if w.gates} == {"worker3"}
