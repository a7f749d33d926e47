"""The verify workload: the image of the artifact set in use, removed after the checks unless
kept (a scripted control-plane transport answers kubectl)."""
from __future__ import annotations

import shutil

from kdeploy.execute import run
from kdeploy.model import load_inventory
from kdeploy.transport.base import CommandResult
from kdeploy.verify import checks
from tests.conftest import SAMPLES


class Cp:
    """Answers kubectl like an API: namespaces (name -> phase) created by apply, listed by the
    verify label, deleted: a deleted one stays Terminating (its pods take a while)."""

    def __init__(self, readyz_failures: int = 0):
        self.calls: list[list[str]] = []
        self.ns: dict[str, str] = {}
        self.readyz, self.readyz_failures = 0, readyz_failures

    def run(self, argv, check=True, input=None, timeout=None, secret=False):
        import yaml
        argv = list(argv) if not isinstance(argv, str) else [argv]
        self.calls.append(argv)
        out = ""
        if "apply" in argv and input:
            for d in yaml.safe_load_all(input.decode()):
                if d["kind"] == "Namespace":
                    if self.ns.get(d["metadata"]["name"]) == "Terminating":
                        return CommandResult(" ".join(argv), 1, b"", b"namespace is being terminated")
                    assert checks.LABEL in d["metadata"]["labels"]
                    self.ns[d["metadata"]["name"]] = "Active"
        elif argv[-2:] == ["--raw", "/readyz"]:
            self.readyz += 1
            out = "ok" if self.readyz > self.readyz_failures else "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed"
        elif argv[-6:-3] == ["get", "namespace", "-l"]:
            out = " ".join(f"namespace/{n}" for n in self.ns)
        elif "delete" in argv and ("namespace" in argv or any(a.startswith("namespace/") for a in argv)):
            for n in argv:
                n = n.removeprefix("namespace/")
                if n in self.ns:
                    self.ns[n] = "Terminating"
        return CommandResult(argv_display=" ".join(argv), rc=0, stdout=out.encode(), stderr=b"")

    def active(self) -> list[str]:
        return [n for n, ph in self.ns.items() if ph == "Active"]


class SeeingCp(Cp):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def run(self, argv, check=True, input=None, timeout=None, secret=False):
        if input:
            self.seen.append(input.decode())
        return super().run(argv, check=check, input=input, timeout=timeout, secret=secret)


def verifier(tmp_path, cp, **kw):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False, write_state=False)
    transports = {h.name: cp for h in cluster.hosts}
    v = checks.Verifier(cluster, transports, dep.desired, workload_image="kdeploy.invalid/agnhost:1",
                        timeout=1, **kw)
    return v


def only_workload(v, monkeypatch):
    monkeypatch.setattr(checks.Verifier, "CHECKS", (("workload", "workload"),))
    monkeypatch.setattr(v, "_rollout", lambda: (True, "ok"))
    monkeypatch.setattr(v, "_web_pods", lambda: [])
    monkeypatch.setattr(checks.time, "sleep", lambda s: None)


def test_workload_is_removed_after_the_checks(tmp_path, monkeypatch):
    cp = Cp()
    v = verifier(tmp_path, cp)
    only_workload(v, monkeypatch)
    v.run()
    assert list(cp.ns) == [v.ns] and v.ns.startswith("kdeploy-verify-") and not cp.active()


def test_the_next_verify_does_not_wait_for_the_last_ones_namespace_to_terminate(tmp_path, monkeypatch):
    """An earlier verify's namespace still terminating (pods stopping) takes no time from the
    next: it deploys in a namespace of its own."""
    cp = Cp()
    slept = []
    for _ in range(2):
        v = verifier(tmp_path, cp)
        only_workload(v, monkeypatch)
        monkeypatch.setattr(checks.time, "sleep", slept.append)
        [r] = v.run()
        assert "terminated" not in r.detail
    applied = [c for c in cp.calls if "apply" in c]
    assert len(applied) >= 2 and len(cp.ns) == 2 and not cp.active() and not slept


def test_keep_workload_leaves_it_and_the_next_verify_removes_it(tmp_path, monkeypatch):
    cp = Cp()
    v = verifier(tmp_path, cp, keep_workload=True)
    only_workload(v, monkeypatch)
    v.run()
    assert cp.active() == [v.ns]
    v2 = verifier(tmp_path, cp)
    only_workload(v2, monkeypatch)
    v2.run()
    assert cp.ns[v.ns] == "Terminating" and not cp.active()


