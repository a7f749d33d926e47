import pytest

from kdeploy.artifacts import (SUPPORTED_MINORS, ComponentVersions, check_kubernetes_version,
                               versions_for)
from kdeploy.artifacts import catalog
from kdeploy.artifacts._checksums import CHECKSUMS
from kdeploy.artifacts.update import release_key
from kdeploy.errors import KdeployError


def test_supported_minors():
    assert SUPPORTED_MINORS == ("1.35", "1.36", "1.37")


@pytest.mark.parametrize("v", ["1.35.4", "1.36.3", "1.37.2", "v1.37.2", "1.37", "1.36.0"])
def test_supported_versions_pass(v):
    check_kubernetes_version(v)


@pytest.mark.parametrize("v,msg", [("1.34.2", "not supported"), ("1.38.0", "not supported"),
                                   ("2.0.0", "not supported"), ("latest", "not a Kubernetes version"),
                                   ("1.37.2-rc.1", "not a Kubernetes version"), ("", "not a Kubernetes")])
def test_unsupported_versions_raise_with_hint(v, msg):
    with pytest.raises(KdeployError) as e:
        check_kubernetes_version(v)
    assert msg in e.value.message
    assert "1.35, 1.36, 1.37" in e.value.hint


def test_versions_for_137_pairs_etcd_37_and_kubeadm_images():
    v = versions_for("1.37.2")
    assert isinstance(v, ComponentVersions)
    assert (v.kubernetes, v.etcd, v.crictl) == ("1.37.2", "3.7.0", "1.37.0")
    assert v.pause_image == "registry.k8s.io/pause:3.10.2"
    assert v.coredns_image == "registry.k8s.io/coredns/coredns:v1.14.6"
    assert v.agnhost_image == "registry.k8s.io/e2e-test-images/agnhost:2.66.1"


def test_versions_for_136_matches_kubespray_pins():
    v = versions_for("1.36")
    assert v.kubernetes == "1.36.3"
    assert (v.etcd, v.containerd, v.runc, v.cni_plugins, v.crictl, v.pause, v.coredns) == \
        ("3.6.14", "2.3.4", "1.4.3", "1.9.1", "1.36.0", "3.10.2", "1.14.2")


def test_other_patch_keeps_minor_pins():
    v = versions_for("1.36.1")
    assert v.kubernetes == "1.36.1" and v.etcd == versions_for("1.36.3").etcd


def test_build_overrides_only_where_module_missing():
    assert catalog.build_versions_for("1.36.3").crictl == "1.37.0"
    assert catalog.build_versions_for("1.37.2") == versions_for("1.37.2")


def test_url_templates_amd64():
    v = versions_for("1.37.2")
    urls = {r.component + ":" + r.asset: r for r in catalog.releases(v, "amd64")}
    assert urls["kubernetes:kube-apiserver"].url == \
        "https://dl.k8s.io/release/v1.37.2/bin/linux/amd64/kube-apiserver"
    assert urls["kubernetes:kube-apiserver"].sha256_url.endswith("/kube-apiserver.sha256")
    etcd = urls["etcd:etcd-v3.7.0-linux-amd64.tar.gz"]
    assert etcd.url == ("https://github.com/etcd-io/etcd/releases/download/v3.7.0/"
                        "etcd-v3.7.0-linux-amd64.tar.gz")
    assert etcd.members["bin/etcdctl"] == "etcd-v3.7.0-linux-amd64/etcdctl"
    assert urls["containerd:containerd-2.3.7-linux-amd64.tar.gz"].url == (
        "https://github.com/containerd/containerd/releases/download/v2.3.7/"
        "containerd-2.3.7-linux-amd64.tar.gz")
    assert urls["runc:runc.amd64"].url == \
        "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64"
    assert urls["cni-plugins:cni-plugins-linux-amd64-v1.9.1.tgz"].url == (
        "https://github.com/containernetworking/plugins/releases/download/v1.9.1/"
        "cni-plugins-linux-amd64-v1.9.1.tgz")
    assert urls["crictl:crictl-v1.37.0-linux-amd64.tar.gz"].url == (
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.37.0/"
        "crictl-v1.37.0-linux-amd64.tar.gz")


def test_arm64_urls_and_bad_arch():
    v = versions_for("1.37.2")
    assert all("arm64" in r.url for r in catalog.releases(v, "arm64"))
    with pytest.raises(KdeployError, match="architecture 'riscv64'"):
        catalog.releases(v, "riscv64")


def test_every_pinned_download_has_a_checksum_entry_and_known_ones_are_hex():
    keys = {release_key(r) for r in catalog.all_releases()}
    assert keys == set(CHECKSUMS)
    for k, sha in CHECKSUMS.items():
        assert sha is None or (len(sha) == 64 and int(sha, 16) >= 0), k


