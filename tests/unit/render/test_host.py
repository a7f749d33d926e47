"""render_host/render_addons on the three sample inventories."""
from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest
import yaml

from kdeploy.model.load import load_inventory
from kdeploy.pki import paths
from kdeploy.plan.resources import PHASES
from kdeploy.render import render_addons, render_all, render_host
from kdeploy.render.labels import kubelet_may_set, split_labels

from .conftest import SAMPLE_NAMES, load_sample

YAML_KINDS = {
    "/var/lib/kubelet/config.yaml": ("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"),
    "/var/lib/kube-proxy/config.yaml": ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"),
    "/etc/kubernetes/kube-scheduler.yaml": ("kubescheduler.config.k8s.io/v1", "KubeSchedulerConfiguration"),
    "/etc/kubernetes/audit-policy.yaml": ("audit.k8s.io/v1", "Policy"),
}


def files(res) -> dict[str, str]:
    return {f.path: f.content.decode() for f in res.files}


def flags(unit: str) -> dict[str, str]:
    """--flag=value pairs of the ExecStart of a unit file."""
    m = re.search(r"^ExecStart=(.*?)(?<!\\)\n", unit, re.M | re.S)
    assert m, unit
    out = {}
    for tok in m.group(1).replace("\\\n", " ").split():
        if tok.startswith("--"):
            k, _, v = tok[2:].partition("=")
            out[k] = v
    return out


