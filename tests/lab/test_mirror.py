"""A first run as an air-gapped site does it (lab `mir`, 1 control plane + 1 worker): no
--artifacts; the deployer and the nodes reach only a web server inside the lab's network that
serves the official download URLs (kubespray's files_repo layout), filled from the locally built
artifact set repackaged the way upstream publishes it (bare Kubernetes binaries with .sha256
files; etcd, containerd, CNI plugins and crictl tarballs with their checksum files; runc;
Debian's nginx packages). The images come from an image directory (spec.artifacts.images).

1. `kdeploy up --mirror URL` deploys a verified cluster; every sum kdeploy does not pin is read
   from the mirror's checksum files and locked in the state dir.
2. A file replaced on the mirror (its checksum file too, as an attacker would) is refused by a
   fresh deployer (empty download cache) holding the lock: a clear error, nothing installed.
3. With the mirror restored, the fresh deployer converges to nothing to do.
4. A registry mirror that needs credentials (spec.containerRuntime.registryMirrors): a pod
   naming an image of registry.k8s.io that no node has is pulled through the mirror with the
   credentials (hosts.toml 0600 on the nodes; the password never in kdeploy's output).

Needs: root + systemd-nspawn + debootstrap, and KDEPLOY_ARTIFACTS (a built artifact directory).
"""
from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from kdeploy.artifacts import catalog
from kdeploy.artifacts.fetch import add_sum, layout_path
from kdeploy.artifacts.layout import cache_root, read_manifest
from kdeploy.artifacts.update import release_key
from kdeploy.lab.state import LabState
from tests.lab.conftest import LabCluster, module_lab
from tests.lab.test_up import artifacts_dir, events

pytestmark = pytest.mark.lab

LAB = "mir"
PORT = 8089


def _deb(asset: str, tmp: Path) -> Path:
    """Debian's real package (its sha256 is pinned): the one the artifact build downloaded,
    else apt-get download."""
    for p in glob.glob(str(cache_root() / "build-src" / "*" / "*" / asset)):
        return Path(p)
    pkg, ver = asset.split("_")[0], asset.split("_")[1]
    subprocess.run(["apt-get", "download", f"{pkg}={ver}"], cwd=tmp, check=True,
                   capture_output=True)
    return tmp / asset


