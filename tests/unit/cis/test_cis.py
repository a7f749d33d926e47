"""kdeploy cis without hosts: the kube-bench config for kdeploy's layout, the targets per host,
parsing kube-bench's JSON (a sample recorded from kube-bench 0.14.0 on the lab, trimmed), the
table, the artifact-set lookup and one run over a fake transport."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdeploy import cis as bench
from kdeploy.artifacts import catalog
from kdeploy.artifacts.layout import write_manifest
from kdeploy.errors import ArtifactError, ChecksumMismatch
from kdeploy.model import load_inventory
from kdeploy.pki import ensure_pki
from kdeploy.plan.desired import desired_state
from kdeploy.transport.base import CommandResult
from kdeploy.transport.fake import FakeTransport
from tests.conftest import SAMPLES, fake_artifact_set

HERE = Path(__file__).parent
SAMPLE = json.loads((HERE / "kube-bench-0.14.0-sample.json").read_text())
REPO = HERE.parents[2]


def cluster_of(tmp_path, sample="cluster.yaml"):
    inv = tmp_path / sample
    shutil.copy(SAMPLES / sample, inv)
    return load_inventory(inv)[0]


# ------------------------------------------------------------------ config

def test_config_points_every_component_at_files_kdeploy_writes(tmp_path):
    cfg = yaml.safe_load(bench.render_config())
    c = cluster_of(tmp_path)
    written = {f.path for r in desired_state(c, pki=ensure_pki(c)).values() for f in r.files}
    m, n = cfg["master"], cfg["node"]
    # CIS 1.1.1-1.1.8 ("pod specification files"): the systemd units, which hold the flags
    for comp, unit in (("apiserver", "kube-apiserver"), ("controllermanager", "kube-controller-manager"),
                       ("scheduler", "kube-scheduler"), ("etcd", "etcd")):
        assert m[comp]["confs"] == [f"/etc/systemd/system/{unit}.service"] == [m[comp]["defaultconf"]]
    assert cfg["etcd"]["etcd"]["confs"] == m["etcd"]["confs"]
    assert m["etcd"]["datadirs"] == [m["etcd"]["defaultdatadir"]] == ["/var/lib/etcd"]
    assert n["kubelet"]["svc"] == ["/etc/systemd/system/kubelet.service"]
    assert n["kubelet"]["confs"] == ["/var/lib/kubelet/config.yaml"]
    paths = []
    for section in (m, n, cfg["etcd"]):
        for comp in section.values():
            if isinstance(comp, dict):
                for key in ("confs", "svc", "kubeconfig", "cafile"):
                    paths += comp.get(key, [])
                paths += [comp[k] for k in ("defaultconf", "defaultsvc", "defaultkubeconfig",
                                            "defaultcafile") if k in comp]
    assert paths and set(paths) <= written, sorted(set(paths) - written)
    # kube-bench's own defaults (static pod manifests) appear nowhere
    assert "/etc/kubernetes/manifests" not in bench.render_config()


def test_config_maps_the_supported_minors_and_targets_to_the_pinned_benchmark():
    cfg = yaml.safe_load(bench.render_config())
    assert cfg["version_mapping"] == {m: catalog.KUBE_BENCH_BENCHMARK for m in catalog.SUPPORTED_MINORS}
    assert cfg["target_mapping"] == {catalog.KUBE_BENCH_BENCHMARK: list(catalog.KUBE_BENCH_TARGETS)}
    for t in catalog.KUBE_BENCH_TARGETS:
        assert "components" in cfg[t]


def test_targets_per_role(tmp_path):
    c = cluster_of(tmp_path, "ha.yaml")
    t = bench.targets_for(c)
    cps = [h.name for h in c.control_plane]
    assert t[cps[0]][:2] == ["master", "controlplane"] and "policies" in t[cps[0]]
    assert all("policies" not in t[h] for h in cps[1:])      # cluster-wide: once
    for h in c.hosts:
        assert ("etcd" in t[h.name]) == h.has("etcd")
        assert ("node" in t[h.name]) == h.has("worker")
        assert ("master" in t[h.name]) == h.has("control-plane")
        assert t[h.name] == [x for x in catalog.KUBE_BENCH_TARGETS if x in t[h.name]]


# ------------------------------------------------------------------ parsing and the table

def results():
    return bench.parse("m1", json.dumps(SAMPLE["m1"])) + bench.parse("m2", SAMPLE["m2"])


def test_parse_recorded_output():
    rs = results()
    assert [(r.host, r.target) for r in rs] == [("m1", "etcd"), ("m1", "controlplane"), ("m2", "node")]
    by = {(r.host, r.target): r for r in rs}
    assert by["m1", "etcd"].counts == {"PASS": 2, "FAIL": 0, "WARN": 0, "INFO": 0}
    assert by["m1", "controlplane"].counts == {"PASS": 1, "FAIL": 0, "WARN": 2, "INFO": 0}
    node = by["m2", "node"]
    assert node.counts == {"PASS": 1, "FAIL": 2, "WARN": 1, "INFO": 0}
    f = {c.id: c for c in node.checks if c.status == "FAIL"}
    assert set(f) == {"4.1.1", "4.2.10"}
    assert f["4.1.1"].text == ("Ensure that the kubelet service file permissions are set to 600 "
                               "or more restrictive (Automated)")
    assert f["4.1.1"].actual == "permissions=644" and "chmod" in f["4.1.1"].remediation
    # kube-bench's own totals agree with the counts
    for host in ("m1", "m2"):
        tot = SAMPLE[host]["Totals"]
        got = [r for r in rs if r.host == host]
        assert sum(r.counts["FAIL"] for r in got) == tot["total_fail"]
        assert sum(r.counts["PASS"] for r in got) == tot["total_pass"]
    assert bench.fails(rs) == 2


def test_parse_bare_list_of_older_versions_and_garbage():
    assert [r.target for r in bench.parse("h", SAMPLE["m1"]["Controls"])] == ["etcd", "controlplane"]
    with pytest.raises(ValueError):
        bench.parse("h", "not json")
    with pytest.raises(ValueError):
        bench.parse("h", {"Controls": "x"})


def test_table_counts_then_fail_and_warn_rows():
    rs = results() + [bench.TargetResult("w9", "node", error="kube-bench exited 1: boom")]
    table = bench.format_table(rs)
    lines = table.splitlines()
    assert lines[0].split() == ["HOST", "TARGET", "PASS", "FAIL", "WARN", "INFO"]
    assert lines[1].split() == ["m1", "etcd", "2", "0", "0", "0"]
    assert lines[3].split() == ["m2", "node", "1", "2", "1", "0"]
    assert lines[4].split()[:3] == ["w9", "node", "ERROR"]
    fails = [ln for ln in lines if ln.startswith("FAIL ")]
    warns = [ln for ln in lines if ln.startswith("WARN ")]
    assert [ln.split()[1:4] for ln in fails] == [["m2", "node", "4.1.1"], ["m2", "node", "4.2.10"]]
    assert fails[0].endswith("Ensure that the kubelet service file permissions are set to 600 or "
                             "more restrictive (Automated)")
    assert {ln.split()[3] for ln in warns} == {"3.1.1", "3.2.2", "4.2.7"}
    assert table.index("FAIL ") < table.index("WARN ")
    assert bench.fails(rs) == 3                    # an error counts
    doc = bench.as_json(rs)
    assert doc["fail"] == 3 and doc["benchmark"] == catalog.KUBE_BENCH_BENCHMARK
    assert json.loads(json.dumps(doc))["results"][3]["error"].startswith("kube-bench exited")


# ------------------------------------------------------------------ the artifact set

def test_kube_bench_from_a_set_with_and_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = fake_artifact_set(tmp_path / "old", kube_bench=False)
    write_manifest(old, kubernetes_version="1.37.2", arch="amd64", source="test")
    with pytest.raises(ArtifactError, match="has no kube-bench") as e:
        bench.kube_bench_from(old)
    assert "kdeploy artifacts build --k8s-version 1.37.2" in e.value.hint
    new = fake_artifact_set(tmp_path / "new")
    write_manifest(new, kubernetes_version="1.37.2", arch="amd64", source="test")
    files = bench.kube_bench_from(new)
    assert set(files) == {"kube-bench", "cfg/config.yaml"} | {
        f"cfg/{catalog.KUBE_BENCH_BENCHMARK}/{n}.yaml"
        for n in ("config", *catalog.KUBE_BENCH_TARGETS)}
    (new / catalog.KUBE_BENCH_BIN).write_bytes(b"kube-bEnch")   # same size, other content
    with pytest.raises(ChecksumMismatch):
        bench.kube_bench_from(new)


def test_run_on_host_uploads_runs_and_removes(tmp_path):
    files = {}
    for rel in catalog.kube_bench_files():
        short = rel.removeprefix(catalog.KUBE_BENCH_DIR + "/")
        p = tmp_path / short
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(short)
        files[short] = p
    d = "/tmp/kdeploy-cis.AbC123"
    seen = {}

    def kube_bench(cmd, _input):
        seen["fs"] = dict(fake.fs)
        seen["cmd"] = cmd
        return CommandResult(cmd, 0, json.dumps(SAMPLE["m2"]).encode())
    fake = FakeTransport("w1", responses={r"^mktemp": CommandResult("mktemp", 0, d.encode() + b"\n"),
                                          r"kube-bench run": kube_bench})
    out, _ = bench.run_on_host(fake, ["node"], files, "rendered: config\n")
    assert bench.parse("w1", out)[0].counts["FAIL"] == 2
    fs = seen["fs"]
    assert fs[f"{d}/kube-bench"].mode == 0o755
    assert fs[f"{d}/cfg/config.yaml"].data == b"rendered: config\n"     # kdeploy's, not upstream's
    assert fs[f"{d}/cfg/{catalog.KUBE_BENCH_BENCHMARK}/node.yaml"].mode == 0o644
    assert "--targets node --benchmark cis-1.11" in seen["cmd"] and "--json" in seen["cmd"]
    assert f"--config-dir {d}/cfg --config {d}/cfg/config.yaml" in seen["cmd"]
    assert fake.commands[-1] == f"rm -rf -- {d}"


def test_run_on_host_removes_the_dir_when_kube_bench_fails(tmp_path):
    p = tmp_path / "kb"
    p.write_text("x")
    fake = FakeTransport("w1", responses={
        r"^mktemp": CommandResult("mktemp", 0, b"/tmp/kdeploy-cis.x1\n"),
        r"kube-bench run": CommandResult("kube-bench", 1, b"", b"unable to detect running programs")})
    with pytest.raises(Exception, match="kube-bench exited 1: unable to detect"):
        bench.run_on_host(fake, ["node"], {"kube-bench": p}, "c: 1\n")
    assert fake.commands[-1] == "rm -rf -- /tmp/kdeploy-cis.x1"


def test_cli_without_an_artifact_set_says_where_kube_bench_comes_from(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    p = subprocess.run([sys.executable, "-m", "kdeploy", "cis", "-i", str(inv)], capture_output=True,
                       text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                     "XDG_CACHE_HOME": str(tmp_path / "c")})
    assert p.returncode == ArtifactError.exit_code, p.stderr
    assert "needs an artifact set holding kube-bench" in p.stderr and "--artifacts DIR" in p.stderr