def test_workload_manifest_names_the_given_image(tmp_path, monkeypatch):
    cp = SeeingCp()
    v = verifier(tmp_path, cp)
    only_workload(v, monkeypatch)
    v.run()
    assert "image: kdeploy.invalid/agnhost:1" in cp.seen[0]
    assert "terminationGracePeriodSeconds" in cp.seen[0]


def test_a_cluster_without_workers_passes_the_workload_check_as_not_applicable(tmp_path, monkeypatch):
    """Control-plane-only hosts are tainted NoSchedule: the workload would wait for minutes and
    fail; verify says why it does not apply and runs no pod. Its namespace, ServiceAccount and
    Secret are created all the same: the ServiceAccount and encryption checks read them."""
    import yaml
    cp = SeeingCp()
    v = verifier(tmp_path, cp)
    monkeypatch.setattr(v, "c", v.c.model_copy(update={"hosts": [h for h in v.c.hosts if not h.has("worker")]}))
    only_workload(v, monkeypatch)
    [r] = v.run()
    assert r.ok and "no host has the worker role" in r.detail
    [manifest] = cp.seen
    kinds = {d["kind"]: d for d in yaml.safe_load_all(manifest)}
    assert kinds["Deployment"]["spec"]["replicas"] == 0
    assert {"Namespace", "ServiceAccount", "Secret"} <= set(kinds)


def _with_workers(v, n: int):
    """The sample cluster with n workers (worker1..worker<n>)."""
    w = next(h for h in v.c.hosts if h.has("worker"))
    hosts = [h for h in v.c.hosts if not h.has("worker")] + [
        w.model_copy(update={"name": f"worker{i}", "address": f"192.0.2.{20 + i}"}) for i in range(1, n + 1)]
    return v.c.model_copy(update={"hosts": hosts})


def _applied_workload(cp) -> dict:
    import yaml
    text = next(c for c in cp.seen if "kind: Deployment" in c)
    return next(d for d in yaml.safe_load_all(text) if d["kind"] == "Deployment")


def test_after_an_add_the_workload_runs_on_the_new_node_and_one_unchanged_node(tmp_path, monkeypatch):
    """`up` that added worker5 to four workers: 2 pods, pinned to worker5 and worker1 (a pod on
    the new node reaches one on an old node through the Service), not one on every worker."""
    cp = SeeingCp()
    v = verifier(tmp_path, cp, focus=("worker5", "cp1"))
    monkeypatch.setattr(v, "c", _with_workers(v, 5))
    only_workload(v, monkeypatch)
    v.run()
    d = _applied_workload(cp)
    spec = d["spec"]["template"]["spec"]
    [term] = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "kubernetes.io/hostname", "operator": "In",
                                         "values": ["worker5", "worker1"]}]
    assert d["spec"]["replicas"] == 2


def test_without_a_focus_or_when_every_worker_changed_the_workload_spans_every_worker(tmp_path, monkeypatch):
    for focus in (None, tuple(f"worker{i}" for i in range(1, 6))):
        cp = SeeingCp()
        v = verifier(tmp_path, cp, focus=focus)
        monkeypatch.setattr(v, "c", _with_workers(v, 5))
        only_workload(v, monkeypatch)
        v.run()
        d = _applied_workload(cp)
        assert "affinity" not in d["spec"]["template"]["spec"] and d["spec"]["replicas"] == 5


def test_a_run_that_changed_no_node_stack_still_proves_the_service_on_two_workers(tmp_path):
    v = verifier(tmp_path, Cp(), focus=())
    v.c = _with_workers(v, 4)
    assert v.workload_nodes() == ("worker1", "worker2")
    v.focus = ("worker3", "worker4")
    assert v.workload_nodes() == ("worker3", "worker4", "worker1")


def test_node_stack_changed_names_hosts_whose_runtime_kubelet_or_proxy_started_or_restarted():
    from kdeploy.plan.planner import Change, Plan
    p = Plan((Change("new", "runtime", "unit-start", "containerd", "start"),
              Change("new", "node", "unit-start", "kubelet", "start"),
              Change("old1", "api-lb", "block", "/etc/hosts", "update"),
              Change("old1", "node", "unit-restart", "kdeploy-pod-routes", "restart"),
              Change("old2", "node", "unit-restart", "kube-proxy", "restart"),
              Change("cp", "control-plane", "unit-restart", "kube-apiserver", "restart")))
    assert checks.node_stack_changed(p) == ("new", "old2")