def official_layout(art: Path, www: Path, tmp: Path) -> None:
    """The files of the built set as upstream publishes them, under their URL paths."""
    v = catalog.versions_for(read_manifest(art)["kubernetesVersion"])
    for r in catalog.releases(v, "amd64"):
        dest = www / layout_path(r.url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if r.asset.endswith(".deb"):
            shutil.copyfile(_deb(r.asset, tmp), dest)
        elif all(m == "" for m in r.members.values()):
            shutil.copyfile(art / next(iter(r.members)), dest)
        else:
            with tarfile.open(dest, "w:gz") as tf:
                for rel, member in r.members.items():
                    tf.add(art / rel, arcname=member)
        if r.sha256_url:
            add_sum(www / layout_path(r.sha256_url), r, hashlib.sha256(dest.read_bytes()).hexdigest())
        else:
            assert catalog_pinned(r), f"{r.asset} has no pinned sum: the test cannot serve it"


def catalog_pinned(r) -> bool:
    from kdeploy.artifacts._checksums import CHECKSUMS
    return bool(CHECKSUMS.get(release_key(r)))


@pytest.fixture(scope="module")
def mir(tmp_path_factory):
    art = artifacts_dir()
    tmp = tmp_path_factory.mktemp(f"{LAB}-files")
    www = tmp / "www"
    official_layout(art, www, tmp)
    labs = module_lab(LAB, tmp_path_factory)
    lab, _ = next(labs)
    srv = None
    try:
        doc = yaml.safe_load(lab.inventory.read_text())
        doc.setdefault("spec", {}).setdefault("artifacts", {})["images"] = str(art / "images")
        lab.inventory.write_text(yaml.safe_dump(doc))
        gw = LabState(LAB).load().gateway
        # the mirror: a plain web server inside the lab's network (reachable by nothing else)
        srv = subprocess.Popen(["ip", "netns", "exec", lab.netns, sys.executable, "-m",
                                "http.server", str(PORT), "--bind", gw, "--directory", str(www)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield lab, art, www, tmp, f"http://{gw}:{PORT}/"
    finally:
        if srv:
            srv.terminate()
            srv.wait(timeout=10)
        labs.close()  # module_lab takes the lab down


def deployer(lab: LabCluster, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """kdeploy run from inside the lab's network (an air-gapped site's deployer), with its own
    download cache."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(["ip", "netns", "exec", lab.netns, sys.executable, "-m", "kdeploy", *args],
                          capture_output=True, text=True, timeout=900, env=env)


def host_sha(lab: LabCluster, machine: str, path: str) -> str:
    rc, out, err = lab.run(machine, f"sha256sum {path}")
    assert rc == 0, err
    return out.split()[0]


def test_up_from_a_mirror_locks_sums_and_refuses_a_replaced_file(mir):
    lab, art, www, tmp, url = mir
    worker = lab.machines[-1]["name"]
    t = time.monotonic()
    p = deployer(lab, tmp / "cache-a", "up", "-i", str(lab.inventory), "--mirror", url, "--json")
    first = time.monotonic() - t
    assert p.returncode == 0, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    checks = [e for e in events(p.stdout) if e.get("event") == "check"]
    assert checks and all(c["ok"] for c in checks), checks
    lock_files = list(lab.inventory.parent.glob(".kdeploy/*/artifacts.lock.json"))
    assert len(lock_files) == 1, lock_files
    locked = json.loads(lock_files[0].read_text())["files"]
    kp = "kubernetes/1.37.2/amd64/kube-proxy"
    assert locked[kp]["source"] == f"{url}dl.k8s.io/release/v1.37.2/bin/linux/amd64/kube-proxy.sha256"
    assert any(e["source"] == "pinned" for e in locked.values())  # Debian's nginx packages
    assert host_sha(lab, worker, "/usr/local/bin/kube-proxy") == \
        hashlib.sha256((art / "bin/kube-proxy").read_bytes()).hexdigest()
    print(f"\nup from the mirror: {first:.1f}s, {len(locked)} sums locked")

    # 2. the mirror now serves another kube-proxy, with a matching .sha256 beside it
    r = next(r for r in catalog.releases(catalog.versions_for("1.37.2"), "amd64") if r.asset == "kube-proxy")
    f = www / layout_path(r.url)
    good = f.read_bytes()
    evil = good[:-64] + b"\0" * 64
    f.write_bytes(evil)
    (www / layout_path(r.sha256_url)).write_text(hashlib.sha256(evil).hexdigest() + "\n")
    before = host_sha(lab, worker, "/usr/local/bin/kube-proxy")
    p = deployer(lab, tmp / "cache-b", "up", "-i", str(lab.inventory), "--mirror", url, "--json")
    assert p.returncode == 5, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "checksum mismatch" in p.stderr and "kube-proxy" in p.stderr
    assert "artifacts.lock.json" in p.stderr and "Traceback" not in p.stderr
    assert not [e for e in events(p.stdout) if e.get("event") in ("apply", "change", "step")]
    assert host_sha(lab, worker, "/usr/local/bin/kube-proxy") == before
    assert json.loads(lock_files[0].read_text())["files"][kp] == locked[kp]  # never re-locked

    # 3. restored: the fresh deployer has nothing to do
    f.write_bytes(good)
    (www / layout_path(r.sha256_url)).write_text(hashlib.sha256(good).hexdigest() + "\n")
    t = time.monotonic()
    p = deployer(lab, tmp / "cache-b", "up", "-i", str(lab.inventory), "--mirror", url, "--json",
                 "--no-verify")
    assert p.returncode == 0, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert any(e.get("event") == "no-changes" for e in events(p.stdout)), p.stdout[-2000:]
    print(f"fresh deployer, restored mirror: {time.monotonic() - t:.1f}s, no changes")


def busybox_oci(tmp: Path, ref: str) -> Path:
    from kdeploy.artifacts.oci import ImageFile, ImageSpec, write_image_archive
    from tests.lab.conftest import debian_debs
    (deb,) = debian_debs(("busybox-static",))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "bb")], check=True)
    out = tmp / "busybox-oci.tar"
    write_image_archive(ImageSpec(ref, [ImageFile(tmp / "bb/bin/busybox", "/bin/busybox")],
                                  entrypoint=["/bin/busybox"], cmd=["sleep", "3600"]), out)
    return out


def test_registry_mirror_with_credentials(mir):
    lab, art, www, tmp, url = mir
    worker = lab.machines[-1]["name"]
    cp = lab.machines[0]["name"]
    gw = LabState(LAB).load().gateway
    image = "registry.k8s.io/kdeploy-lab/busybox:1.0"
    archive = busybox_oci(tmp, image)
    pw = tmp / "registry-password"
    pw.write_text("lab-s3cret\n")
    pw.chmod(0o600)
    log = tmp / "registry.log"
    srv = subprocess.Popen(["ip", "netns", "exec", lab.netns, sys.executable, "-m", "tests.lab.registry",
                            "--bind", gw, "--port", "5000", "--user", "puller", "--password-file", str(pw),
                            "--log", str(log), f"kdeploy-lab/busybox:1.0={archive}"],
                           cwd=Path(__file__).resolve().parents[2],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        doc = yaml.safe_load(lab.inventory.read_text())
        doc["spec"].setdefault("containerRuntime", {})["registryMirrors"] = [{
            "registry": "registry.k8s.io", "endpoints": [f"http://{gw}:5000"],
            "auth": {"username": "puller", "passwordFile": str(pw)}}]
        lab.inventory.write_text(yaml.safe_dump(doc))
        p = deployer(lab, tmp / "cache-b", "up", "-i", str(lab.inventory), "--mirror", url, "--json",
                     "--no-verify")
        assert p.returncode == 0, f"rc={p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        token = base64.b64encode(b"puller:lab-s3cret").decode()
        for text in (p.stdout, p.stderr):
            assert "lab-s3cret" not in text and token not in text
        rc, out, _ = lab.run(worker, "stat -c '%a %U' /etc/containerd/certs.d/registry.k8s.io/hosts.toml")
        assert out.split() == ["600", "root"], out
        pod = json.dumps({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": "from-mirror", "namespace": "default"},
                          "spec": {"nodeName": worker, "containers": [
                              {"name": "c", "image": image, "imagePullPolicy": "Always"}]}})
        kubectl = "kubectl --kubeconfig=/etc/kubernetes/admin.conf"
        rc, out, err = lab.run(cp, f"echo '{pod}' | {kubectl} apply -f -")
        assert rc == 0, err
        phase = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and phase != "Running":
            time.sleep(2)
            _, phase, _ = lab.run(cp, f"{kubectl} -n default get pod from-mirror -o jsonpath='{{.status.phase}}'")
        _, desc, _ = lab.run(cp, f"{kubectl} -n default describe pod from-mirror | tail -8")
        assert phase == "Running", desc
        reqs = [json.loads(ln) for ln in log.read_text().splitlines()]
        pulled = [r for r in reqs if r["path"].startswith("/v2/kdeploy-lab/busybox/") and r["authorized"]]
        assert any("/manifests/" in r["path"] for r in pulled) and any("/blobs/" in r["path"] for r in pulled)
        print(f"\npulled through the registry mirror: {len(pulled)} authorized requests")
        # the hosts.toml is stable: a re-run changes nothing
        p = deployer(lab, tmp / "cache-b", "up", "-i", str(lab.inventory), "--mirror", url, "--json",
                     "--no-verify")
        assert p.returncode == 0 and any(e.get("event") == "no-changes" for e in events(p.stdout)), \
            p.stdout[-2000:]
    finally:
        srv.terminate()
        srv.wait(timeout=10)
