"""Image refs from the artifact set in use (kdeploy.render.images) and what the rendered
files make of them: containerd's sandbox image, CoreDNS, the kubelet's preloaded-image
allowlist."""
from __future__ import annotations

import json
import tomllib
from types import SimpleNamespace

import yaml

from kdeploy.artifacts.catalog import built_image_refs, build_versions_for, versions_for
from kdeploy.model.load import load_inventory
from kdeploy.render import render_addons, render_host
from kdeploy.render.images import (Images, from_record, images_for, images_from_manifest,
                                   images_of_artifacts, images_of_dir, preloaded_allowlist,
                                   record_text, repository)

from .conftest import SAMPLES, load_sample

V = "1.37.2"
FILES = {f"images/{n}": {"sha256": "0" * 64, "size": 1}
         for n in ("pause.tar", "coredns.tar", "agnhost.tar")}


def built_set() -> dict:
    return {"kubernetesVersion": V, "files": dict(FILES),
            "images": built_image_refs(build_versions_for(V))}


def test_built_images_are_named_kdeploys_own_and_preloaded():
    im = images_from_manifest(V, built_set(), "x/manifest.json")
    assert (im.pause, im.coredns, im.agnhost) == ("kdeploy.invalid/pause:3.10.2",
                                                 "kdeploy.invalid/coredns:v1.14.6",
                                                 "kdeploy.invalid/agnhost:2.66.1")
    assert set(im.preloaded) == {im.pause, im.coredns, im.agnhost}
    assert im.coredns_version == "1.14.6" and im.source == "x/manifest.json"
    upstream = versions_for(V)
    assert not {upstream.pause_image, upstream.coredns_image, upstream.agnhost_image} & set(im.preloaded)


def test_official_downloads_keep_upstream_refs_and_preload_nothing():
    doc = {"kubernetesVersion": V, "files": {"bin/kubelet": {"sha256": "0" * 64, "size": 1}},
           "images": {}}
    im = images_from_manifest(V, doc)
    assert im == images_for(V)
    v = versions_for(V)
    assert (im.pause, im.coredns, im.agnhost, im.preloaded) == (
        v.pause_image, v.coredns_image, v.agnhost_image, ())


def test_a_set_from_before_the_manifest_named_refs_preloads_the_catalog_names():
    doc = built_set()
    del doc["images"]
    im = images_from_manifest(V, doc)
    v = versions_for(V)
    assert set(im.preloaded) == {v.pause_image, v.coredns_image, v.agnhost_image}


def test_a_set_with_only_some_archives_preloads_only_those():
    doc = built_set()
    del doc["files"]["images/agnhost.tar"]
    im = images_from_manifest(V, doc)
    assert im.agnhost == versions_for(V).agnhost_image          # pulled by the nodes
    assert im.agnhost not in im.preloaded and im.coredns in im.preloaded


def test_refs_from_a_directory_and_from_resolved_artifacts(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps(built_set()))
    assert images_of_dir(tmp_path).coredns == "kdeploy.invalid/coredns:v1.14.6"
    arts = [SimpleNamespace(name="kubelet", local_path=tmp_path / "bin" / "kubelet"),
            SimpleNamespace(name="coredns-image", local_path=tmp_path / "images" / "coredns.tar")]
    assert images_of_artifacts(V, arts) == images_of_dir(tmp_path, V)
    assert images_of_artifacts(V, arts[:1]) == images_for(V)   # official: binaries only


def test_allowlist_is_the_repositories_of_the_preloaded_images_plus_the_operators():
    im = images_from_manifest(V, built_set())
    # kdeploy's own registry as one prefix: matches tagged refs on kubelet 1.35 too
    assert preloaded_allowlist(im) == ["kdeploy.invalid/*"]
    old = built_set()
    del old["images"]                       # a set from before the rename: upstream's names
    assert preloaded_allowlist(images_from_manifest(V, old)) == [
        "registry.k8s.io/coredns/coredns", "registry.k8s.io/e2e-test-images/agnhost",
        "registry.k8s.io/pause"]
    assert preloaded_allowlist(images_for(V)) == []
    assert preloaded_allowlist(images_for(V), ("r.example.com/a/*", "r.example.com/b")) == [
        "r.example.com/a/*", "r.example.com/b"]
    assert repository("localhost:5000/a/b:1@sha256:" + "f" * 64) == "localhost:5000/a/b"
    assert repository("localhost:5000/a") == "localhost:5000/a"


