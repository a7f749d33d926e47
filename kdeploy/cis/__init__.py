"""CIS Kubernetes benchmark with kube-bench on every host (`kdeploy cis`).

The kube-bench binary and its benchmark control files come from the artifact set
(tools/kube-bench/, component kube-bench of `kdeploy artifacts build`); the config.yaml that
maps kube-bench's component paths onto kdeploy's layout (systemd units and config files, not
static pods) is rendered here from kdeploy's path constants (kdeploy/cis/config.yaml.j2).

Per host: upload binary + cfg/ to a fresh root-only temp dir, run
`kube-bench run --targets ... --benchmark cis-1.11 --json`, remove the temp dir, parse.
Targets: master and controlplane on control-plane hosts (policies once, on the first: its
checks are cluster-wide), etcd on etcd members, node on hosts running a kubelet (workers).
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2

from kdeploy.artifacts.catalog import (DEFAULT_KUBERNETES_VERSION, KUBE_BENCH_BENCHMARK,
                                       KUBE_BENCH_BIN, KUBE_BENCH_DIR,
                                       KUBE_BENCH_TARGETS, SUPPORTED_MINORS, kube_bench_files)
from kdeploy.errors import ArtifactError, KdeployError
from kdeploy.model import Cluster, defaults
from kdeploy.pki import paths as pki
from kdeploy.render.context import KUBE_PROXY_CONFIG, KUBELET_CONFIG, unit_path
from kdeploy.transport.base import Transport

HERE = Path(__file__).resolve().parent
STATUSES = ("PASS", "FAIL", "WARN", "INFO")
RUN_TIMEOUT = 600


# ------------------------------------------------------------------ config

@lru_cache(maxsize=1)
def render_config() -> str:
    """kube-bench's cfg/config.yaml for kdeploy's host layout."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("config.yaml.j2").render(
        unit=unit_path, pki=pki, etcd_data_dir=defaults.ETCD_DATA_DIR,
        kubelet_config=KUBELET_CONFIG, kube_proxy_config=KUBE_PROXY_CONFIG,
        minors=SUPPORTED_MINORS, benchmark=KUBE_BENCH_BENCHMARK, targets=KUBE_BENCH_TARGETS)


def targets_for(cluster: Cluster) -> dict[str, list[str]]:
    """host name -> kube-bench targets (in KUBE_BENCH_TARGETS order); hosts with none left out."""
    first_cp = cluster.control_plane[0].name if cluster.control_plane else None
    out: dict[str, list[str]] = {}
    for h in cluster.hosts:
        want = set()
        if h.has("control-plane"):
            want |= {"master", "controlplane"} | ({"policies"} if h.name == first_cp else set())
        if h.has("etcd"):
            want.add("etcd")
        if h.has("worker"):
            want.add("node")
        if want:
            out[h.name] = [t for t in KUBE_BENCH_TARGETS if t in want]
    return out


def kube_bench_from(root: Path) -> dict[str, Path]:
    """relpath under tools/kube-bench/ -> local file, from an artifact set verified against its
    manifest. ArtifactError when the set has no kube-bench."""
    from kdeploy.artifacts.layout import read_manifest, verify_dir
    root = Path(root).expanduser()
    doc = read_manifest(root)
    missing = [r for r in kube_bench_files() if r not in doc["files"]]
    if missing:
        raise ArtifactError(
            f"the artifact set {root} has no kube-bench (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''})",
            f"build it into the set: kdeploy artifacts build --k8s-version "
            f"{doc.get('kubernetesVersion') or DEFAULT_KUBERNETES_VERSION} (component kube-bench; the other components "
            "stay cached), then pass that set with --artifacts DIR")
    verify_dir(root, required=kube_bench_files())
    return {r.removeprefix(KUBE_BENCH_DIR + "/"): root / r for r in kube_bench_files()}


# ------------------------------------------------------------------ results

@dataclass
class Check:
    id: str
    status: str
    text: str
    scored: bool = True
    actual: str = ""          # what the audit found (kube-bench's actual_value)
    remediation: str = ""


@dataclass
class TargetResult:
    host: str
    target: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    checks: list[Check] = field(default_factory=list)
    error: str = ""


def parse(host: str, raw: str | bytes | dict | list) -> list[TargetResult]:
    """kube-bench --json output (`{"Controls": [...], "Totals": ...}`, or a bare list of
    controls from older versions) -> one TargetResult per control (node_type)."""
    doc = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    controls = doc.get("Controls", []) if isinstance(doc, dict) else doc
    if not isinstance(controls, list):
        raise ValueError("kube-bench JSON has no Controls list")
    out: list[TargetResult] = []
    for c in controls:
        tr = TargetResult(host, str(c.get("node_type", "?")))
        for g in c.get("tests") or []:
            for chk in g.get("results") or []:
                st = str(chk.get("status", "")).upper()
                tr.checks.append(Check(str(chk.get("test_number", "?")), st,
                                       " ".join(str(chk.get("test_desc", "")).split()),
                                       bool(chk.get("scored", True)),
                                       str(chk.get("actual_value") or "").strip(),
                                       str(chk.get("remediation") or "").strip()))
                if st in tr.counts:
                    tr.counts[st] += 1
        out.append(tr)
    return out


