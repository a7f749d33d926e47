"""Checks of an artifact set built from upstream Go modules (`kdeploy artifacts build`).

Run with KDEPLOY_ARTIFACTS=<dir with manifest.json>, e.g.
    KDEPLOY_ARTIFACTS=~/.cache/kdeploy/artifacts-build/1.37.2-amd64 pytest -m artifacts tests/artifacts
Everything listens on 127.0.0.1 on free ports; every process started here is stopped by PID.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.artifacts

_ENV = os.environ.get("KDEPLOY_ARTIFACTS", "")
ART = Path(_ENV).expanduser() if _ENV else None
if ART is None:
    pytest.skip("KDEPLOY_ARTIFACTS is not set: build the artifacts with `kdeploy artifacts build` "
                "and point KDEPLOY_ARTIFACTS at the output directory", allow_module_level=True)
if not (ART / "manifest.json").is_file():
    pytest.skip(f"KDEPLOY_ARTIFACTS={ART} has no manifest.json (run `kdeploy artifacts build`)",
                allow_module_level=True)

MANIFEST = json.loads((ART / "manifest.json").read_text())
V = MANIFEST.get("components") or {}
K8S = MANIFEST["kubernetesVersion"]


def _bin(name: str) -> str:
    return str(ART / ("cni" if (ART / "cni" / name).exists() and not (ART / "bin" / name).exists()
                      else "bin") / name)


def _run(*args: str, timeout: float = 60, env: dict | None = None, check: bool = True):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A started process, stopped by its PID (TERM, then KILL)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self._f, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(10)
        self._f.close()


def _wait(pred, what: str, proc: Proc, timeout: float = 60.0, interval: float = 0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if not proc.alive():
            raise AssertionError(f"{what}: process {proc.pid} exited {proc.p.returncode}\n{proc.tail()}")
        try:
            r = pred()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what}: not ready after {timeout}s (last: {last})\n{proc.tail()}")


# ---------------------------------------------------------------------------- versions

VERSION_CASES = [
    (["kube-apiserver", "--version"], f"Kubernetes v{K8S}"),
    (["kube-controller-manager", "--version"], f"Kubernetes v{K8S}"),
    (["kube-scheduler", "--version"], f"Kubernetes v{K8S}"),
    (["kubelet", "--version"], f"Kubernetes v{K8S}"),
    (["kube-proxy", "--version"], f"Kubernetes v{K8S}"),
    (["kubectl", "version", "--client"], f"Client Version: v{K8S}"),
    (["etcd", "--version"], f"etcd Version: {V.get('etcd')}"),
    (["etcdctl", "version"], f"etcdctl version: {V.get('etcd')}"),
    (["etcdutl", "version"], f"etcdutl version: {V.get('etcd')}"),
    (["nginx", "-v"], f"nginx/{V.get('nginx', '').split('-')[0]}"),
    (["containerd", "--version"], f"v{V.get('containerd')}"),
    (["ctr", "--version"], f"v{V.get('containerd')}"),
    (["containerd-shim-runc-v2", "-v"], f"v{V.get('containerd')}"),
    (["runc", "--version"], f"runc version {V.get('runc')}"),
    (["crictl", "--version"], f"crictl version v{V.get('crictl')}"),
]


@pytest.mark.parametrize("cmd,expect", VERSION_CASES, ids=[c[0][0] for c in VERSION_CASES])
def test_binary_reports_its_version(cmd, expect):
    p = _run(_bin(cmd[0]), *cmd[1:], check=False)
    out = p.stdout + p.stderr
    assert expect in out, f"{cmd} printed:\n{out}"


@pytest.mark.parametrize("plugin", ["bridge", "host-local", "loopback", "portmap"])
def test_cni_plugin_reports_its_version(plugin):
    p = _run(str(ART / "cni" / plugin), check=False, env={"PATH": os.environ.get("PATH", "")})
    out = p.stdout + p.stderr
    assert f"v{V.get('cni_plugins')}" in out, out


def test_runc_is_static_and_has_seccomp():
    out = _run(_bin("runc"), "--version").stdout
    assert "libseccomp:" in out, out
    ldd = subprocess.run(["ldd", _bin("runc")], capture_output=True, text=True)
    assert ldd.returncode != 0 or "statically linked" in ldd.stdout + ldd.stderr, ldd.stdout


def test_manifest_verifies():
    from kdeploy.artifacts.layout import verify_dir
    verify_dir(ART, kubernetes_version=K8S)


# ---------------------------------------------------------------------------- PKI

def _pki(d: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn, o=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if o:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
        return x509.Name(attrs)

    def write_key(k, p):
        p.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(p, 0o600)

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("kdeploy-test-ca")).issuer_name(name("kdeploy-test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": d / "ca.crt"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(stem, cn, o=None, server=False):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn, o)).issuer_name(ca.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server
                 else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        c = b.sign(ca_key, hashes.SHA256())
        out[stem] = d / f"{stem}.crt"
        out[stem].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[stem + "-key"] = d / f"{stem}.key"
        write_key(k, out[stem + "-key"])

    leaf("etcd-server", "etcd", server=True)
    leaf("etcd-client", "kube-apiserver-etcd-client")
    leaf("apiserver", "kube-apiserver", server=True)
    leaf("admin", "kdeploy-test-admin", o="system:masters")
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out["sa-key"] = d / "sa.key"
    write_key(sa, out["sa-key"])
    out["sa-pub"] = d / "sa.pub"
    out["sa-pub"].write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return out


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="kd-art-"))  # short: unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(workdir):
    d = workdir / "pki"
    d.mkdir()
    return _pki(d)


# ---------------------------------------------------------------------------- etcd

@pytest.fixture(scope="module")
def etcd(workdir, pki):
    cport, pport = _free_port(), _free_port()
    url = f"https://127.0.0.1:{cport}"
    proc = Proc([_bin("etcd"), "--name", "default", "--data-dir", str(workdir / "etcd"),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                 "--initial-cluster", f"default=http://127.0.0.1:{pport}",
                 "--listen-metrics-urls", f"http://127.0.0.1:{_free_port()}",
                 "--cert-file", str(pki["etcd-server"]), "--key-file", str(pki["etcd-server-key"]),
                 "--client-cert-auth", "--trusted-ca-file", str(pki["ca"])],
                workdir / "etcd.log")
    ctl = [_bin("etcdctl"), "--endpoints", url, "--cacert", str(pki["ca"]),
           "--cert", str(pki["etcd-client"]), "--key", str(pki["etcd-client-key"])]
    try:
        _wait(lambda: _run(*ctl, "endpoint", "health", check=False, timeout=10).returncode == 0,
              "etcd health", proc, timeout=60)
        yield {"url": url, "ctl": ctl, "proc": proc}
    finally:
        proc.stop()


def test_etcd_tls_endpoint_health(etcd):
    p = _run(*etcd["ctl"], "endpoint", "health")
    assert "is healthy" in p.stdout + p.stderr
    _run(*etcd["ctl"], "put", "kdeploy-test", "ok")
    assert "ok" in _run(*etcd["ctl"], "get", "kdeploy-test", "--print-value-only").stdout
    # without a client certificate etcd refuses (client-cert-auth)
    p = _run(_bin("etcdctl"), "--endpoints", etcd["url"], "--cacert", str(etcd["ctl"][4]),
             "--command-timeout", "3s", "endpoint", "health", check=False, timeout=30)
    assert p.returncode != 0


def test_etcdutl_snapshot_status(etcd, workdir):
    """etcdctl saves a snapshot of the live etcd, etcdutl (offline) checks it."""
    snap = workdir / "etcd.snapshot"
    _run(*etcd["ctl"], "put", "kdeploy-snapshot-test", "ok")
    _run(*etcd["ctl"], "snapshot", "save", str(snap), timeout=60)
    st = json.loads(_run(_bin("etcdutl"), "snapshot", "status", str(snap), "-w", "json").stdout)
    assert st["revision"] > 0 and st["totalKey"] > 0 and st["totalSize"] > 0


# ---------------------------------------------------------------------------- API load balancer

def _nginx_conf(d: Path, listen: int, upstream: str, extra: str = "") -> Path:
    """A stream-only config that needs none of Debian's paths (/etc/nginx, /var/log/nginx,
    /var/lib/nginx, /run/nginx.pid): the module by absolute path, pid in d, errors to stderr."""
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""load_module {ART / 'lib' / 'ngx_stream_module.so'};
pid {d / 'nginx.pid'};
error_log stderr notice;
{extra}
events {{}}
stream {{
  server {{ listen 127.0.0.1:{listen}; proxy_pass {upstream}; }}
}}
""")
    return conf


