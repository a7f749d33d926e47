"""The engine and the run orchestration against in-memory hosts (the lab tests do it for real)."""
import shutil
from dataclasses import replace

import pytest

from kdeploy.errors import KdeployError, PreflightError
from kdeploy.execute import journal, run
from kdeploy.execute.session import connect
from kdeploy.model import load_inventory
from kdeploy.plan.planner import plan
from kdeploy.transport.base import CommandResult
from kdeploy.transport.fake import FakeTransport
from kdeploy.transport.pool import UnreachableHosts
from tests.conftest import SAMPLES


@pytest.fixture
def inv(tmp_path):
    p = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", p)
    return p


def fakes_for(cluster, dep, **kw):
    out = {}
    for h in cluster.hosts:
        res = dep.desired[h.name]
        names = {u.name for u in res.units} | {r for f in res.files for r in f.restarts}
        units = {n: {"active": "inactive", "enabled": "disabled"} for n in names}
        out[h.name] = FakeTransport(h.name, units=units, address=h.address, **kw.get(h.name, {}))
    return out


def converged(inv):
    """(deployment, fake hosts) of the inventory, converged once."""
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    converge(dep, fakes)
    return dep, fakes


def redeploy(inv, old: str, new: str):
    """The deployment after editing the inventory text."""
    inv.write_text(inv.read_text().replace(old, new))
    cluster, _ = load_inventory(inv)
    return run.prepare(cluster, need_artifacts=False)


def converge(dep, fakes):
    facts, observed = run.gather(dep, fakes)
    run.preflight(dep, facts)
    p = plan(dep.desired, observed)
    run.apply(dep, fakes, p, lambda e: None)
    return p