def test_state_record_round_trip_only_for_its_version():
    im = images_from_manifest(V, built_set(), "m")
    assert from_record(record_text(im, V), V) == im
    assert from_record(record_text(im, V), "1.36.3") is None
    assert from_record("{not json", V) is None
    assert from_record(json.dumps({"kubernetesVersion": V, "pause": 1}), V) is None


def _files(res) -> dict[str, str]:
    return {f.path: f.content.decode() for f in res.files}


def test_rendered_files_name_the_sets_images_and_the_kubelet_allowlists_them():
    c = load_sample("cluster")
    im = images_from_manifest(c.version, built_set() | {"kubernetesVersion": c.version})
    w = next(h for h in c.hosts if h.has("worker"))
    fs = _files(render_host(c, w, im))
    toml = tomllib.loads(fs["/etc/containerd/config.toml"])
    assert toml["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == im.pause
    kc = yaml.safe_load(fs["/var/lib/kubelet/config.yaml"])
    assert kc["imagePullCredentialsVerificationPolicy"] == "NeverVerifyAllowlistedImages"
    assert kc["preloadedImagesVerificationAllowlist"] == preloaded_allowlist(im)
    dns = [d for f in render_addons(c, im) if f.path.endswith("10-coredns.yaml")
           for d in yaml.safe_load_all(f.content) if d and d["kind"] == "Deployment"][0]
    assert dns["spec"]["template"]["spec"]["containers"][0]["image"] == im.coredns


def test_without_preloaded_images_the_kubelet_keeps_its_default_policy():
    c = load_sample("cluster")
    kc = yaml.safe_load(_files(render_host(c, c.hosts[0]))["/var/lib/kubelet/config.yaml"])
    assert "imagePullCredentialsVerificationPolicy" not in kc
    assert "preloadedImagesVerificationAllowlist" not in kc


def test_operators_preloaded_images_alone_set_the_policy(tmp_path):
    inv = tmp_path / "c.yaml"
    inv.write_text((SAMPLES / "cluster.yaml").read_text().replace(
        "spec:\n", "spec:\n  kubelet:\n    preloadedImages: [registry.example.com/team/*]\n", 1))
    c, _ = load_inventory(inv)
    kc = yaml.safe_load(_files(render_host(c, c.hosts[0]))["/var/lib/kubelet/config.yaml"])
    assert kc["imagePullCredentialsVerificationPolicy"] == "NeverVerifyAllowlistedImages"
    assert kc["preloadedImagesVerificationAllowlist"] == ["registry.example.com/team/*"]
    im = images_from_manifest(c.version, built_set() | {"kubernetesVersion": c.version})
    kc = yaml.safe_load(_files(render_host(c, c.hosts[0], im))["/var/lib/kubelet/config.yaml"])
    assert kc["preloadedImagesVerificationAllowlist"] == sorted(
        preloaded_allowlist(im) + ["registry.example.com/team/*"])


def test_contexts_of_one_cluster_with_other_images_do_not_mix():
    c = load_sample("single-node")
    im = images_from_manifest(c.version, built_set() | {"kubernetesVersion": c.version})
    h = c.hosts[0]
    a, b = _files(render_host(c, h)), _files(render_host(c, h, im))
    assert "kdeploy.invalid" not in a["/etc/containerd/config.toml"]
    assert im.pause in b["/etc/containerd/config.toml"]
    assert _files(render_host(c, h)) == a
    assert isinstance(im, Images) and hash(im) == hash(Images(**{**im.__dict__}))


def test_eviction_thresholds_reach_the_kubelet_config_only_when_set():
    """The lab's machines share one disk: its inventory replaces the kubelet's percentage
    thresholds (which every node would cross at once) with small absolute ones."""
    c = load_sample("cluster")
    kc = yaml.safe_load(_files(render_host(c, c.hosts[0]))["/var/lib/kubelet/config.yaml"])
    assert "evictionHard" not in kc
    c2 = c.model_copy(update={"spec": c.spec.model_copy(update={"kubelet": c.spec.kubelet.model_copy(
        update={"eviction_hard": {"imagefs.available": "1Gi", "memory.available": "100Mi"}})})})
    kc = yaml.safe_load(_files(render_host(c2, c2.hosts[0]))["/var/lib/kubelet/config.yaml"])
    assert kc["evictionHard"] == {"imagefs.available": "1Gi", "memory.available": "100Mi"}