def test_nginx_loads_stream_module_and_config_tests_ok(workdir):
    d = workdir / "nginx-t"
    conf = _nginx_conf(d, _free_port(), "127.0.0.1:1")
    p = _run(_bin("nginx"), "-t", "-c", str(conf), "-p", f"{d}/", "-e", "stderr")
    assert "test is successful" in p.stderr, p.stderr
    assert "/var/log/nginx" not in p.stderr and "/var/lib/nginx" not in p.stderr
    # without the module the stream block is unknown: the module is what provides it
    conf.write_text("\n".join(conf.read_text().splitlines()[1:]))
    p = _run(_bin("nginx"), "-t", "-c", str(conf), "-p", f"{d}/", "-e", "stderr", check=False)
    assert p.returncode != 0 and 'unknown directive "stream"' in p.stderr


# ---------------------------------------------------------------------------- containerd

@pytest.fixture(scope="module")
def containerd(workdir):
    d = workdir / "ctrd"
    d.mkdir()
    sock = d / "c.sock"
    cfg = d / "config.toml"
    cfg.write_text(f"""version = 3
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{d / 'debug.sock'}"
[metrics]
  address = ""
""")
    env = {**os.environ, "PATH": f"{ART / 'bin'}:{os.environ.get('PATH', '')}"}
    proc = Proc([_bin("containerd"), "--config", str(cfg)], workdir / "containerd.log", env=env)
    ctr = [_bin("ctr"), "--address", str(sock)]
    try:
        _wait(lambda: sock.exists() and _run(*ctr, "version", check=False, timeout=10).returncode == 0,
              "containerd", proc, timeout=60)
        yield {"ctr": ctr, "proc": proc, "env": env}
    finally:
        proc.stop()