def test_converge_then_nothing_to_do(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    first = converge(dep, fakes)
    assert not first.empty
    assert fakes["worker1"].units["kubelet"] == {"active": "active", "enabled": "enabled"}
    # worker files: nothing of etcd or the control plane, and no CA key
    assert not any("etcd" in p or p.endswith("ca.key") for p in fakes["worker1"].fs)
    assert fakes["worker1"].fs["/var/lib/kubelet/pki/kubelet.key"].mode == 0o600
    for f in fakes.values():
        f.restarts.clear()
    _, observed = run.gather(dep, fakes)
    assert plan(dep.desired, observed).empty
    assert all(not f.restarts for f in fakes.values())


def test_changed_setting_touches_only_what_it_needs(inv):
    dep, fakes = converged(inv)
    dep2 = redeploy(inv, "cgroupDriver: systemd", "cgroupDriver: cgroupfs")
    _, observed = run.gather(dep2, fakes)
    p = plan(dep2.desired, observed)
    restarted = {(c.host, c.target) for c in p.changes if c.kind == "unit-restart"}
    assert ("worker1", "kubelet") in restarted and ("worker1", "containerd") in restarted
    assert not any(t in ("etcd", "kube-apiserver") for _, t in restarted)
    assert all(c.kind in ("file", "unit-restart") for c in p.changes)


def test_interrupted_restart_is_finished_by_the_next_run(inv):
    dep, fakes = converged(inv)
    dep2 = redeploy(inv, "mode: iptables", "mode: ipvs")
    fail = {r"systemctl restart kube-proxy": CommandResult("x", 1, b"", b"killed\n")}
    fakes["worker2"].responses = fail
    with pytest.raises(KdeployError, match="phase node failed on 1 host"):
        converge(dep2, fakes)
    assert "unit-restart:kube-proxy" in journal.parse(fakes["worker2"].get(journal.PATH))
    fakes["worker2"].responses = {}
    _, observed = run.gather(dep2, fakes)
    p = plan(dep2.desired, observed)
    assert [(c.host, c.kind, c.target) for c in p.changes] == [("worker2", "unit-restart", "kube-proxy")]
    run.apply(dep2, fakes, p, lambda e: None)
    assert journal.parse(fakes["worker2"].get(journal.PATH)) == frozenset()
    _, observed = run.gather(dep2, fakes)
    assert plan(dep2.desired, observed).empty


def test_the_journal_is_read_once_per_host_and_run_then_kept_in_step(inv):
    """Every host's pending restarts and commands are journaled before anything changes and
    dropped as each phase runs them: one read of the journal per host and run (the run holds
    the host's lock, nothing else writes it), yet every write holds what is still pending."""
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    written = {h: [] for h in fakes}
    for h, f in fakes.items():
        real = f.put

        def put(path, data, _f=real, _h=h, **kw):
            if path == journal.PATH:
                written[_h].append(journal.parse(data))
            return _f(path, data, **kw)
        f.put = put
    converge(dep, fakes)
    for h, f in fakes.items():
        reads = [c for c in f.log if c.op == "get" and c.what == journal.PATH]
        assert len(reads) == 1, (h, reads)
        assert len(written[h]) >= 2 and written[h][-1] == frozenset()   # added, then dropped
        assert journal.parse(f.get(journal.PATH)) == frozenset()
        # each write drops what a phase ran and keeps the rest, never adds back a done one
        assert all(b <= a for a, b in zip(written[h], written[h][1:])), written[h]


def test_unreachable_host_is_named_and_nothing_is_written(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep, worker2={"unreachable": "connection refused"})
    # sample addresses are documentation addresses: swap them for the test's fakes
    from kdeploy.transport import pool
    ok, failed = pool.connect_each(cluster, factory=FakeTransport.factory(fakes))
    assert set(failed) == {"worker2"} and "connection refused" in failed["worker2"].message
    with pytest.raises(UnreachableHosts, match="worker2"):
        pool.connect_all(cluster, factory=FakeTransport.factory(fakes))
    assert not any(c.op == "put" for f in fakes.values() for c in f.log)


def test_documentation_addresses_are_never_dialled(inv):
    cluster, _ = load_inventory(inv)
    called = []
    ok, failed = connect(cluster, factory=lambda c, h: called.append(h) or None)
    assert not ok and not called and "documentation address" in failed["cp1"].message


def test_preflight_reports_every_failing_host_before_any_write(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep, worker1={"system": {"swap": True}},
                      cp1={"listening": [6443]})
    facts, _ = run.gather(dep, fakes)
    with pytest.raises(PreflightError) as ei:
        run.preflight(dep, facts)
    msg = ei.value.message
    assert "worker1: swap is on" in msg and "cp1: port 6443" in msg and "nothing was changed" in msg
    assert not any(c.op in ("put", "put_file") for f in fakes.values() for c in f.log)


def test_restart_caused_in_an_earlier_phase_survives_a_failure_in_between(inv, tmp_path):
    """A new kubelet binary (phase artifacts) restarts kubelet (phase node): when the run stops
    in between, the next run still restarts kubelet although every file already matches."""
    import hashlib

    from kdeploy.errors import ApplyError
    from kdeploy.plan.resources import Binary
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    converge(dep, fakes)
    blob = tmp_path / "kubelet"
    blob.write_bytes(b"new kubelet")
    sha = hashlib.sha256(b"new kubelet").hexdigest()
    res = dep.desired["worker1"]
    dep.desired["worker1"] = replace(res, binaries=(
        Binary("/usr/local/bin/kubelet", str(blob), sha, phase="os", restarts=("kubelet",)),), files=tuple(
        replace(f, content=f.content + b"# changed\n") if f.path == "/etc/containerd/config.toml" else f
        for f in res.files))
    fakes["worker1"].responses = {r"systemctl restart containerd": CommandResult("x", 1, b"", b"boom\n")}
    _, observed = run.gather(dep, fakes)
    with pytest.raises(ApplyError, match="phase runtime failed"):
        run.apply(dep, fakes, plan(dep.desired, observed), lambda e: None)
    assert "unit-restart:kubelet" in journal.parse(fakes["worker1"].get(journal.PATH))
    fakes["worker1"].responses = {}
    _, observed = run.gather(dep, fakes)
    p = plan(dep.desired, observed)
    assert {(c.kind, c.target) for c in p.changes} == {
        ("unit-restart", "kubelet"), ("unit-restart", "containerd")}


def test_pod_cidrs_stay_put_when_a_host_is_removed(inv):
    cluster, _ = load_inventory(inv)
    first = run.prepare(cluster, need_artifacts=False).cluster.node_pod_cidrs
    assert first == {"cp1": "10.244.0.0/24", "worker1": "10.244.1.0/24", "worker2": "10.244.2.0/24"}
    # worker1 leaves, a new worker3 joins: worker2 keeps its subnet, worker3 gets a free one
    text = inv.read_text().replace("  - name: worker1\n    address: 192.0.2.21\n    roles: [worker]\n", "")
    text += "  - name: worker3\n    address: 192.0.2.23\n    roles: [worker]\n"
    inv.write_text(text)
    cluster2, _ = load_inventory(inv)
    again = run.prepare(cluster2, need_artifacts=False).cluster.node_pod_cidrs
    assert again["worker2"] == "10.244.2.0/24" and again["cp1"] == "10.244.0.0/24"
    assert again["worker3"] not in ("10.244.0.0/24", "10.244.2.0/24")


def test_documentation_bastion_or_mapped_address_is_never_dialled(inv):
    from kdeploy.execute.session import is_documentation_address
    assert is_documentation_address("::ffff:192.0.2.10") and not is_documentation_address("10.0.0.1")
    inv.write_text(inv.read_text().replace("  ssh:\n    user: root\n",
                                           "  ssh:\n    user: root\n    bastion: {address: 203.0.113.9}\n"))
    cluster, _ = load_inventory(inv)
    called = []
    ok, failed = connect(cluster, factory=lambda c, h: called.append(h) or None)
    assert not called and "bastion 203.0.113.9" in failed["cp1"].message


def test_running_control_plane_restarts_one_host_at_a_time(tmp_path):
    """HA: a changed apiserver setting restarts cp1, waits for its /readyz, then cp2, ..."""
    ha = tmp_path / "ha.yaml"
    shutil.copy(SAMPLES / "ha.yaml", ha)
    cluster, _ = load_inventory(ha)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    converge(dep, fakes)
    order = []

    def record(host):
        def respond(text, _input):
            if "restart kube-apiserver" in text or "/readyz" in text:
                order.append((host, "restart" if "restart" in text else "ready"))
            return None
        return respond
    for name in ("cp1", "cp2", "cp3"):
        fakes[name].responses = record(name)
    ha.write_text(ha.read_text().replace("extraSANs: [api.example.test]",
                                         "extraSANs: [api.example.test, api2.example.test]"))
    cluster2, _ = load_inventory(ha)
    dep2 = run.prepare(cluster2, need_artifacts=False)
    events = []
    _, observed = run.gather(dep2, fakes)
    run.apply(dep2, fakes, plan(dep2.desired, observed), events.append)
    assert order == [("cp1", "restart"), ("cp1", "ready"), ("cp2", "restart"), ("cp2", "ready"),
                     ("cp3", "restart"), ("cp3", "ready")]
    assert any(e.get("rolling") for e in events if e["event"] == "phase-start")


def test_a_garbled_pod_cidr_file_is_reallocated_not_a_traceback(inv):
    cluster, _ = load_inventory(inv)
    first = run.prepare(cluster, need_artifacts=False)
    saved = first.state_dir / "pod-cidrs.json"
    saved.write_text('{"cp1": {"x": 1}, "worker1": "10.244.2.0/24", "worker2": "10.244.2.0/24"}')
    again = run.prepare(cluster, need_artifacts=False).cluster.node_pod_cidrs
    assert len(set(again.values())) == 3
    saved.write_text("[1, 2]")
    assert run.prepare(cluster, need_artifacts=False).cluster.node_pod_cidrs


def test_preflight_reports_an_architecture_mismatch_with_the_other_problems(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep, worker2={"system": {"machine": "aarch64"}})
    facts, _ = run.gather(dep, fakes)
    with pytest.raises(PreflightError, match="worker2: the host is arm64, the artifacts are amd64"):
        run.preflight(dep, facts, "amd64")


def _lanes_run(dep, fakes, slow_readyz: float = 0.3, fail_apiserver: bool = False):
    """Apply up's steps (with lanes) to bare fakes; returns (events, [(host, what)] in order)."""
    import threading
    import time

    from kdeploy.execute.steps import converge_steps, with_lanes
    from kdeploy.plan.resources import PHASES
    seen, lock = [], threading.Lock()

    def record(host):
        def respond(text, _input):
            if "/readyz" in text:
                time.sleep(slow_readyz)  # the apiserver takes a while to come up
                with lock:
                    seen.append((host, "readyz"))
                return None
            if fail_apiserver and "start kube-apiserver" in text:
                return CommandResult(text, 1, b"", b"Job for kube-apiserver.service failed")
            if "start containerd" in text:
                with lock:
                    seen.append((host, "containerd"))
            return None
        return respond
    for name, f in fakes.items():
        f.responses = record(name)
    events = []
    _, observed = run.gather(dep, fakes)
    run.apply(dep, fakes, plan(dep.desired, observed), events.append,
              steps=with_lanes(converge_steps(PHASES)))
    return events, seen


def test_nodes_install_their_runtime_while_the_control_plane_comes_up(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    events, seen = _lanes_run(dep, fakes)
    workers = [h.name for h in cluster.hosts if not h.has("control-plane")]
    first_ready = seen.index(next(s for s in seen if s[1] == "readyz"))
    assert {h for h, what in seen[:first_ready] if what == "containerd"} >= set(workers)
    order = [(e["event"], e["phase"]) for e in events if e["event"] in ("phase-start", "phase-done")]
    # node waits for both lanes
    assert order.index(("phase-start", "node")) > max(order.index(("phase-done", "control-plane")),
                                                      order.index(("phase-done", "runtime")))
    p2 = plan(dep.desired, run.gather(dep, fakes)[1])
    assert not p2.changes


def test_a_failing_lane_stops_the_run_with_its_own_error(inv):
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False)
    fakes = fakes_for(cluster, dep)
    with pytest.raises(KdeployError, match="phase control-plane failed on 1 host") as e:
        _lanes_run(dep, fakes, fail_apiserver=True)
    assert "kube-apiserver.service failed" in e.value.message
    assert not any("start kubelet" in c for f in fakes.values() for c in f.commands)


def _timed_uploads(fakes, slow: float, fail: str | None = None) -> list:
    """Each fake's put_file takes `slow` s (and fails for the path `fail`); the uploads that
    landed, as [(host, path, start, end)]."""
    import threading
    import time
    uploads, lock = [], threading.Lock()
    for h, f in fakes.items():
        orig = f.put_file

        def put_file(path, local_path, *, mode=0o755, sha256=None, _h=h, _orig=orig):
            t0 = time.monotonic()
            time.sleep(slow)
            if fail and path == fail:
                raise KdeployError(f"cannot write {path}")
            _orig(path, local_path, mode=mode, sha256=sha256)
            with lock:
                uploads.append((_h, path, t0, time.monotonic()))
        f.put_file = put_file
    return uploads


def _bins_engine(tmp_path, hosts: dict[str, int], *, parallel: int = 16, slow: float = 0.0,
                 fail: str | None = None):
    """An engine over fake hosts, each with n binaries to upload in the node phase (and a
    file); returns (engine, plan, fakes, events, uploads: [(host, path, start, end)])."""
    import hashlib

    from kdeploy.execute.engine import Engine
    from kdeploy.plan.planner import Observed
    from kdeploy.plan.resources import Binary, File, HostResources
    src = tmp_path / "bin"
    src.write_bytes(b"binary")
    sha = hashlib.sha256(b"binary").hexdigest()
    desired = {h: HostResources(h, files=(File(f"/etc/{h}.conf", b"x", "node"),),
                                binaries=tuple(Binary(f"/usr/local/bin/b{i}", str(src), sha)
                                               for i in range(n)))
               for h, n in hosts.items()}
    fakes = {h: FakeTransport(h) for h in hosts}
    uploads = _timed_uploads(fakes, slow, fail)
    events = []
    eng = Engine(desired, fakes, roles={h: {"node"} for h in hosts}, emit=events.append,
                 parallel=parallel)
    return eng, plan(desired, {h: Observed() for h in hosts}), fakes, events, uploads


def test_a_hosts_binaries_upload_side_by_side(tmp_path):
    """A host added to a running cluster is the only one uploading: its binaries go a few at
    a time, not one after the other; every one lands and is announced in plan order."""
    from kdeploy.execute.steps import Step
    eng, p, fakes, events, uploads = _bins_engine(tmp_path, {"new": 6}, slow=0.2)
    eng.apply(p, (Step("node", ("node",)),))
    assert sorted(u[1] for u in uploads) == [f"/usr/local/bin/b{i}" for i in range(6)]
    overlap = max(sum(1 for u in uploads if u[2] < x[3] and x[2] < u[3]) for x in uploads)
    assert overlap >= 3
    shown = [e["target"] for e in events if e["event"] == "change" and e["kind"] == "binary"]
    assert shown == [f"/usr/local/bin/b{i}" for i in range(6)]
    assert all(fakes["new"].get(f"/usr/local/bin/b{i}") == b"binary" for i in range(6))


def test_many_hosts_uploading_send_one_file_at_a_time_each(tmp_path):
    """A first deploy of many hosts: each host's files go one after the other (the deployer's
    streams are shared; a host done with its files moves on while the others upload)."""
    from kdeploy.execute.steps import Step
    eng, p, fakes, events, uploads = _bins_engine(tmp_path, {f"h{i}": 3 for i in range(4)}, slow=0.05)
    eng.apply(p, (Step("node", ("node",)),))
    assert len(uploads) == 12
    for h in fakes:
        mine = [u for u in uploads if u[0] == h]
        assert max(sum(1 for u in mine if u[2] < x[3] and x[2] < u[3]) for x in mine) == 1


def test_a_failed_upload_fails_the_host_and_nothing_after_it_runs(tmp_path):
    from kdeploy.execute.steps import Step
    eng, p, fakes, events, uploads = _bins_engine(tmp_path, {"new": 5}, fail="/usr/local/bin/b2")
    with pytest.raises(KdeployError, match="phase node failed on 1 host"):
        eng.apply(p, (Step("node", ("node",)),))
    assert fakes["new"].get("/etc/new.conf") is None   # files come after the binaries


def test_the_host_with_the_most_work_starts_first(tmp_path):
    """At most `parallel` hosts act at once: the new host (its binaries) is not queued behind
    the small changes of the running ones."""
    from kdeploy.execute.steps import Step
    hosts = {f"old{i}": 0 for i in range(4)} | {"new": 2}
    eng, p, fakes, events, uploads = _bins_engine(tmp_path, hosts, parallel=1)
    eng.apply(p, (Step("node", ("node",)),))
    first = [e["host"] for e in events if e["event"] == "change"][0]
    assert first == "new"


def test_a_no_op_reads_no_file_beside_the_facts(inv):
    """The files a plan needs the text of on a converged host (/etc/hosts, which holds a block;
    the journal) come with each host's facts: no second round trip per host, and the plan is
    still empty."""
    dep, fakes = converged(inv)
    for f in fakes.values():
        f.log.clear()
    facts, observed = run.gather(dep, fakes)
    assert not plan(dep.desired, observed).changes
    assert not [c for f in fakes.values() for c in f.log if c.op == "get"]
    assert all(observed[h].contents.get("/etc/hosts") for h in fakes)


def _timed_up(dep, fakes, events):
    """Apply up's steps; returns {(host, what): (start, end)} for uploads and containerd starts."""
    import threading
    import time

    from kdeploy.verbs.up import up_steps
    spans, lock = {}, threading.Lock()
    uploads = _timed_uploads(fakes, 0.05)
    for name, f in fakes.items():
        def respond(text, _input, _n=name):
            if "start containerd" in text:
                t0 = time.monotonic()
                time.sleep(0.4)   # containerd takes a moment to come up
                with lock:
                    spans[(_n, "containerd started")] = (t0, time.monotonic())
            return None
        f.responses = respond
    _, observed = run.gather(dep, fakes)
    p = plan(dep.desired, observed)
    run.apply(dep, fakes, p, events.append, steps=up_steps(dep, fakes))
    spans.update({(h, path): (t0, t1) for h, path, t0, t1 in uploads})
    return spans, p


def test_a_joining_host_uploads_its_later_binaries_while_its_runtime_starts(tmp_path):
    """Adding a worker to a running cluster: its kubelet and images upload from the start of
    the run, while containerd comes up; the run converges (nothing left to do). A first deploy
    uploads each phase's binaries in that phase (the control plane first)."""
    import shutil

    from kdeploy.artifacts.layout import write_manifest
    from tests.conftest import fake_artifact_set
    art = fake_artifact_set(tmp_path / "art")
    write_manifest(art, kubernetes_version="1.37.2", arch="amd64", source="test")
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, artifacts_dir=art)
    fakes = fakes_for(cluster, dep)
    spans, _ = _timed_up(dep, fakes, [])
    first = spans[("worker1", "containerd started")]
    assert spans[("worker1", "/usr/local/bin/kubelet")][0] >= first[1]    # first deploy: in order

    inv.write_text(inv.read_text() + "  - name: worker3\n    address: 192.0.2.23\n    roles: [worker]\n")
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, artifacts_dir=art)
    new = fakes_for(cluster, dep)["worker3"]
    fakes = {**fakes, "worker3": new}
    import time
    timed = []
    spans, p = _timed_up(dep, fakes, type("Sink", (), {"append": lambda _, e: timed.append((time.monotonic(), e))})())
    events = [e for _, e in timed]
    runtime_done = next(t for t, e in timed if e.get("event") == "phase-done" and e["phase"] == "runtime")
    # they started before the runtime phase ended (containerd still coming up)
    assert spans[("worker3", "/usr/local/bin/kubelet")][0] < runtime_done
    assert spans[("worker3", "/var/lib/kdeploy/images/pause.tar")][0] < runtime_done
    # announced in its own phase all the same, and nothing uploaded twice
    shown = [(e["phase"], e["target"]) for e in events if e.get("event") == "change" and e["host"] == "worker3"
             and e["kind"] == "binary"]
    assert ("node", "/usr/local/bin/kubelet") in shown and len(shown) == len(set(shown))
    assert [c.what for c in new.log if c.op == "put_file"].count("/usr/local/bin/kubelet") == 1
    assert not plan(dep.desired, run.gather(dep, fakes)[1]).changes


