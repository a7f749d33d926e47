"""run.prepare's image refs: from the artifact set in use, recorded in the state dir for the
verbs that run without one (verify, certs, a plan without --artifacts)."""
import json
import shutil
from types import SimpleNamespace

from kdeploy.artifacts.catalog import build_versions_for, built_image_refs
from kdeploy.execute import run
from kdeploy.model import load_inventory
from kdeploy.render.images import images_for
from tests.conftest import SAMPLES


def offline_set(root, version):
    (root / "images").mkdir(parents=True)
    files = {f"images/{n}": {"sha256": "0" * 64, "size": 1}
             for n in ("pause.tar", "coredns.tar", "agnhost.tar")}
    (root / "manifest.json").write_text(json.dumps({
        "kubernetesVersion": version, "files": files,
        "images": built_image_refs(build_versions_for(version))}))
    return [SimpleNamespace(name=f"{n}-image", local_path=root / "images" / f"{n}.tar")
            for n in ("pause", "coredns", "agnhost")]


def sandbox_of(dep):
    conf = next(f for f in dep.desired[dep.cluster.hosts[0].name].files
                if f.path == "/etc/containerd/config.toml")
    return conf.content.decode()


def test_images_of_the_set_in_use_are_recorded_once_applied_and_used_without_artifacts(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    state = run.state_dir_for(cluster)
    arts = offline_set(tmp_path / "set", cluster.version)

    im = run.images_in_use(cluster, state, arts)
    assert im.pause.startswith("kdeploy.invalid/")
    dep = run.Deployment(cluster, state, None, arts, {}, images=im, images_from_set=True)
    # nothing is recorded by preparing alone (a run refused later must not leave a record) ...
    assert not (state / run.IMAGES_RECORD).exists()
    run.record_images(dep)          # ... but once the hosts have the set's images
    rec = state / run.IMAGES_RECORD
    assert rec.stat().st_mode & 0o777 == 0o600
    # a verb without artifacts (verify, certs renew) renders what the nodes have
    dep = run.prepare(cluster, need_artifacts=False, write_state=False)
    assert dep.images == im and im.pause in sandbox_of(dep) and not dep.images_from_set
    run.record_images(dep)          # no set: the record stays
    assert run.images_in_use(cluster, state, None) == im
    # the official downloads (a resolved set without images): upstream's refs
    official = run.images_in_use(cluster, state, [])
    assert official == images_for(cluster.version)
    run.record_images(run.Deployment(cluster, state, None, [], {}, images=official,
                                     images_from_set=True))
    dep = run.prepare(cluster, need_artifacts=False)
    assert dep.images == official and "registry.k8s.io/pause" in sandbox_of(dep)


def test_a_refused_run_with_another_versions_set_leaves_the_record(tmp_path):
    """The downgrade attempt of the upgrade test: prepared with the old version's set, refused
    at preflight; the next verify (current version) must still name the nodes' images."""
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    state = run.state_dir_for(cluster)
    im = run.images_in_use(cluster, state, offline_set(tmp_path / "set", cluster.version))
    run.record_images(run.Deployment(cluster, state, None, [], {}, images=im, images_from_set=True))
    old = cluster.model_copy(update={"spec": cluster.spec.model_copy(update={
        "kubernetes": cluster.spec.kubernetes.model_copy(update={"version": "1.36.3"})})})
    run.images_in_use(old, state, offline_set(tmp_path / "old", "1.36.3"))   # prepare: no write
    assert run.images_in_use(cluster, state, None) == im


def test_a_record_of_another_version_or_a_broken_one_is_ignored(tmp_path):
    inv = tmp_path / "cluster.yaml"
    shutil.copy(SAMPLES / "cluster.yaml", inv)
    cluster, _ = load_inventory(inv)
    state = run.state_dir_for(cluster)
    state.mkdir(parents=True)
    (state / run.IMAGES_RECORD).write_text(json.dumps({"kubernetesVersion": "1.36.3",
                                                       "pause": "x"}))
    assert run.images_in_use(cluster, state, None) == images_for(cluster.version)
    (state / run.IMAGES_RECORD).write_text("garbage")
    assert run.images_in_use(cluster, state, None) == images_for(cluster.version)