def test_containerd_starts_and_ctr_version_answers(containerd):
    out = _run(*containerd["ctr"], "version").stdout
    assert "Server:" in out and f"v{V.get('containerd')}" in out.split("Server:")[1], out


@pytest.mark.parametrize("archive,refattr", [("pause.tar", "pause"), ("coredns.tar", "coredns"),
                                             ("agnhost.tar", "agnhost")])
def test_image_archive_imports_with_its_ref(containerd, archive, refattr):
    from kdeploy.artifacts.oci import read_image_refs
    path = ART / "images" / archive
    assert path.is_file(), f"{path} missing"
    (ref,) = read_image_refs(path)
    assert ref == MANIFEST["images"][f"images/{archive}"]
    _run(*containerd["ctr"], "-n", "k8s.io", "images", "import", "--no-unpack", str(path))
    assert ref in _run(*containerd["ctr"], "-n", "k8s.io", "images", "ls", "-q").stdout


def test_workload_image_runs_under_containerd_shim_and_runc(containerd):
    """agnhost from our image archive, unpacked by containerd, started by the shim with our
    static runc, answers HTTP (host network; we connect to 127.0.0.1 only)."""
    import urllib.request
    ref = MANIFEST["images"]["images/agnhost.tar"]
    ctr = [*containerd["ctr"], "-n", "kdeploy-test"]
    _run(*ctr, "images", "import", "--local", "--snapshotter", "native", str(ART / "images" / "agnhost.tar"))
    port = _free_port()
    run = Proc([*ctr, "run", "--rm", "--snapshotter", "native", "--net-host", ref, "kd-agnhost",
                "/agnhost", "netexec", f"--http-port={port}", "--udp-port=-1"],
               Path(containerd["proc"].log).with_name("agnhost.log"), env=containerd["env"])
    try:
        def get(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.read().decode()
        assert _wait(lambda: get("/hostname"), "agnhost netexec", run, timeout=60)
        assert get("/echo?msg=kdeploy") == "kdeploy"
    finally:
        _run(*ctr, "tasks", "kill", "-s", "KILL", "kd-agnhost", check=False)
        run.stop()
        _run(*ctr, "containers", "rm", "kd-agnhost", check=False)


# ---------------------------------------------------------------------------- kube-apiserver

@pytest.fixture(scope="module")
def apiserver(workdir, pki, etcd):
    port = _free_port()
    proc = Proc([
        _bin("kube-apiserver"),
        "--etcd-servers", etcd["url"], "--etcd-cafile", str(pki["ca"]),
        "--etcd-certfile", str(pki["etcd-client"]), "--etcd-keyfile", str(pki["etcd-client-key"]),
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(port),
        "--tls-cert-file", str(pki["apiserver"]), "--tls-private-key-file", str(pki["apiserver-key"]),
        "--client-ca-file", str(pki["ca"]),
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file", str(pki["sa-pub"]),
        "--service-account-signing-key-file", str(pki["sa-key"]),
        "--service-cluster-ip-range", "10.96.0.0/12", "--authorization-mode", "Node,RBAC",
        # a loopback advertise address is refused by the endpoint reconciler; nothing here
        # needs the kubernetes Service endpoints
        "--endpoint-reconciler-type", "none",
        "--cert-dir", str(workdir / "apiserver-certs"),
    ], workdir / "kube-apiserver.log")
    kubeconfig = workdir / "admin.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "certificate-authority": str(pki["ca"])}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(pki["admin"]),
                                             "client-key": str(pki["admin-key"])}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "admin"}}],
    }))
    kubectl = [_bin("kubectl"), "--kubeconfig", str(kubeconfig), "--request-timeout", "10s"]
    try:
        _wait(lambda: _run(*kubectl, "get", "--raw", "/readyz", check=False, timeout=20).stdout.strip() == "ok",
              "kube-apiserver /readyz", proc, timeout=180, interval=2)
        yield {"kubectl": kubectl, "proc": proc}
    finally:
        proc.stop()