def _images_engine(tmp_path, fail: str | None = None):
    """One host whose images phase imports three archives (each import takes 0.2 s; `fail`'s
    fails) and starts a unit; returns (engine, plan, fake, spans: {command: (start, end)})."""
    import hashlib
    import threading
    import time

    from kdeploy.execute.engine import Engine
    from kdeploy.plan.planner import Observed
    from kdeploy.plan.resources import Binary, HostResources, Unit
    from kdeploy.transport.base import CommandResult
    src = tmp_path / "img.tar"
    src.write_bytes(b"archive")
    sha = hashlib.sha256(b"archive").hexdigest()
    bins = tuple(Binary(f"/var/lib/kdeploy/images/{n}.tar", str(src), sha, phase="images", mode=0o644,
                        run_on_change=(("ctr", "images", "import", f"{n}.tar"),)) for n in ("a", "b", "c"))
    desired = {"n1": HostResources("n1", binaries=bins, units=(Unit("svc", "images"),))}
    spans, lock = {}, threading.Lock()

    def respond(text, _input):
        t0 = time.monotonic()
        if "import" in text:
            time.sleep(0.2)
        with lock:
            spans[text] = (t0, time.monotonic())
        if fail and fail in text:
            return CommandResult(text, 1, b"", b"ctr: failed to import\n")
        return None
    fake = FakeTransport("n1", responses=respond, units={"svc": {"active": "inactive", "enabled": "disabled"}})
    eng = Engine(desired, {"n1": fake}, roles={"n1": {"node"}})
    return eng, plan(desired, {"n1": Observed()}), fake, spans