def test_the_anonymous_kubelet_probe_asks_every_kubelet_in_one_call(tmp_path, monkeypatch):
    """The probe script itself, run by bash here against a real TLS server on loopback: a
    kubelet that answers 401 passes, one that answers 200 (anonymous allowed) and one that is
    not listening fail, each named; every host in one call."""
    import http.server
    import ssl
    import subprocess
    import threading
    from kdeploy.model import defaults
    from kdeploy.pki import crypto

    key, cert = crypto.make_ca("kubelet", 1)
    (tmp_path / "k.pem").write_bytes(crypto.key_pem(key))
    (tmp_path / "c.pem").write_bytes(crypto.cert_pem(cert))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401 if self.server.server_address[0] == "127.0.0.1" else 200)
            self.end_headers()

        def log_message(self, *a):
            pass
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    servers = []
    for addr in ("127.0.0.1", "127.0.0.2"):
        port = servers[0].server_address[1] if servers else 0
        s = http.server.ThreadingHTTPServer((addr, port), H)
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    monkeypatch.setattr(defaults, "KUBELET_PORT", servers[0].server_address[1])
    calls = []

    class Bash:
        def run(self, script, check=False, timeout=None):
            calls.append(script)
            r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=timeout)
            return CommandResult(argv_display="probe", rc=r.returncode, stdout=r.stdout, stderr=r.stderr)
    v = verifier(tmp_path, Cp())
    v.cp = Bash()
    cp1, w1, w2 = v.c.hosts
    v.c = v.c.model_copy(update={"hosts": [cp1.model_copy(update={"address": "127.0.0.1"}),
                                           w1.model_copy(update={"address": "127.0.0.2"}),
                                           w2.model_copy(update={"address": "127.0.0.3"})]})
    try:
        ok, detail = v.kubelet_anonymous_refused()
    finally:
        for s in servers:
            s.shutdown()
    assert len(calls) == 1 and not ok
    assert "cp1" not in detail and "worker1: HTTP 200" in detail and "worker2: " in detail


def test_the_workload_is_applied_before_the_other_checks_and_only_once(tmp_path, monkeypatch):
    """Its pods start while the cluster-wide checks run: the apply is the first thing verify
    asks of the API, and the workload check does not apply it again."""
    cp = Cp()
    v = verifier(tmp_path, cp)
    monkeypatch.setattr(checks.Verifier, "CHECKS", (("readyz", "apiserver_ready"), ("workload", "workload")))
    _spread_over_two_nodes(v, monkeypatch)
    assert v.run()[-1].ok
    api = [c for c in cp.calls if "/readyz" in c or "apply" in c]
    assert ["apply" in c for c in api] == [True, False]


def test_a_failed_early_apply_is_retried_by_the_workload_check(tmp_path, monkeypatch):
    class Refusing(Cp):
        applies = 0

        def run(self, argv, check=True, input=None, timeout=None, secret=False):
            if "apply" in list(argv):
                self.applies += 1
                if self.applies == 1:   # the API not answering yet
                    from kdeploy.errors import TransportError
                    raise TransportError("connection refused")
            return super().run(argv, check=check, input=input, timeout=timeout, secret=secret)
    cp = Refusing()
    v = verifier(tmp_path, cp)
    monkeypatch.setattr(checks.Verifier, "CHECKS", (("workload", "workload"),))
    _spread_over_two_nodes(v, monkeypatch)
    [r] = v.run()
    assert r.ok and cp.applies == 2 and list(cp.ns) == [v.ns]


def _spread_over_two_nodes(v, monkeypatch):
    """The workload's pods rolled out on two nodes (no recreate), both answering the dial."""
    import json
    nodes = ("worker1", "worker2")
    monkeypatch.setattr(v, "_rollout", lambda: (True, "ok"))
    monkeypatch.setattr(v, "_web_pods", lambda: [{"metadata": {"name": f"web-{n}"}, "spec": {"nodeName": n}}
                                                  for n in nodes])
    kubectl = v.kubectl

    def answering(*args, **kw):
        if "dial?" in " ".join(args):
            return json.dumps({"responses": [f"web-{n}" for n in nodes]})
        return kubectl(*args, **kw)
    monkeypatch.setattr(v, "kubectl", answering)
    monkeypatch.setattr(checks.time, "sleep", lambda s: None)