def test_etcdutl_ships_with_etcd():
    specs = {s.name: s for s in catalog.file_specs()}
    assert specs["etcdutl"].relpath == "bin/etcdutl"
    assert specs["etcdutl"].install_path == "/usr/local/bin/etcdutl"
    assert specs["etcdutl"].roles == {"etcd"} and specs["etcdutl"].component == "etcd"
    etcd = next(r for r in catalog.releases(versions_for("1.36.3"), "arm64") if r.component == "etcd")
    assert etcd.members["bin/etcdutl"] == "etcd-v3.6.14-linux-arm64/etcdutl"


@pytest.mark.parametrize("minor", SUPPORTED_MINORS)
def test_nginx_pinned_for_every_minor(minor):
    v = versions_for(minor)
    assert v.nginx == "1.22.1-9+deb12u11" and v.as_dict()["nginx"] == v.nginx
    assert catalog.build_versions_for(minor).nginx == v.nginx


def test_api_lb_file_specs_and_constants():
    assert catalog.NGINX_BIN == "/usr/local/lib/kdeploy/nginx/nginx"
    assert catalog.NGINX_STREAM_MODULE == "/usr/local/lib/kdeploy/nginx/ngx_stream_module.so"
    specs = {s.name: s for s in catalog.file_specs()}
    ng, mod = specs["nginx"], specs["ngx_stream_module"]
    assert (ng.component, ng.relpath, ng.install_path, ng.mode) == \
        ("api-lb", "bin/nginx", catalog.NGINX_BIN, 0o755)
    assert (mod.component, mod.relpath, mod.install_path, mod.mode) == \
        ("api-lb", "lib/ngx_stream_module.so", catalog.NGINX_STREAM_MODULE, 0o644)
    assert ng.roles == mod.roles == catalog.ALL_ROLES
    assert catalog.component_version(versions_for("1.35"), "api-lb") == "1.22.1-9+deb12u11"


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_api_lb_debs_from_debian_security_pool(arch):
    rs = [r for r in catalog.releases(versions_for("1.37.2"), arch) if r.component == "api-lb"]
    pool = "https://deb.debian.org/debian-security/pool/updates/main/n/nginx"
    assert {r.url: r.members for r in rs} == {
        f"{pool}/nginx_1.22.1-9+deb12u11_{arch}.deb": {"bin/nginx": "usr/sbin/nginx"},
        f"{pool}/libnginx-mod-stream_1.22.1-9+deb12u11_{arch}.deb":
            {"lib/ngx_stream_module.so": "usr/lib/nginx/modules/ngx_stream_module.so"},
    }
    assert all(r.sha256_url == "" and r.url.endswith("/" + r.asset) for r in rs)


def test_api_lb_amd64_sums_pinned():
    assert CHECKSUMS["api-lb/1.22.1-9+deb12u11/amd64/nginx_1.22.1-9+deb12u11_amd64.deb"] == \
        "4e2778e675c07d0f2d8d3b6f5ff84f6483ade1d82c21c910eb9a2787e1cf1b1a"
    assert CHECKSUMS["api-lb/1.22.1-9+deb12u11/amd64/libnginx-mod-stream_1.22.1-9+deb12u11_amd64.deb"] == \
        "952570771815046276e19fc1e062ae82b4498cede0e87a7f53915a6b52705d9e"


def test_file_specs_install_paths_modes_roles():
    specs = {s.name: s for s in catalog.file_specs()}
    assert specs["kube-apiserver"].install_path == "/usr/local/bin/kube-apiserver"
    assert specs["kube-apiserver"].roles == {"control-plane"}
    assert specs["etcd"].roles == {"etcd"}
    assert specs["kubelet"].roles == {"worker"}
    assert specs["bridge"].install_path == "/opt/cni/bin/bridge"
    assert specs["runc"].install_path == "/usr/local/sbin/runc"
    assert specs["pause-image"].install_path == "/var/lib/kdeploy/images/pause.tar"
    assert specs["pause-image"].mode == 0o644 and specs["kubelet"].mode == 0o755
    # every binary of the official releases lands somewhere in the layout
    rels = {rel for r in catalog.releases(versions_for("1.37.2"), "amd64") for rel in r.members}
    assert rels == {s.relpath for s in catalog.file_specs(images=False)}


def test_built_images_never_carry_upstream_names():
    """Images kdeploy builds from source differ from upstream's: they get kdeploy's own
    registry, which never resolves (RFC 6761 .invalid), with upstream's version tags."""
    for minor in catalog.SUPPORTED_MINORS:
        v = catalog.build_versions_for(minor)
        refs = catalog.built_image_refs(v)
        assert set(refs) == {f"images/{f}" for f, _, _ in catalog.IMAGES.values()}
        upstream = {getattr(v, attr) for _, _, attr in catalog.IMAGES.values()}
        assert not set(refs.values()) & upstream
        assert all(r.startswith(catalog.BUILT_IMAGE_REGISTRY + "/") for r in refs.values())
        assert catalog.BUILT_IMAGE_REGISTRY.endswith(".invalid")
        assert refs["images/coredns.tar"].endswith(f":v{v.coredns}")