def test_image_archives_import_side_by_side_before_the_phase_starts_its_units(tmp_path):
    """The images phase's imports do not depend on each other: they run at once, and the
    phase's units start only after every import ended."""
    from kdeploy.execute.steps import Step
    eng, p, fake, spans = _images_engine(tmp_path)
    eng.apply(p, (Step("images", ("images",)),))
    imports = [v for k, v in spans.items() if "import" in k]
    assert len(imports) == 3
    assert max(sum(1 for u in imports if u[0] < x[1] and x[0] < u[1]) for x in imports) == 3
    start = next(v for k, v in spans.items() if "start svc" in k)
    assert start[0] >= max(u[1] for u in imports)
    assert fake.units["svc"]["enabled"] == "enabled"


def test_a_failed_import_fails_the_host_after_the_others_ended_and_stays_journaled(tmp_path):
    from kdeploy.execute import journal
    from kdeploy.execute.steps import Step
    eng, p, fake, spans = _images_engine(tmp_path, fail="b.tar")
    with pytest.raises(KdeployError, match="phase images failed on 1 host"):
        eng.apply(p, (Step("images", ("images",)),))
    assert sum(1 for k in spans if "import" in k) == 3
    assert not any("start svc" in k for k in spans)
    pending = set(journal.parse(fake.get(journal.PATH)))
    assert {"run:ctr images import a.tar", "run:ctr images import b.tar"} <= pending