def test_checks_run_side_by_side_and_report_in_order(tmp_path, monkeypatch):
    """Each check mostly waits on the API or a host: they run at once (a slow one does not hold
    back the others) and are reported in their fixed order."""
    import threading
    cp = Cp()
    v = verifier(tmp_path, cp)
    running, peak, lock = [0], [0], threading.Lock()

    def slow(label, seconds):
        def check():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            __import__("time").sleep(seconds)
            with lock:
                running[0] -= 1
            return True, label
        return check
    monkeypatch.setattr(checks.Verifier, "CHECKS", (("a", "ca"), ("b", "cb"), ("c", "cc")), raising=False)
    for name, secs in (("ca", 0.3), ("cb", 0.1), ("cc", 0.2)):
        setattr(v, name, slow(name, secs))
    seen = []
    res = v.run(seen.append)
    assert [r.name for r in res] == [r.name for r in seen] == ["a", "b", "c"] and peak[0] == 3


def test_apiserver_readyz_failing_for_a_moment_passes_and_a_lasting_failure_names_the_check(tmp_path, monkeypatch):
    """A /readyz sub-check failing for a moment (etcd slow while a big cluster starts) is
    retried; one that keeps failing is reported by name."""
    monkeypatch.setattr(checks.time, "sleep", lambda s: None)
    ok, detail = verifier(tmp_path, Cp(readyz_failures=2)).apiserver_ready()
    assert ok and detail == "ok"
    v = verifier(tmp_path, Cp(readyz_failures=10**9))
    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(checks.time, "monotonic", lambda: next(clock))
    ok, detail = v.apiserver_ready()
    assert not ok and detail == "[-]etcd failed: reason withheld"


def test_etcd_slow_for_a_moment_passes_and_a_lasting_failure_names_the_member(tmp_path, monkeypatch):
    """etcd's health check times out while a member's disk is busy (a big cluster starting):
    retried for a minute; an unhealthy member that stays so is named."""
    monkeypatch.setattr(checks.time, "sleep", lambda s: None)
    unhealthy = ("https://192.0.2.10:2379 is unhealthy: failed to commit proposal: context "
                 "deadline exceeded\nError: unhealthy cluster\n")

    class Etcd(Cp):
        def __init__(self, failures):
            super().__init__()
            self.failures, self.n = failures, 0

        def run(self, argv, check=True, input=None, timeout=None, secret=False):
            if "endpoint" in argv and "health" in argv:
                self.n += 1
                if self.n <= self.failures:
                    return CommandResult(" ".join(argv), 1, b"", unhealthy.encode())
                return CommandResult(" ".join(argv), 0, b"https://192.0.2.10:2379 is healthy: "
                                     b"successfully committed proposal: took = 2ms\n", b"")
            return super().run(argv, check=check, input=input, timeout=timeout, secret=secret)
    v = verifier(tmp_path, Etcd(2))
    assert len(v.c.etcd) == 1
    ok, detail = v.etcd_healthy()
    assert ok and detail == "1/1 members healthy over TLS" and v.etcd_host.n == 3
    v = verifier(tmp_path, Etcd(10**9))
    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(checks.time, "monotonic", lambda: next(clock))
    ok, detail = v.etcd_healthy()
    assert not ok and detail.startswith("https://192.0.2.10:2379 is unhealthy: failed to commit proposal")


def test_verify_records_each_check_in_a_run_of_its_own_when_the_cluster_has_a_state_dir(tmp_path, monkeypatch):
    """`kdeploy verify` leaves its verdicts in runs/<stamp>-verify/events.jsonl as `up` does;
    beside an inventory kdeploy never deployed from, it writes nothing."""
    import json
    from kdeploy.verbs import up
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    dep = run.prepare(cluster, need_artifacts=False, write_state=False)
    results = [checks.CheckResult("etcd healthy", True, "3 members", 0.5),
               checks.CheckResult("workload", False, "no pod ready", 9.0)]

    def fake_verify(dep, transports, on_result=lambda r: None, **kw):
        for r in results:
            on_result(r)
        return results
    monkeypatch.setattr(up, "verify", fake_verify)
    assert up.verify_recorded(dep, {}) == results
    assert not dep.state_dir.exists()
    dep.state_dir.mkdir(parents=True)
    up.verify_recorded(dep, {})
    [events] = list(dep.state_dir.glob("runs/*-verify/events.jsonl"))
    got = [json.loads(x) for x in events.read_text().splitlines()]
    assert [(e["event"], e["name"], e["ok"], e["seconds"], e["detail"]) for e in got] == [
        ("check", "etcd healthy", True, 0.5, "3 members"), ("check", "workload", False, 9.0, "no pod ready")]
