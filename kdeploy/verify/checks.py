"""Post-deploy checks of a live cluster, run through the transports (kubectl and etcdctl on the
first control-plane host, unit states on every host). Each check returns pass/fail + detail."""
from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping

from kdeploy.errors import KdeployError
from kdeploy.model import Cluster, defaults
from kdeploy.pki import paths
from kdeploy.plan.desired import KUBECTL_ADMIN
from kdeploy.plan.resources import HostResources
from kdeploy.transport.base import Transport

NAMESPACE = "kdeploy-verify"      # the prefix of each verify's own namespace
LABEL = "kdeploy.io/verify"       # on every verify's namespace: leftovers are found by it


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


MARK = "@@kdeploy-host "   # kubelet_anonymous_refused: one section per host in one call's output

def _node_units() -> tuple[str, ...]:
    from kdeploy.components import containerd, kube_proxy, kubelet
    return containerd.COMPONENT.units + kubelet.COMPONENT.units + kube_proxy.COMPONENT.units


NODE_UNITS = _node_units()   # a node's stack: its runtime, kubelet and proxy


def node_stack_changed(plan) -> tuple[str, ...]:
    """Hosts on which a run started or restarted their node stack (containerd, kubelet,
    kube-proxy): a new node, or one whose runtime or kubelet changed. What `up` then verifies
    the workload on; a change elsewhere (a block in /etc/hosts, the pod routes to a new node)
    leaves the node's pods running."""
    return tuple(dict.fromkeys(c.host for c in plan.changes
                               if c.kind in ("unit-start", "unit-restart") and c.target in NODE_UNITS))