@pytest.mark.parametrize("per_host", [True, False])
def test_a_per_host_gate_asks_only_the_hosts_the_step_changed(tmp_path, per_host):
    """containerd answering is a check of the host itself: a worker joining others is asked,
    the unchanged ones are not; a cluster-wide gate (etcd, the apiservers) asks every host of
    its role once any changed."""
    from kdeploy.execute.steps import Gate, Step
    hosts = {"old1": 0, "old2": 0, "new": 1}
    eng, _, fakes, events, uploads = _bins_engine(tmp_path, hosts)
    from kdeploy.plan.planner import Observed, outcome
    # old1 and old2 converged (their file in place), new bare
    p = plan(eng.desired, {**outcome(eng.desired), "new": Observed()})
    assert {c.host for c in p.changes} == {"new"}
    gate = Gate("node", "node", "true", 5, "answers", per_host=per_host)
    eng.apply(p, (Step("node", ("node",), gates=(gate,)),))
    asked = sorted(e["host"] for e in events if e["event"] == "gate")
    assert asked == (["new"] if per_host else ["new", "old1", "old2"])


def test_a_phases_files_and_blocks_are_one_write_keeping_the_hosts_own_lines():
    """A block (kdeploy's part of /etc/hosts) goes with the phase's files in one write (one
    command over ssh); the lines the host had around it stay."""
    from kdeploy.execute.engine import Engine
    from kdeploy.execute.steps import Step
    from kdeploy.plan.planner import Observed
    from kdeploy.plan.resources import Block, File, HostResources
    desired = {"n1": HostResources("n1", files=(File("/etc/modules-load.d/k8s.conf", b"overlay\n", "os"),),
                                   blocks=(Block("/etc/hosts", "192.0.2.10 cp1\n", "os"),))}
    own = b"127.0.0.1 localhost\n::1 localhost\n"
    fake = FakeTransport("n1", files={"/etc/hosts": own})
    p = plan(desired, {"n1": Observed(contents={"/etc/hosts": own})})
    Engine(desired, {"n1": fake}, roles={"n1": {"node"}}).apply(p, (Step("os", ("os",)),))
    writes = [c for c in fake.log if c.op.startswith("put")]
    assert writes == [("put_many", "/etc/modules-load.d/k8s.conf /etc/hosts", None)]
    hosts = fake.fs["/etc/hosts"].data.decode()
    assert hosts.startswith(own.decode()) and "192.0.2.10 cp1\n" in hosts
    assert fake.fs["/etc/hosts"].mode == 0o644
