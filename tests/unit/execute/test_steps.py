"""Steps, host policies, hooks and the cleanup stack of the engine (against in-memory hosts)."""
import pytest

from kdeploy.errors import ApplyError, KdeployError
from kdeploy.execute.engine import Engine
from kdeploy.execute.steps import Hook, Policy, Step
from kdeploy.plan.planner import plan
from kdeploy.transport.base import CommandResult
from tests.unit.execute.test_engine import converged, inv, redeploy  # noqa: F401,F811 (fixture)


@pytest.mark.parametrize("text,hosts,want", [
    ("1", "abcde", ["a", "b", "c", "d", "e"]),
    ("2", "abcde", ["ab", "cd", "e"]),
    ("40%", "abcde", ["ab", "cd", "e"]),
    ("100%", "abcde", ["abcde"]),
    ("1%", "abc", ["a", "b", "c"]),            # rounded up: never an empty batch
])
def test_batches(text, hosts, want):
    assert ["".join(b) for b in Policy.parse(text).batches(list(hosts))] == want


@pytest.mark.parametrize("bad", ["0", "0%", "101%", "x", "-1", "1.5"])
def test_bad_batch_is_a_clear_error(bad):
    with pytest.raises(KdeployError, match="not a count or a percentage"):
        Policy.parse(bad)


def _kubelet_change(inv):
    """Converged fake hosts and a plan that changes the kubelet config on every host."""
    from kdeploy.execute import run
    _, fakes = converged(inv)
    dep = redeploy(inv, "spec:\n", "spec:\n  kubelet:\n    maxPods: 100\n")
    _, observed = run.gather(dep, fakes)
    p = plan(dep.desired, observed)
    assert {c.host for c in p.changes if c.target == "kubelet"} == set(dep.desired)
    return dep, fakes, p


def test_batches_run_in_order_with_hooks_around_each_host(inv):
    dep, fakes, p = _kubelet_change(inv)
    log = []
    before = Hook("drain", lambda ctx, h: log.append(("drain", h)))
    after = Hook("uncordon", lambda ctx, h: log.append(("uncordon", h)))
    hosts = tuple(dep.desired)
    eng = Engine(dep.desired, fakes, roles={h: {"node"} for h in hosts})
    eng.apply(p, (Step("nodes", ("node",), Policy("serial"), hosts=hosts[::-1],
                       before=(before,), after=(after,)),))
    # one host at a time, in the step's order, each drained before and uncordoned after
    assert log == [x for h in hosts[::-1] for x in (("drain", h), ("uncordon", h))]
    for h in hosts:
        assert any("systemctl restart kubelet" in c for c in fakes[h].commands)


def test_a_failed_host_stops_the_rollout_and_cleanups_run_in_reverse(inv):
    dep, fakes, p = _kubelet_change(inv)
    hosts = tuple(dep.desired)
    undone = []

    def cordon(ctx, h):
        ctx.push_cleanup(f"cordon:{h}", f"uncordon {h}", lambda: undone.append(h))

    fakes[hosts[1]].responses = {r"systemctl restart kubelet": CommandResult("x", 1, b"", b"boom\n")}
    eng = Engine(dep.desired, fakes, roles={h: {"node"} for h in hosts})
    with pytest.raises(ApplyError, match=rf"step nodes failed on 1 host\(s\):\n  {hosts[1]}"):
        eng.apply(p, (Step("nodes", ("node",), Policy("batch", size=1), before=(Hook("cordon", cordon),),
                           after=(Hook("uncordon", lambda ctx, h: ctx.pop_cleanup(f"cordon:{h}")),)),))
    assert undone == [hosts[1]]                               # only what is still cordoned
    assert not any("restart kubelet" in c for c in fakes[hosts[2]].commands)  # never reached


def test_a_new_control_plane_host_reaches_every_lb_by_reload_not_a_kubelet_restart(inv):
    from kdeploy.execute import run
    _, fakes = converged(inv)
    dep = redeploy(inv, "hosts:\n", "hosts:\n  - {name: cp2, address: 192.0.2.11, roles: [control-plane]}\n")
    _, observed = run.gather(dep, {h: fakes[h] for h in fakes})
    p = plan({h: dep.desired[h] for h in fakes}, {h: observed[h] for h in fakes})
    for h in fakes:                                      # every existing node
        mine = [c for c in p.changes if c.host == h]
        assert ("file", "/etc/kubernetes/api-lb/nginx.conf") in {(c.kind, c.target) for c in mine}
        assert any(c.kind == "run" and "try-reload-or-restart kdeploy-api-lb.service" in c.target
                   for c in mine)
        assert not any(c.kind == "unit-restart" and c.target in ("kubelet", "kube-proxy", "kdeploy-api-lb")
                       for c in mine), [c for c in mine if c.kind == "unit-restart"]


def test_a_rolling_step_starts_fresh_hosts_before_restarting_running_ones(inv):
    """Adding a control-plane host restarts the running apiservers (new certificate, etcd list):
    the new host's apiserver starts first, so the API never has fewer apiservers than before."""
    from kdeploy.execute import run
    from tests.unit.execute.test_engine import fakes_for
    _, fakes = converged(inv)
    text = inv.read_text()                                # cp9 listed last: its turn comes first
    dep = redeploy(inv, text, text.rstrip("\n") + "\n  - {name: cp9, address: 192.0.2.19, roles: [control-plane]}\n")
    fakes = {**fakes, "cp9": fakes_for(dep.cluster, dep)["cp9"]}
    _, observed = run.gather(dep, fakes)
    p = plan(dep.desired, observed)
    events = []
    eng = Engine(dep.desired, fakes, roles=run.roles_of(dep.cluster), emit=events.append)
    eng.apply(p, (Step("control-plane", ("control-plane",), serial_when_restarting=True),))
    order = [(e["host"], e["action"]) for e in events if e.get("event") == "change"
             and e["target"] == "kube-apiserver" and e["kind"] in ("unit-start", "unit-restart")]
    assert order[0] == ("cp9", "start") and ("restart" in {a for _, a in order[1:]}), order
    assert next(e for e in events if e.get("event") == "phase-start")["hosts"][0] == "cp9"