class Verifier:
    def __init__(self, cluster: Cluster, transports: Mapping[str, Transport],
                 desired: Mapping[str, HostResources], *, workload_image: str,
                 keep_workload: bool = False, timeout: float = 180.0,
                 focus: tuple[str, ...] | None = None):
        """focus: the hosts whose node stack the run changed (node_stack_changed); the test
        workload then runs on those workers and one unchanged worker (pods across the old and
        the new), not on every worker. None: on every worker (kdeploy verify)."""
        self.c = cluster
        self.focus = focus
        # a namespace of its own: one an earlier verify deleted may take seconds to terminate
        # (longer on a busy cluster), and a new name never waits for it
        self.ns = f"{NAMESPACE}-{secrets.token_hex(3)}"
        self.t = transports
        self.desired = desired
        self.image = workload_image
        self.keep_workload = keep_workload
        self.timeout = timeout
        self.cp = transports[cluster.control_plane[0].name]
        self.etcd_host = transports[cluster.etcd[0].name]
        self._applied: str | None = None   # the workload manifest, once applied

    # -- helpers -------------------------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, input: bytes | None = None,
                timeout: float = 60) -> str:
        r = self.cp.run(list(KUBECTL_ADMIN) + list(args), check=check, input=input, timeout=timeout)
        return r.out if r.ok else (r.err or r.out)

    def _until(self, fn: Callable[[], tuple[bool, str]], timeout: float | None = None,
               pause: float = 2) -> tuple[bool, str]:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            ok, detail = fn()
            if ok or time.monotonic() > deadline:
                return ok, detail
            time.sleep(pause)

    # -- checks --------------------------------------------------------------------------------
    def units_active(self) -> tuple[bool, str]:
        from kdeploy.transport.pool import run_many
        units = {name: [u.name for u in self.desired[name].units] for name in self.desired}

        def probe():
            # every host in one call where the transport can (ansible: one run)
            got = run_many(self.t, {n: ["systemctl", "is-active", *units[n]] for n in self.desired})
            res = []
            for name, r in got.items():
                if isinstance(r, KdeployError):
                    raise r
                states = r.out.split()
                res.append((name, [f"{u}={s}" for u, s in zip(units[name], states) if s != "active"]))
            bad = [f"{h}: {', '.join(b)}" for h, b in res if b]
            n = sum(len(self.desired[h].units) for h in self.desired)
            return (not bad, "; ".join(bad) if bad else f"{n} units active on {len(res)} hosts")
        # a unit may be coming back (a scheduler that lost its lease while its local
        # apiserver restarted): give it a minute before calling it down
        return self._until(probe, 60)

    def etcd_healthy(self) -> tuple[bool, str]:
        eps = ",".join(f"https://{h.address}:{defaults.ETCD_CLIENT_PORT}" for h in self.c.etcd)

        def probe():
            r = self.etcd_host.run(self._etcdctl(f"--endpoints={eps}", "endpoint", "health"), check=False)
            healthy = r.out.count("is healthy")
            bad = [ln.strip() for ln in (r.out + "\n" + r.err).splitlines() if "is unhealthy" in ln]
            return (r.ok and healthy == len(self.c.etcd),
                    f"{healthy}/{len(self.c.etcd)} members healthy over TLS" if r.ok
                    else ("; ".join(bad) or (r.err or r.out))[-300:])
        # a member slow to commit for a moment (its disk busy while a big cluster starts: the
        # health check's proposal times out) is no verdict: a minute, as for /readyz
        return self._until(probe, 60)

    def _etcdctl(self, *args: str) -> list[str]:
        return [f"{defaults.BIN_DIR}/etcdctl", f"--cacert={paths.ETCD_CA_CRT}",
                f"--cert={paths.ETCD_HEALTHCHECK_CLIENT_CRT}", f"--key={paths.ETCD_HEALTHCHECK_CLIENT_KEY}",
                *args]

    def apiserver_ready(self) -> tuple[bool, str]:
        def probe():
            out = self.kubectl("get", "--raw", "/readyz", check=False).strip()
            failing = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("[-]")]
            return out == "ok", out if out == "ok" else ("; ".join(failing) or out)[-300:]
        # a check failing for a moment (etcd slow to answer while a big cluster starts its pods)
        # is not a verdict: a minute, as for the units
        return self._until(probe, 60)

    def nodes_ready(self) -> tuple[bool, str]:
        want = {h.name for h in self.c.hosts}
        roles = {h.name: [r for r in ("control-plane", "worker") if h.has(r)] for h in self.c.hosts}

        def probe():
            raw = self.kubectl("get", "nodes", "-o", "json", check=False)
            try:
                items = json.loads(raw)["items"]
            except (ValueError, KeyError):
                return False, raw[-200:]
            ready, versions, unlabelled = set(), set(), []
            for n in items:
                labels = n["metadata"].get("labels", {})
                name = n["metadata"]["name"]
                if name in roles and not all(f"node-role.kubernetes.io/{r}" in labels
                                             for r in roles[name]):
                    unlabelled.append(name)
                conds = {c["type"]: c["status"] for c in n["status"].get("conditions", [])}
                if conds.get("Ready") == "True":
                    ready.add(n["metadata"]["name"])
                versions.add(n["status"]["nodeInfo"]["kubeletVersion"])
            expect = f"v{self.c.version}"
            if ready >= want and versions == {expect} and not unlabelled:
                return True, f"{len(ready)}/{len(want)} Ready, kubelet {expect}, role labels set"
            if unlabelled:
                return False, f"nodes without their role label: {', '.join(sorted(unlabelled))}"
            return False, f"Ready: {sorted(ready)}; expected {sorted(want)} at {expect}; seen {sorted(versions)}"
        return self._until(probe)

    def system_pods_running(self) -> tuple[bool, str]:
        def probe():
            raw = self.kubectl("get", "pods", "-n", "kube-system", "-o", "json", check=False)
            try:
                items = json.loads(raw)["items"]
            except (ValueError, KeyError):
                return False, raw[-200:]
            bad = [f"{p['metadata']['name']}={p['status'].get('phase')}" for p in items
                   if p["status"].get("phase") != "Running" or not all(
                       c.get("ready") for c in p["status"].get("containerStatuses", []))]
            return (bool(items) and not bad,
                    f"{len(items)} pods running" if not bad else ", ".join(bad))
        return self._until(probe)

    def _remove_leftovers(self) -> None:
        """Delete the namespaces earlier verifies left (--keep-workload, an interrupted run),
        not waited for: their names are not this verify's."""
        r = self.cp.run(list(KUBECTL_ADMIN) + ["get", "namespace", "-l", LABEL, "-o", "name"],
                        check=False, timeout=60)
        if not r.ok:
            return
        old = [n for n in r.out.split() if n != f"namespace/{self.ns}"]
        if old:
            self.cp.run(list(KUBECTL_ADMIN) + ["delete", *old, "--ignore-not-found", "--wait=false"],
                        check=False, timeout=60)

    def remove_workload(self) -> tuple[bool, str]:
        """Delete the namespace of the test workload (its Deployment, Service, ServiceAccount
        and Secret). Not waited for (its pods take seconds to stop, more on many nodes): the
        next verify uses a namespace of its own."""
        r = self.cp.run(list(KUBECTL_ADMIN) + ["delete", "namespace", self.ns,
                                               "--ignore-not-found", "--wait=false"],
                        check=False, timeout=60)
        if not r.ok:
            return False, (r.err or r.out)[-200:]
        return True, f"namespace {self.ns} deleted"

    def workload_nodes(self) -> tuple[str, ...] | None:
        """The workers the test workload runs on: None for all of them; with a focus, the
        focused workers plus unchanged ones until there are two, at least one of them unchanged
        (a pod on a changed node reaches one on an unchanged node through the Service)."""
        workers = [h.name for h in self.c.workers]
        if self.focus is None:
            return None
        changed = [w for w in workers if w in self.focus]
        rest = [w for w in workers if w not in self.focus]
        scope = changed + rest[:max(1, 2 - len(changed))]
        return tuple(scope) if len(scope) < len(workers) else None

    def _apply_workload(self) -> str:
        """Apply the test workload's manifest (after deleting earlier verifies' namespaces); the
        manifest."""
        from kdeploy.render.env import render
        scope = self.workload_nodes()
        n_nodes = len(scope) if scope else len(self.c.workers)
        # no worker: no pod (nowhere to run), the namespace, ServiceAccount and Secret all the same
        manifest = render("verify/workload.yaml.j2", {"namespace": self.ns, "label": LABEL,
                                                      "image": self.image,
                                                      "replicas": max(2, n_nodes) if self.c.workers else 0,
                                                      "nodes": list(scope or ())})
        self._remove_leftovers()
        self.kubectl("apply", "-f", "-", input=manifest.encode())
        self._applied = manifest
        return manifest

    def workload(self) -> tuple[bool, str]:
        if not self.c.workers:  # control-plane hosts carry the NoSchedule taint: nowhere to run
            return True, ("not applicable: no host has the worker role (control-plane hosts are "
                          "tainted NoSchedule); add workers or give a host the worker role")
        scope = self.workload_nodes()
        want = min(2, len(scope) if scope else len(self.c.workers))  # nodes the Service must answer from
        manifest = self._applied or self._apply_workload()
        ok, detail = self._until(self._rollout, pause=0.5)
        if not ok:
            return ok, detail
        pods = self._web_pods()
        if len({p["spec"].get("nodeName") for p in pods}) < want:
            # placed before workers joined: recreate them all at once so the spread constraint
            # sees the nodes there are now (a rolling restart counts the old pods and stacks)
            self.kubectl("delete", "deployment", "web", "-n", self.ns, "--wait=true", timeout=120)
            self.kubectl("apply", "-f", "-", input=manifest.encode())
            ok, detail = self._until(self._rollout, pause=0.5)
            if not ok:
                return ok, detail
            pods = self._web_pods()
        node_of = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods}
        nodes = set(node_of.values())
        # from each pod, through the Service's DNS name: reaches pods on other nodes too
        svc = f"web.{self.ns}.svc.{self.c.spec.network.cluster_domain}"
        # from a pod on a node this run changed when there is one
        src = next((p for p, n in node_of.items() if self.focus and n in self.focus),
                   pods[0]["metadata"]["name"])
        seen: set[str] = set()

        def dial():
            try:
                raw = self.kubectl(
                    "get", "--raw",
                    f"/api/v1/namespaces/{self.ns}/pods/{src}:8080/proxy/dial?request=hostname"
                    f"&protocol=http&host={svc}&port=80&tries=20", check=False, timeout=60)
            except KdeployError as e:  # a dial that hangs (a node just joined): try again
                return False, e.message[-200:]
            try:
                seen.update(json.loads(raw).get("responses") or [])
            except ValueError:
                return False, raw[-200:]
            answered = {node_of.get(p) for p in seen}
            return (len(answered) >= want,
                    f"answers from {len(seen)} pods on nodes {sorted(n for n in answered if n)}")
        ok, detail = self._until(dial, 90, pause=1)
        where = ""
        if scope:
            changed = [n for n in scope if n in self.focus]
            where = (f" (the nodes this run changed: {', '.join(changed) or 'none'}; "
                     f"unchanged: {', '.join(n for n in scope if n not in self.focus)})")
        return ok, (f"{len(pods)} pods on {len(nodes)} nodes{where}; pod {src} -> Service {svc}: "
                    f"{detail}")

    def _web_pods(self) -> list[dict]:
        items = json.loads(self.kubectl("get", "pods", "-n", self.ns, "-l", "app=web", "-o",
                                        "json"))["items"]
        return [p for p in items if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]

    def _rollout(self) -> tuple[bool, str]:
        # kubectl watches the rollout and returns the moment it is through: no pause between
        # tries beyond the half second for an answer that came at once (no Deployment yet)
        out = self.kubectl("rollout", "status", "-n", self.ns, "deployment/web", "--timeout=30s",
                           check=False, timeout=60)
        return "successfully rolled out" in out, out[-200:]

    def kubelet_anonymous_refused(self) -> tuple[bool, str]:
        """A request with no credentials at all to each kubelet's API, from the first
        control-plane host: must get 401/403. python3 when the host has it; else kubectl with
        credentials the kubelet does not accept (kubectl cannot send none without prompting)."""
        bad, codes = [], {}
        urls = {h.name: f"https://{h.address}:{defaults.KUBELET_PORT}/pods" for h in self.c.hosts}
        # one python3 asks every kubelet at once (a python start per host is seconds on a busy
        # host with tens of nodes); kubectl one after the other where there is no python3
        probe = (
            "import json, ssl, urllib.request, urllib.error\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "def ask(url):\n"
            "    try:\n"
            "        urllib.request.urlopen(url, context=ssl._create_unverified_context(), timeout=10)\n"
            "        return 'HTTP 200'\n"
            "    except urllib.error.HTTPError as e:\n"
            "        return f'HTTP {e.code}'\n"
            "    except Exception as e:\n"
            "        return f'{type(e).__name__} {e}'\n"
            f"urls = json.loads({json.dumps(urls)!r})\n"
            "with ThreadPoolExecutor(16) as ex:\n"
            "    for name, got in zip(urls, ex.map(ask, urls.values())):\n"
            f"        print({MARK!r} + name); print(got)\n")
        fallback = "\n".join(
            f"echo {MARK}{name}\n{defaults.BIN_DIR}/kubectl --kubeconfig=/dev/null "
            f"--server={url.rsplit('/', 1)[0]} --insecure-skip-tls-verify --token=not-a-credential "
            "get --raw /pods </dev/null 2>&1" for name, url in urls.items())
        script = f"if command -v python3 >/dev/null; then python3 - <<'EOF'\n{probe}EOF\nelse\n{fallback}\nfi"
        # every kubelet from one call (one ansible run with --transport ansible)
        r = self.cp.run(script, check=False, timeout=30 + 15 * len(urls))
        answers: dict[str, list[str]] = {}
        cur = None
        for line in (r.out + "\n" + r.err).splitlines():
            if line.startswith(MARK):
                cur = line[len(MARK):].strip()
                answers[cur] = []
            elif cur is not None:
                answers[cur].append(line)
        for h in self.c.hosts:
            text = "\n".join(answers.get(h.name, [])).strip()
            code = next((c for c in ("401", "403") if f"HTTP {c}" in text or
                         ("Unauthorized" in text and c == "401") or ("Forbidden" in text and c == "403")), None)
            if code is None:
                bad.append(f"{h.name}: {text[-120:] or 'no answer'}")
            else:
                codes[h.name] = code
        return (not bad, "; ".join(bad) or
                f"{len(codes)} kubelets answered " + "/".join(sorted(set(codes.values()))) + " to anonymous requests")

    def serviceaccount_forbidden(self) -> tuple[bool, str]:
        token = self.cp.run(list(KUBECTL_ADMIN) + ["create", "token", "no-role", "-n", self.ns],
                            secret=True).out.strip()
        # the token travels in a kubeconfig on kubectl's stdin: never on a command line (ps on
        # the host) nor in our logs
        kubeconfig = json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "probe",
            "clusters": [{"name": "c", "cluster": {
                "server": f"https://127.0.0.1:{defaults.APISERVER_PORT}",
                "certificate-authority": paths.CA_CRT}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "probe", "context": {"cluster": "c", "user": "sa"}}]})
        r = self.cp.run([f"{defaults.BIN_DIR}/kubectl", "--kubeconfig=/dev/stdin", "get", "secrets",
                         "-n", self.ns], input=kubeconfig.encode(), check=False, secret=True)
        text = r.err + r.out
        return (not r.ok and "forbidden" in text.lower(),
                "403 Forbidden listing Secrets" if "forbidden" in text.lower() else text[-200:])

    def secrets_encrypted(self) -> tuple[bool, str]:
        eps = f"--endpoints=https://127.0.0.1:{defaults.ETCD_CLIENT_PORT}"
        r = self.etcd_host.run(self._etcdctl(eps, "get", f"/registry/secrets/{self.ns}/probe",
                                             "--print-value-only"), check=False, secret=True)
        raw = r.stdout  # a Secret's stored bytes (encrypted, or the leak): never logged
        ok = raw.startswith(b"k8s:enc:") and b"kdeploy-verify-plaintext-marker" not in raw
        prefix = b":".join(raw.split(b":")[:3]) + b":" if ok else b""  # k8s:enc:<provider>:
        return ok, (prefix.decode(errors="replace") + "... (encrypted)"
                    if ok else f"stored value starts with {raw[:24]!r}")

    CHECKS = (
        ("units active", "units_active"),
        ("etcd healthy (TLS)", "etcd_healthy"),
        ("apiserver /readyz", "apiserver_ready"),
        ("nodes Ready at version", "nodes_ready"),
        ("kube-system pods running", "system_pods_running"),
        ("workload via Service across nodes + DNS", "workload"),
        ("kubelet API refuses anonymous", "kubelet_anonymous_refused"),
        ("ServiceAccount without role: 403 on Secrets", "serviceaccount_forbidden"),
        ("Secrets encrypted at rest in etcd", "secrets_encrypted"),
    )

    # checks that read what the workload's manifest creates (its namespace, ServiceAccount, Secret)
    AFTER_APPLY = frozenset({"serviceaccount_forbidden", "secrets_encrypted"})

    def _check(self, name: str, meth: str) -> CheckResult:
        t0 = time.monotonic()
        try:
            ok, detail = getattr(self, meth)()
        except KdeployError as e:
            ok, detail = False, e.message
        except (ValueError, KeyError, IndexError, TypeError) as e:  # unexpected API output
            ok, detail = False, f"unexpected answer: {type(e).__name__}: {e}"
        return CheckResult(name, ok, detail, round(time.monotonic() - t0, 2))

    def run(self, on_result: Callable[[CheckResult], None] = lambda r: None) -> list[CheckResult]:
        """Every check at once (each is a few API or host commands, mostly waiting), reported in
        CHECKS order. The workload is applied first: its pods start while the other checks run;
        the checks that read its objects wait for the workload check when that first apply failed."""
        try:
            self._apply_workload()
        except KdeployError:
            pass  # the workload check applies it again and reports what fails
        out = []
        with ThreadPoolExecutor(max_workers=len(self.CHECKS)) as ex:
            futs = {meth: ex.submit(self._check, name, meth) for name, meth in self.CHECKS
                    if self._applied or meth not in self.AFTER_APPLY}
            for name, meth in self.CHECKS:   # the workload check has ended when one is missing
                r = (futs.get(meth) or ex.submit(self._check, name, meth)).result()
                on_result(r)
                out.append(r)
        if not self.keep_workload:  # no test workload stays behind (kdeploy verify --keep-workload)
            try:
                self.remove_workload()
            except KdeployError:
                pass  # the checks' verdict stands; the next verify waits for or replaces it
        return out