def all_rendered():
    for name in SAMPLE_NAMES:
        c = load_sample(name)
        for h in c.hosts:
            yield name, c, h, render_host(c, h)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_yaml_configs_parse_with_api_version_and_kind(name):
    c = load_sample(name)
    for h in c.hosts:
        fs = files(render_host(c, h))
        for path, (api, kind) in YAML_KINDS.items():
            if path not in fs:
                assert not h.has("control-plane") and path.startswith("/etc/kubernetes/")
                continue
            doc = yaml.safe_load(fs[path])
            assert (doc["apiVersion"], doc["kind"]) == (api, kind), path
        toml = tomllib.loads(fs["/etc/containerd/config.toml"])
        assert toml["version"] == 3
        cri_rt = toml["plugins"]["io.containerd.cri.v1.runtime"]
        runc = cri_rt["containerd"]["runtimes"]["runc"]["options"]
        assert runc["SystemdCgroup"] is (c.spec.container_runtime.cgroup_driver == "systemd")
        assert cri_rt["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}
        sandbox = toml["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
        assert sandbox.startswith("registry.k8s.io/pause:3.10")
        crictl = yaml.safe_load(fs["/etc/crictl.yaml"])
        assert crictl["runtime-endpoint"] == "unix:///run/containerd/containerd.sock"


@pytest.mark.parametrize("fail_v1", [True, False])
def test_kubelet_config_security_and_fail_cgroup_v1(write_inv, fail_v1):
    inv = write_inv(f"""
apiVersion: kdeploy.io/v1alpha1
kind: Cluster
spec:
  kubelet: {{failCgroupV1: {str(fail_v1).lower()}}}
  containerRuntime: {{cgroupDriver: cgroupfs}}
hosts:
  - {{name: n1, address: 192.0.2.10, roles: [control-plane, etcd, worker]}}
""")
    c, _ = load_inventory(inv)
    fs = files(render_host(c, c.hosts[0]))
    kc = yaml.safe_load(fs["/var/lib/kubelet/config.yaml"])
    assert kc["authentication"]["anonymous"]["enabled"] is False
    assert kc["authentication"]["webhook"]["enabled"] is True
    assert kc["authentication"]["x509"]["clientCAFile"] == paths.CA_CRT
    assert kc["authorization"]["mode"] == "Webhook"
    assert kc["failCgroupV1"] is fail_v1
    assert kc["cgroupDriver"] == "cgroupfs"
    assert kc["readOnlyPort"] == 0 and kc["rotateCertificates"] is True
    assert kc["tlsCertFile"] == paths.KUBELET_SERVING_CRT
    assert kc["tlsPrivateKeyFile"] == paths.KUBELET_SERVING_KEY
    assert kc["clusterDNS"] == [c.dns_service_ip]
    assert kc["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    assert "registerWithTaints" not in kc            # control plane that is also a worker
    toml = tomllib.loads(fs["/etc/containerd/config.toml"])
    assert toml["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"][
        "options"]["SystemdCgroup"] is False


def test_kubelet_defaults_on_samples():
    for _, c, h, res in all_rendered():
        fs = files(res)
        kc = yaml.safe_load(fs["/var/lib/kubelet/config.yaml"])
        assert kc["failCgroupV1"] is True       # the samples keep the upstream default
        assert kc["maxPods"] == c.spec.kubelet.max_pods
        f = flags(fs["/etc/systemd/system/kubelet.service"])
        assert f["kubeconfig"] == paths.KUBELET_CONF
        assert f["hostname-override"] == h.name
        assert f["node-ip"] == h.address
        assert "register-with-taints" not in f   # a config field since long; the flag is deprecated
        assert "container-runtime-endpoint" not in f
        taints = kc.get("registerWithTaints", [])
        if h.has("control-plane") and not h.has("worker"):
            assert taints == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
            assert res.extra["api_labels"] == {"node-role.kubernetes.io/control-plane": ""}
        else:
            assert taints == []
        assert "node-labels" not in f or "node-role.kubernetes.io" not in f["node-labels"]


def test_apiserver_flags():
    for _, c, h, res in all_rendered():
        fs = files(res)
        unit = fs.get("/etc/systemd/system/kube-apiserver.service")
        if not h.has("control-plane"):
            assert unit is None
            continue
        f = flags(unit)
        assert f["authorization-mode"] == "Node,RBAC"
        assert f["anonymous-auth"] == "false"
        assert f["profiling"] == "false"
        assert f["encryption-provider-config"] == paths.ENCRYPTION_CONFIG
        assert f["audit-policy-file"] == "/etc/kubernetes/audit-policy.yaml"
        assert f["audit-log-path"] and f["audit-log-maxbackup"] and f["audit-log-maxsize"]
        assert f["enable-admission-plugins"] == "NodeRestriction,PodSecurity,DenyServiceExternalIPs"
        assert f["advertise-address"] == h.address
        assert f["service-cluster-ip-range"] == c.spec.network.service_cidr
        assert f["service-account-issuer"] == "https://kubernetes.default.svc.cluster.local"
        assert f["etcd-servers"].split(",") == [f"https://{e.address}:2379" for e in c.etcd]
        assert f["etcd-certfile"] == paths.APISERVER_ETCD_CLIENT_CRT
        assert f["etcd-cafile"] == paths.ETCD_CA_CRT
        assert f["kubelet-client-certificate"] == paths.APISERVER_KUBELET_CLIENT_CRT
        assert f["requestheader-client-ca-file"] == paths.FRONT_PROXY_CA_CRT
        assert f["tls-cert-file"] == paths.APISERVER_CRT
        # the audit policy the flag names is rendered and restarts the apiserver
        audit = next(x for x in res.files if x.path == f["audit-policy-file"])
        assert audit.restarts == ("kube-apiserver",)


def test_controller_manager_and_scheduler_local_with_leader_election():
    for _, c, h, res in all_rendered():
        fs = files(res)
        if not h.has("control-plane"):
            continue
        cm = flags(fs["/etc/systemd/system/kube-controller-manager.service"])
        assert cm["bind-address"] == "127.0.0.1"
        assert cm["leader-elect"] == "true" and cm["profiling"] == "false"
        assert cm["allocate-node-cidrs"] == "false"
        assert cm["cluster-cidr"] == c.spec.network.pod_cidr
        assert cm["kubeconfig"] == paths.CONTROLLER_MANAGER_CONF
        assert cm["use-service-account-credentials"] == "true"
        assert cm["cluster-signing-key-file"] == paths.CA_KEY
        sch = flags(fs["/etc/systemd/system/kube-scheduler.service"])
        assert sch["bind-address"] == "127.0.0.1"
        cfg = yaml.safe_load(fs[sch["config"]])
        assert cfg["leaderElection"]["leaderElect"] is True
        assert cfg["enableProfiling"] is False
        assert cfg["clientConnection"]["kubeconfig"] == paths.SCHEDULER_CONF


def test_etcd_flags():
    for _, c, h, res in all_rendered():
        fs = files(res)
        unit = fs.get("/etc/systemd/system/etcd.service")
        if not h.has("etcd"):
            assert unit is None
            continue
        f = flags(unit)
        assert f["client-cert-auth"] == "true" and f["peer-client-cert-auth"] == "true"
        assert f["trusted-ca-file"] == f["peer-trusted-ca-file"] == paths.ETCD_CA_CRT
        assert f["listen-client-urls"] == f"https://{h.address}:2379,https://127.0.0.1:2379"
        # the member list is not on the command line: a grown or shrunk cluster never
        # restarts a running member; a new cluster's members read it from the bootstrap file
        assert "initial-cluster" not in f and "initial-cluster-state" not in f
        boot = dict(line.split("=", 1) for line in fs["/etc/kubernetes/etcd-bootstrap.env"].splitlines()
                    if line and not line.startswith("#"))
        assert boot["ETCD_INITIAL_CLUSTER"].split(",") == [f"{e.name}=https://{e.address}:2380"
                                                          for e in c.etcd]
        assert boot["ETCD_INITIAL_CLUSTER_STATE"] == "new"
        assert "EnvironmentFile=-/etc/kubernetes/etcd-bootstrap.env" in unit
        assert f["data-dir"] == "/var/lib/etcd"
        assert all(v.startswith("https://") for k, v in f.items() if k.endswith("-urls")
                   and k != "listen-metrics-urls")


def test_cni_has_this_nodes_pod_cidr_and_routes_cover_every_other_node():
    for _, c, h, res in all_rendered():
        fs = files(res)
        conf = json.loads(fs["/etc/cni/net.d/10-kdeploy.conflist"])
        bridge = conf["plugins"][0]
        # no masquerading by the bridge plugin: pod-to-pod across nodes keeps the pod's IP;
        # only traffic leaving the cluster's pod network is masqueraded (pod-routes unit)
        assert bridge["type"] == "bridge" and bridge["isGateway"] and bridge["ipMasq"] is False
        assert bridge["hairpinMode"] is True
        assert bridge["ipam"]["ranges"] == [[{"subnet": c.node_pod_cidrs[h.name]}]]
        assert {p["type"] for p in conf["plugins"]} == {"bridge", "portmap"}
        unit = fs["/etc/systemd/system/kdeploy-pod-routes.service"]
        assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
        assert re.findall(r"^ExecStart=(.*)$", unit, re.M) == ["/bin/sh /usr/local/lib/kdeploy/pod-routes.sh"]
        script = fs["/usr/local/lib/kdeploy/pod-routes.sh"]
        routes = re.findall(r"^/usr/sbin/ip route replace (\S+) via (\S+) proto 77$", script, re.M)
        expected = [(c.node_pod_cidrs[o.name], o.address) for o in c.hosts if o.name != h.name]
        assert routes == expected
        masq = f"-s {c.node_pod_cidrs[h.name]} ! -d {c.spec.network.pod_cidr} "
        assert f"iptables -w -t nat -C POSTROUTING {masq}" in script and f"-A POSTROUTING {masq}" in script
        # a route kdeploy made to a node no longer in the cluster is deleted (by its protocol)
        keep = re.search(r'ip route show root (\S+) .*\n\s*case " ([^"]*) " in', script)
        assert keep.group(1) == c.spec.network.pod_cidr
        keep = keep.group(2).split()
        assert keep == list(c.node_pod_cidrs.values())
        for path in ("kdeploy-pod-routes.service", "pod-routes.sh"):
            f = next(x for x in res.files if x.path.endswith(path))
            assert f.restarts == ("kdeploy-pod-routes",)
        assert next(x for x in res.files if x.path.endswith("pod-routes.sh")).mode == 0o755
        assert subprocess.run(["sh", "-n"], input=script.encode()).returncode == 0


def test_kube_proxy_config():
    for _, c, h, res in all_rendered():
        kp = yaml.safe_load(files(res)["/var/lib/kube-proxy/config.yaml"])
        assert kp["mode"] == c.spec.kube_proxy.mode
        assert kp["clusterCIDR"] == c.spec.network.pod_cidr
        assert kp["hostnameOverride"] == h.name
        assert kp["clientConnection"]["kubeconfig"] == paths.KUBE_PROXY_CONF
        assert "conntrack" not in kp                     # null: the upstream default


@pytest.mark.parametrize("value", [0, 65536])
def test_kube_proxy_conntrack(write_inv, value):
    inv = write_inv(f"""
apiVersion: kdeploy.io/v1alpha1
kind: Cluster
spec:
  kubeProxy: {{mode: nftables, conntrackMaxPerCore: {value}}}
hosts:
  - {{name: n1, address: 192.0.2.10, roles: [control-plane, etcd, worker]}}
""")
    c, _ = load_inventory(inv)
    kp = yaml.safe_load(files(render_host(c, c.hosts[0]))["/var/lib/kube-proxy/config.yaml"])
    assert kp["mode"] == "nftables"
    assert kp["conntrack"]["maxPerCore"] == value
    assert ("tcpEstablishedTimeout" in kp["conntrack"]) is (value == 0)


def test_worker_gets_no_etcd_or_control_plane_files():
    c = load_sample("cluster")
    res = render_host(c, c.host("worker1"))
    phases = {f.phase for f in res.files}
    assert phases == {"os", "api-lb", "runtime", "node"}
    assert {u.name for u in res.units} == {"containerd", "kubelet", "kube-proxy", "kdeploy-pod-routes",
                                           "kdeploy-api-lb"}
    assert not any("etcd" in f.path or "kube-apiserver" in f.path or "scheduler" in f.path
                   or "controller-manager" in f.path or "audit" in f.path for f in res.files)


def test_resources_shape():
    for _, c, h, res in all_rendered():
        assert res.host == h.name
        paths_ = [f.path for f in res.files]
        assert len(paths_) == len(set(paths_))
        assert all(f.phase in PHASES and not f.secret for f in res.files)
        # phases in engine order
        order = [PHASES.index(f.phase) for f in res.files]
        assert order == sorted(order)
        # every unit file restarts its unit; every unit has its unit file
        for f in res.files:
            if f.path.startswith("/etc/systemd/system/"):
                unit = f.path.rsplit("/", 1)[1].removesuffix(".service")
                assert f.restarts == (unit,)
        assert {u.name for u in res.units} == {
            f.path.rsplit("/", 1)[1].removesuffix(".service")
            for f in res.files if f.path.startswith("/etc/systemd/system/")}
        sysctl = next(f for f in res.files if f.path == "/etc/sysctl.d/99-kdeploy.conf")
        assert sysctl.run_on_change == (("sysctl", "-p", "/etc/sysctl.d/99-kdeploy.conf"),)
        assert b"net.ipv4.ip_forward = 1" in sysctl.content
        (block,) = res.blocks
        assert block.path == "/etc/hosts" and block.run_on_change == ()
        assert block.content.splitlines() == [f"{o.address} {o.name}" for o in c.hosts]


def test_rendering_twice_is_byte_identical():
    for name in SAMPLE_NAMES:
        a, b = load_sample(name), load_sample(name)   # distinct objects: no shared cache
        for h in a.hosts:
            ra, rb = render_host(a, h), render_host(b, b.host(h.name))
            assert [(f.path, f.content) for f in ra.files] == [(f.path, f.content) for f in rb.files]
            assert ra.blocks == rb.blocks
            assert render_host(a, h).files == ra.files
        assert [f.content for f in render_addons(a)] == [f.content for f in render_addons(b)]
        assert list(render_all(a)) == [h.name for h in a.hosts]


def test_addons():
    for name in SAMPLE_NAMES:
        c = load_sample(name)
        out = render_addons(c)
        assert [f.path for f in out] == ["/etc/kubernetes/addons/00-apiserver-to-kubelet-rbac.yaml",
                                         "/etc/kubernetes/addons/10-coredns.yaml"]
        assert all(f.phase == "addons" for f in out)
        rbac = list(yaml.safe_load_all(out[0].content))
        role, binding, autoapprove = rbac
        assert autoapprove["roleRef"]["name"].endswith(":selfnodeclient")
        assert role["kind"] == "ClusterRole" and role["metadata"]["name"] == "system:kube-apiserver-to-kubelet"
        assert {"nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec", "nodes/metrics"} <= set(
            role["rules"][0]["resources"])
        assert binding["roleRef"]["name"] == "system:kube-apiserver-to-kubelet"
        assert {"kind": "User", "name": "kube-apiserver-kubelet-client",
                "apiGroup": "rbac.authorization.k8s.io"} in binding["subjects"]
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out[1].content)}
        assert set(docs) == {("ServiceAccount", "coredns"), ("ClusterRole", "system:coredns"),
                             ("ClusterRoleBinding", "system:coredns"), ("ConfigMap", "coredns"),
                             ("Deployment", "coredns"), ("Service", "kube-dns")}
        svc = docs[("Service", "kube-dns")]
        assert svc["spec"]["clusterIP"] == c.dns_service_ip
        dep = docs[("Deployment", "coredns")]
        assert dep["spec"]["replicas"] == 2
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert re.fullmatch(r"registry\.k8s\.io/coredns/coredns:v1\.1[34]\.\d+", image)
        corefile = docs[("ConfigMap", "coredns")]["data"]["Corefile"]
        assert f"kubernetes {c.spec.network.cluster_domain} in-addr.arpa ip6.arpa" in corefile
        assert "forward . /etc/resolv.conf" in corefile


def test_node_labels_split():
    assert kubelet_may_set("example.com/rack")
    assert kubelet_may_set("rack")
    assert kubelet_may_set("topology.kubernetes.io/zone")
    assert kubelet_may_set("node.kubernetes.io/pool")
    assert not kubelet_may_set("node-role.kubernetes.io/worker")
    assert not kubelet_may_set("node-restriction.kubernetes.io/x")
    assert not kubelet_may_set("example.k8s.io/x")
    own, deferred = split_labels({"rack": "a", "node-role.kubernetes.io/gpu": ""})
    assert own == {"rack": "a"} and deferred == {"node-role.kubernetes.io/gpu": ""}


def test_host_labels_reach_kubelet_or_deployer(write_inv):
    inv = write_inv("""
apiVersion: kdeploy.io/v1alpha1
kind: Cluster
hosts:
  - {name: cp1, address: 192.0.2.10, roles: [control-plane, etcd]}
  - name: w1
    address: 192.0.2.11
    roles: [worker]
    labels: {rack: r1, topology.kubernetes.io/zone: z1, node-role.kubernetes.io/gpu: ""}
""")
    c, _ = load_inventory(inv)
    res = render_host(c, c.host("w1"))
    f = flags(files(res)["/etc/systemd/system/kubelet.service"])
    assert f["node-labels"] == "rack=r1,topology.kubernetes.io/zone=z1"
    assert res.extra["api_labels"] == {"node-role.kubernetes.io/gpu": ""}


def test_dns_name_addresses_render(write_inv):
    inv = write_inv("""
apiVersion: kdeploy.io/v1alpha1
kind: Cluster
hosts:
  - {name: cp1, address: cp1.example.test, roles: [control-plane, etcd, worker]}
  - {name: w1, address: 192.0.2.11, roles: [worker]}
""")
    c, _ = load_inventory(inv)
    fs = files(render_host(c, c.host("cp1")))
    assert "advertise-address" not in flags(fs["/etc/systemd/system/kube-apiserver.service"])
    assert "node-ip" not in flags(fs["/etc/systemd/system/kubelet.service"])
    etcd = flags(fs["/etc/systemd/system/etcd.service"])
    assert etcd["listen-client-urls"].startswith("https://0.0.0.0:2379")
    assert etcd["advertise-client-urls"] == "https://cp1.example.test:2379"
    # no route can go via a name: w1 gets none for cp1, and /etc/hosts lists only IPs
    w1 = render_host(c, c.host("w1"))
    assert "via cp1.example.test" not in files(w1)["/usr/local/lib/kdeploy/pod-routes.sh"]
    assert w1.blocks[0].content == "192.0.2.11 w1\n"


def test_restrict_oom_score_adj_only_when_the_inventory_says_so(tmp_path):
    import shutil
    from kdeploy.model import load_inventory
    from kdeploy.render import render_host
    from tests.conftest import SAMPLES
    inv = tmp_path / "c.yaml"
    shutil.copy(SAMPLES / "single-node.yaml", inv)
    c, _ = load_inventory(inv)
    conf = files(render_host(c, c.hosts[0]))["/etc/containerd/config.toml"]
    assert "restrict_oom_score_adj" not in conf
    inv.write_text(inv.read_text().replace("spec:\n", "spec:\n  containerRuntime:\n    restrictOOMScoreAdj: true\n"))
    c, _ = load_inventory(inv)
    conf = files(render_host(c, c.hosts[0]))["/etc/containerd/config.toml"]
    import tomllib
    assert tomllib.loads(conf)["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] is True


def test_every_node_reaches_the_api_through_its_own_load_balancer():
    c = load_sample("cluster")
    cps = [f"{h.address}:6443" for h in c.control_plane]
    for h in c.hosts:
        res = render_host(c, h)
        conf = files(res)["/etc/kubernetes/api-lb/nginx.conf"]
        servers = re.findall(r"^\s*server (\S+) max_fails", conf, re.M)
        assert servers == cps                      # every apiserver is a backend
        assert "listen 127.0.0.1:7443;" in conf
        assert "load_module /usr/local/lib/kdeploy/nginx/ngx_stream_module.so;" in conf
        f = next(f for f in res.files if f.path == "/etc/kubernetes/api-lb/nginx.conf")
        # a new backend list is a reload, never a restart of the LB (or of kubelet)
        assert f.restarts == ()
        assert f.run_on_change == (("systemctl", "try-reload-or-restart", "kdeploy-api-lb.service"),)
        assert "kdeploy-api-lb" in {u.name for u in res.units}
        unit = files(res)["/etc/systemd/system/kdeploy-api-lb.service"]
        assert "Before=kubelet.service kube-proxy.service" in unit


def test_an_external_endpoint_replaces_the_node_local_load_balancer():
    c = load_sample("ha")                           # spec.controlPlane.endpoint is set
    assert not c.node_local_lb and c.node_api_url == "https://198.51.100.100:6443"
    for h in c.hosts:
        res = render_host(c, h)
        assert not any("api-lb" in f.path for f in res.files)
        assert "kdeploy-api-lb" not in {u.name for u in res.units}


def test_apiserver_drains_before_it_stops():
    c = load_sample("cluster")
    unit = files(render_host(c, c.control_plane[0]))["/etc/systemd/system/kube-apiserver.service"]
    f = flags(unit)
    assert f["shutdown-delay-duration"] == "5s"
    # no 429s while draining: a refused connection is what a TCP load balancer retries elsewhere
    assert "shutdown-send-retry-after" not in f
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1))
    assert stop > 5                                 # the delay fits inside systemd's stop timeout