def test_apiserver_ready_and_reports_real_version(apiserver):
    assert _run(*apiserver["kubectl"], "get", "--raw", "/readyz").stdout.strip() == "ok"
    info = json.loads(_run(*apiserver["kubectl"], "get", "--raw", "/version").stdout)
    assert info["gitVersion"] == f"v{K8S}"
    assert info["major"] == "1" and info["minor"] == K8S.split(".")[1]


def test_apiserver_stores_objects_in_etcd(apiserver):
    k = apiserver["kubectl"]
    _run(*k, "create", "namespace", "kdeploy-artifacts-test")
    out = _run(*k, "get", "namespace", "kdeploy-artifacts-test", "-o", "jsonpath={.status.phase}").stdout
    assert out == "Active"


def test_kubectl_through_nginx_stream_proxy(apiserver, workdir):
    """The node-local API load balancer: nginx (stream) in front of kube-apiserver, TLS passed
    through; kubectl reaches the apiserver via 127.0.0.1:<lb port>."""
    kubeconfig = json.loads((workdir / "admin.kubeconfig").read_text())
    api = kubeconfig["clusters"][0]["cluster"]["server"].removeprefix("https://")
    port = _free_port()
    d = workdir / "nginx-lb"
    conf = _nginx_conf(d, port, api, extra="daemon off;\nworker_processes 1;")
    proc = Proc([_bin("nginx"), "-c", str(conf), "-p", f"{d}/", "-e", "stderr"], workdir / "nginx.log")
    try:
        k = [*apiserver["kubectl"], "--server", f"https://127.0.0.1:{port}"]
        out = _wait(lambda: _run(*k, "get", "--raw", "/readyz", check=False, timeout=20).stdout.strip() == "ok",
                    "kubectl via nginx", proc, timeout=30)
        assert out
        assert json.loads(_run(*k, "get", "--raw", "/version").stdout)["gitVersion"] == f"v{K8S}"
    finally:
        proc.stop()


def test_resolve_offline_returns_every_file_with_install_paths():
    from kdeploy.artifacts import catalog, resolve
    files = {f.name: f for f in resolve(K8S, MANIFEST["arch"], offline_dir=ART)}
    assert set(files) == {s.name for s in catalog.file_specs()}
    assert files["kube-apiserver"].local_path == ART / "bin" / "kube-apiserver"
    assert files["pause-image"].install_path == "/var/lib/kdeploy/images/pause.tar"
    assert files["etcd"].version == V.get("etcd")
    assert files["nginx"].local_path == ART / "bin" / "nginx"
    assert files["ngx_stream_module"].local_path == ART / "lib" / "ngx_stream_module.so"
    assert files["ngx_stream_module"].mode == 0o644 and files["nginx"].version == V.get("nginx")