def fails(results: list[TargetResult]) -> int:
    return sum(r.counts["FAIL"] for r in results) + sum(1 for r in results if r.error)


def format_table(results: list[TargetResult]) -> str:
    """One table: per host and target the PASS/FAIL/WARN/INFO counts, then every FAIL and
    WARN with its id and text (and per-host errors)."""
    hw = max([len("HOST")] + [len(r.host) for r in results])
    tw = max([len("TARGET")] + [len(r.target) for r in results])
    lines = [f"{'HOST':<{hw}}  {'TARGET':<{tw}}  " + "  ".join(f"{s:>4}" for s in STATUSES)]
    for r in results:
        if r.error:
            lines.append(f"{r.host:<{hw}}  {r.target:<{tw}}  ERROR {r.error}")
        else:
            lines.append(f"{r.host:<{hw}}  {r.target:<{tw}}  "
                         + "  ".join(f"{r.counts[s]:>4}" for s in STATUSES))
    for st in ("FAIL", "WARN"):
        rows = [(r, c) for r in results for c in r.checks if c.status == st]
        if rows:
            lines.append("")
            iw = max(len(c.id) for _, c in rows)
            for r, c in rows:
                lines.append(f"{st}  {r.host:<{hw}}  {r.target:<{tw}}  {c.id:<{iw}}  {c.text}")
    return "\n".join(lines)


def as_json(results: list[TargetResult]) -> dict:
    return {"benchmark": KUBE_BENCH_BENCHMARK, "fail": fails(results),
            "results": [asdict(r) for r in results]}


# ------------------------------------------------------------------ running

def run_on_host(t: Transport, targets: list[str], files: Mapping[str, Path],
                config: str) -> tuple[str, str]:
    """Upload kube-bench + cfg to a temp dir on the host, run it for `targets`, remove the dir.
    (stdout JSON, stderr tail)."""
    d = t.run(["mktemp", "-d", "/tmp/kdeploy-cis.XXXXXXXX"]).out.strip()
    if not d.startswith("/tmp/kdeploy-cis."):
        raise KdeployError(f"{t.host}: mktemp answered {d!r}")
    try:
        for rel, local in files.items():
            if rel == "cfg/config.yaml":
                continue  # kdeploy's own, below
            t.put_file(f"{d}/{rel}", local, mode=0o755 if rel == "kube-bench" else 0o644)
        t.put(f"{d}/cfg/config.yaml", config.encode(), mode=0o644)
        cmd = (f"cd {shlex.quote(d)} && KUBECONFIG={shlex.quote(pki.ADMIN_CONF)} "
               f"PATH={shlex.quote(defaults.BIN_DIR)}:$PATH ./kube-bench run "
               f"--targets {','.join(targets)} --benchmark {KUBE_BENCH_BENCHMARK} "
               f"--config-dir {shlex.quote(d + '/cfg')} --config {shlex.quote(d + '/cfg/config.yaml')} "
               "--json")
        r = t.run(cmd, check=False, timeout=RUN_TIMEOUT)
        if not r.ok:
            raise KdeployError(f"{t.host}: kube-bench exited {r.rc}: {(r.err or r.out)[-300:]}")
        return r.out, r.err
    finally:
        t.run(["rm", "-rf", "--", d], check=False)


def run_all(cluster: Cluster, transports: Mapping[str, Transport], files: Mapping[str, Path],
            ) -> list[TargetResult]:
    """kube-bench on every host with targets, in parallel; results in inventory order."""
    config = render_config()
    plan = targets_for(cluster)

    def one(name: str) -> list[TargetResult]:
        try:
            out, _ = run_on_host(transports[name], plan[name], files, config)
            res = parse(name, out)
        except KdeployError as e:
            return [TargetResult(name, ",".join(plan[name]), error=e.message)]
        except ValueError as e:
            return [TargetResult(name, ",".join(plan[name]), error=f"unreadable output: {e}")]
        order = {t: i for i, t in enumerate(KUBE_BENCH_TARGETS)}
        return sorted(res, key=lambda r: order.get(r.target, len(order)))

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(plan)))) as ex:
        per_host = list(ex.map(one, plan))
    return [r for rs in per_host for r in rs]


__all__ = ["Check", "TargetResult", "as_json", "fails", "format_table", "kube_bench_from",
           "parse", "render_config", "run_all", "targets_for", "KUBE_BENCH_BIN"]
