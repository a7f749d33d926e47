"""AnsibleTransport: pure builders (inventory, ssh args, extravars, events), secret handling,
and real runs through ansible-runner against a throwaway OpenSSH sshd on 127.0.0.1 (and one in a
network namespace the test creates), with strict host-key checking."""
import base64
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdeploy.errors import TransportError
from kdeploy.transport.ansible import (
    AnsibleTransport, StepResult, ansible_factory, b64_stdin_wrap, capture_wrap, dump_extravars,
    event_to_step, inventory, parse_capture, proxy_command, run_argv, sha256_validate,
)
from kdeploy.transport.base import SECRET_DISPLAY, Transport

from .sshd import free_port, keygen, sshd_in_netns, sshd_missing_reason, start_sshd

try:
    import ansible_runner  # noqa: F401
    _NO_RUNNER = None
except ImportError:  # pragma: no cover
    _NO_RUNNER = "ansible-runner not installed"
REAL_REASON = sshd_missing_reason() or _NO_RUNNER
real = pytest.mark.skipif(REAL_REASON is not None, reason=REAL_REASON or "")


# --- pure: inventory and ssh arguments -----------------------------------------------------

def _hv(**kw):
    return inventory("node1", "10.0.0.5", **kw)["all"]["hosts"]["node1"]


def test_inventory_maps_ssh_settings():
    hv = _hv(user="debian", port=2222, key_file="/k/id", known_hosts_file="/k/known", sudo=True)
    assert hv["ansible_host"] == "10.0.0.5" and hv["ansible_port"] == 2222
    assert hv["ansible_user"] == "debian" and hv["ansible_ssh_private_key_file"] == "/k/id"
    assert hv["ansible_become"] is True and hv["ansible_become_method"] == "sudo"
    assert hv["ansible_become_user"] == "root" and hv["ansible_connection"] == "ssh"
    args = shlex.split(hv["ansible_ssh_common_args"])  # what Ansible does with it
    assert args == ["-o", "UserKnownHostsFile=/k/known", "-o", "StrictHostKeyChecking=yes"]
    json.dumps(hv)  # serialisable as an inventory file


def test_inventory_defaults_root_no_become_default_known_hosts():
    hv = _hv()
    assert hv["ansible_user"] == "root" and hv["ansible_become"] is False
    assert "ansible_ssh_private_key_file" not in hv
    kh = os.path.expanduser("~/.ssh/known_hosts")
    assert f"UserKnownHostsFile={kh}" in shlex.split(hv["ansible_ssh_common_args"])


def test_opt_out_accepts_new_keys_only():
    assert "StrictHostKeyChecking=accept-new" in shlex.split(
        _hv(strict_host_key_checking=False)["ansible_ssh_common_args"])
    assert "StrictHostKeyChecking=yes" in shlex.split(_hv()["ansible_ssh_common_args"])


def test_netns_proxy_command_round_trips_through_shlex():
    hv = _hv(netns="kdeploy-lab-lab", known_hosts_file="/dir with space/kh", python="/usr/bin/python3")
    args = shlex.split(hv["ansible_ssh_common_args"])
    assert "UserKnownHostsFile=/dir with space/kh" in args
    pc = [a for a in args if a.startswith("ProxyCommand=")]
    assert pc == ["ProxyCommand=/usr/bin/python3 -m kdeploy.netns_proxy kdeploy-lab-lab %h %p"]


def test_bastion_proxy_command():
    pc = proxy_command(None, {"address": "203.0.113.9", "port": 2200, "user": "jump",
                              "key_file": "/k/b"}, known_hosts="/k/kh", strict=True)
    argv = shlex.split(pc)  # ssh runs it with sh -c
    assert argv[0] == "ssh" and argv[-1] == "jump@203.0.113.9" and "%h:%p" in argv
    assert "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/k/kh" in argv
    assert argv[argv.index("-p") + 1] == "2200" and argv[argv.index("-i") + 1] == "/k/b"
    # bastion inside a netns: the jump connection goes through the netns proxy
    pc = proxy_command("ns1", {"address": "10.1.1.1"}, known_hosts="/k/kh", strict=True,
                       python="/py")
    inner = [a for a in shlex.split(pc) if a.startswith("ProxyCommand=")]
    assert inner == ["ProxyCommand=/py -m kdeploy.netns_proxy ns1 10.1.1.1 22"]
    assert proxy_command(None, None, known_hosts="/k", strict=True) is None


def test_from_cluster_resolves_like_ssh_transport(tmp_path):
    from kdeploy.model.cluster import Cluster
    c = Cluster.model_validate({
        "spec": {"ssh": {"keyFile": "id", "knownHostsFile": "kh", "port": 2022, "user": "debian"}},
        "hosts": [{"name": "cp1", "address": "10.0.0.1", "roles": ["control-plane"],
                   "ssh": {"netns": "labns", "strictHostKeyChecking": False}}],
    }).model_copy(update={"source": str(tmp_path / "cluster.yaml")})
    t = AnsibleTransport.from_cluster(c, "cp1")
    assert isinstance(t, Transport)
    hv = t.inventory()["all"]["hosts"]["cp1"]
    assert hv["ansible_ssh_private_key_file"] == str(tmp_path / "id")
    assert hv["ansible_port"] == 2022 and hv["ansible_user"] == "debian" and hv["ansible_become"]
    args = shlex.split(hv["ansible_ssh_common_args"])
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in args and "StrictHostKeyChecking=accept-new" in args
    assert any("kdeploy.netns_proxy labns %h %p" in a for a in args)
    assert t.data_root is None  # nothing on disk until the first call


# --- pure: extravars, command shaping, events ----------------------------------------------

def test_extravars_are_base64_json_never_templated():
    ev = {"kd_argv": ["echo", "{{ lookup('env','HOME') }}", "false", "123"], "kd_timeout": 5,
          "kd_no_log": True, "kd_dest": "/etc/x"}
    data = json.loads(dump_extravars(ev))
    assert [base64.b64decode(a).decode() for a in data["kd_argv"]] == ev["kd_argv"]
    assert data["kd_timeout"] == 5 and data["kd_no_log"] is True
    assert base64.b64decode(data["kd_dest"]) == b"/etc/x"
    assert "{{" not in dump_extravars(ev)


def test_run_argv_and_wrappers(tmp_path):
    assert run_argv("echo $HOME") == ["sh", "-c", "echo $HOME"]
    assert run_argv(["ls", 1]) == ["ls", "1"]
    with pytest.raises(ValueError):
        run_argv([])
    # binary stdin: base64 on the wire, decoded before the command
    r = subprocess.run(b64_stdin_wrap(["od", "-An", "-tx1"]), input=base64.b64encode(b"\xff\x00"),
                       capture_output=True, check=True)
    assert r.stdout.split() == [b"ff", b"00"]
    # secret capture: rc/stdout/stderr exact in a private file, the wrapper exits 0
    cap = str(tmp_path / "cap")
    r = subprocess.run(capture_wrap(["sh", "-c", "printf 'a\\n\\n'; echo e >&2; exit 4"], cap))
    assert r.returncode == 0 and stat.S_IMODE(os.stat(cap).st_mode) == 0o600
    assert parse_capture(Path(cap).read_bytes()) == (4, b"a\n\n", b"e\n")
    assert not os.path.exists(cap + ".o")
    # noclobber: a pre-existing (e.g. planted) file is never written through
    r = subprocess.run(capture_wrap(["true"], cap), capture_output=True)
    assert r.returncode != 0 or parse_capture(Path(cap).read_bytes())[0] == 4


def test_sha256_validate_command(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    good = sha256_validate(hashlib.sha256(b"abc").hexdigest())
    assert subprocess.run(shlex.split(good % str(f))).returncode == 0
    bad = sha256_validate("0" * 64)
    assert subprocess.run(shlex.split(bad % str(f))).returncode != 0
    with pytest.raises(ValueError):
        sha256_validate("abc; rm -rf /")


def test_event_to_step_mapping():
    ok = {"event": "runner_on_ok", "event_data": {"host": "n1", "task": "run", "duration": 0.5,
                                                    "res": {"rc": 0, "changed": True}}}
    step, res = event_to_step(ok)
    assert step == StepResult("n1", "run", "changed", 0, "", 0.5) and res["rc"] == 0
    un = {"event": "runner_on_unreachable",
          "event_data": {"host": "n1", "task": "get", "res": {"msg": "Host key verification failed."}}}
    assert event_to_step(un)[0].status == "unreachable"
    hidden = {"event": "runner_on_failed", "event_data": {"host": "n1", "task": "copy",
              "res": {"censored": "the output has been hidden", "failed": True}}}
    assert event_to_step(hidden)[0].msg == "output hidden (no_log)"
    assert event_to_step({"event": "playbook_on_start", "event_data": {}}) is None


def test_playbooks_ship_inside_the_package():
    import kdeploy
    from kdeploy.transport import ansible as mod
    if os.environ.get("KDEPLOY_PLAYBOOKS"):
        pytest.skip("KDEPLOY_PLAYBOOKS overrides the package's playbooks")
    assert mod.PLAYBOOKS == Path(kdeploy.__file__).resolve().parent / "playbooks"
    for name in ("run.yml", "put.yml", "get.yml"):
        assert (mod.PLAYBOOKS / "transport" / name).is_file()


def test_missing_playbook_is_a_clear_error(tmp_path):
    t = AnsibleTransport("node1", "192.0.2.7", playbooks=tmp_path)  # never dialled
    with pytest.raises(TransportError) as e:
        t.run(["true"])
    assert "run.yml is missing" in e.value.message and "reinstall kdeploy" in e.value.hint
    assert t.data_root is None  # nothing was set up
    t.close()


# --- real runs against sshd ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if REAL_REASON:
        pytest.skip(REAL_REASON)
    s = start_sshd(tmp_path_factory.mktemp("ansible-sshd"))
    yield s
    s.stop()


def _t(sshd, **kw) -> AnsibleTransport:
    kw.setdefault("known_hosts_file", sshd.known_hosts)
    kw.setdefault("key_file", sshd.client_key)
    return AnsibleTransport(kw.pop("host", "node1"), "127.0.0.1", port=sshd.port, **kw)


@pytest.fixture(scope="module")
def t(sshd):
    tr = _t(sshd)
    yield tr
    tr.close()


def _files_under(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            try:
                out[str(p)] = p.read_bytes()
            except OSError:  # sockets (ssh ControlPath)
                pass
    return out


@real
def test_run_argv_stdout_rc_and_no_templating(t):
    t0 = time.monotonic()
    r = t.run(["printf", "%s|", "{{ lookup('env','HOME') }}", "false", "123"])
    took = time.monotonic() - t0
    assert r.rc == 0 and r.out == "{{ lookup('env','HOME') }}|false|123|"
    print(f"\nansible run: {took:.2f}s")
    r = t.run("cat; echo oops >&2; exit 3", input=b"line {{ x }}\n", check=False)
    assert (r.rc, r.stdout, r.err) == (3, b"line {{ x }}", "oops")  # Ansible strips the last \n
    assert t.run(["no-such-command-kdeploy"], check=False).rc == 127


@real
def test_failed_command_names_host_and_task(t):
    with pytest.raises(TransportError) as e:
        t.run("echo bad >&2; exit 5")
    m = e.value.message
    assert m.startswith(f"host node1 (127.0.0.1:{t.port}): ansible task 'run'")
    assert "exit code 5" in m and "bad" in m and "Traceback" not in m


@real
def test_secret_run_output_exact_and_nothing_left(t):
    seen: list[dict] = []
    t.on_step = lambda step: seen.append(_files_under(t.data_root))
    try:
        r = t.run("cat; printf 'x\\n\\n'", input=b"TOKEN-s3cr3t\xff", secret=True)
    finally:
        t.on_step = None
    assert r.argv_display == SECRET_DISPLAY and r.rc == 0
    assert r.stdout == b"TOKEN-s3cr3t\xffx\n\n"  # exact, binary stdin included
    # during the run: the stdin file existed only as a 0600 file of the private data dir
    assert seen and not any(b"s3cr3t" in v for v in _files_under(t.data_root).values())
    assert not list(Path("/tmp").glob(".kdeploy-out-*"))  # remote capture removed
    with pytest.raises(TransportError) as e:
        t.run("echo s3cr3t-arg; exit 1", secret=True)
    assert "s3cr3t" not in str(e.value) and SECRET_DISPLAY in e.value.message


@real
def test_put_get_modes_owner_parents_and_no_secret_left(t, tmp_path):
    dest = tmp_path / "new" / "dir" / "key.pem"
    secret = b"-----BEGIN PRIVATE KEY----- s3cr3t-put\n"
    during: list[dict] = []

    def snap(step):
        for p, v in _files_under(t.data_root).items():
            if secret in v:
                during.append({p: stat.S_IMODE(os.stat(p).st_mode)})
    t.on_step = snap
    t0 = time.monotonic()
    try:
        t.put(str(dest), secret, mode=0o600, owner="root", group="root")
    finally:
        t.on_step = None
    print(f"\nansible put: {time.monotonic() - t0:.2f}s")
    st = os.stat(dest)
    assert dest.read_bytes() == secret and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert all(m == 0o600 for d in during for m in d.values())
    assert t.data_root is not None and stat.S_IMODE(os.stat(t.data_root).st_mode) == 0o700
    left = _files_under(t.data_root)
    assert not any(secret in v for v in left.values()), list(left)
    assert not [p for p in left if "/call-" in p]  # per-call data dirs are gone
    # overwrite in place, other mode; group by name
    t.put(str(dest), b"v2", mode=0o640, group="daemon")
    st = os.stat(dest)
    assert dest.read_bytes() == b"v2" and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == int(subprocess.run(["getent", "group", "daemon"], capture_output=True,
                                           text=True).stdout.split(":")[2])
    assert not [p for p in os.listdir(dest.parent) if p != "key.pem"]  # no temp files left
    t0 = time.monotonic()
    assert t.get(str(dest)) == b"v2"
    print(f"ansible get: {time.monotonic() - t0:.2f}s")
    assert t.get(str(tmp_path / "absent")) is None
    with pytest.raises(TransportError, match="unknown user|failed to look up|chown|ansible task 'copy'"):
        t.put(str(tmp_path / "o"), b"x", owner="no-such-user-kdeploy")


@real
def test_put_file_checksum_and_binary_get(t, tmp_path):
    blob = os.urandom(300_000) + b"\x00\xff"
    src = tmp_path / "bin"
    src.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    dest = tmp_path / "out" / "kubelet"
    t0 = time.monotonic()
    t.put_file(str(dest), src, mode=0o755, sha256=sha.upper())
    print(f"\nansible put_file (300 kB): {time.monotonic() - t0:.2f}s")
    assert dest.read_bytes() == blob and stat.S_IMODE(os.stat(dest).st_mode) == 0o755
    assert t.get(str(dest)) == blob
    with pytest.raises(TransportError, match="does not match its sha256"):
        t.put_file(str(tmp_path / "x"), src, sha256="0" * 64)
    with pytest.raises(TransportError, match="not found"):
        t.put_file(str(tmp_path / "x"), tmp_path / "missing")


@real
def test_close_removes_data_dir(sshd):
    tr = _t(sshd)
    assert tr.connect() is tr
    root = tr.data_root
    assert root.is_dir() and stat.S_IMODE(os.stat(root).st_mode) == 0o700
    tr.close()
    assert not root.exists() and tr.data_root is None
    tr.close()  # idempotent


@real
def test_unknown_host_key_rejected_with_hint(sshd, tmp_path):
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    tr = _t(sshd, known_hosts_file=kh)
    try:
        with pytest.raises(TransportError) as e:
            tr.run(["true"])
    finally:
        tr.close()
    assert e.value.message.startswith(f"host node1 (127.0.0.1:{sshd.port}): unreachable")
    assert "Host key verification failed" in e.value.message
    assert "strictHostKeyChecking: false" in e.value.hint


@real
def test_opt_out_accepts_a_new_key_but_never_a_changed_one(sshd, tmp_path):
    kh = tmp_path / "kh"
    kh.write_text("")
    tr = _t(sshd, known_hosts_file=kh, strict_host_key_checking=False)
    try:
        assert tr.run(["true"]).ok               # new key: accepted and remembered
    finally:
        tr.close()
    assert "ssh-" in kh.read_text()
    # the host now presents another key than the one remembered: refused despite the opt-out
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    kh.write_text("".join(f"{ln.split()[0]} {other}\n" for ln in kh.read_text().splitlines()))
    tr = _t(sshd, known_hosts_file=kh, strict_host_key_checking=False)
    try:
        with pytest.raises(TransportError) as e:
            tr.run(["true"])
    finally:
        tr.close()
    assert "unreachable" in e.value.message
    assert "Host key verification failed" in e.value.message or "CHANGED" in e.value.message


@real
def test_unreachable_port_and_factory(sshd, tmp_path):
    from kdeploy.model.cluster import Cluster
    from kdeploy.transport.pool import UnreachableHosts, close_all, connect_all
    shutil.copy(sshd.client_key, tmp_path / "id")
    c = Cluster.model_validate({
        "spec": {"ssh": {"keyFile": "id", "knownHostsFile": str(sshd.known_hosts), "port": sshd.port}},
        "hosts": [{"name": "cp1", "address": "127.0.0.1", "roles": ["control-plane"]},
                  {"name": "w1", "address": "127.0.0.1", "roles": ["worker"],
                   "ssh": {"port": free_port()}}],
    }).model_copy(update={"source": str(tmp_path / "cluster.yaml")})
    ts = connect_all(c, ["cp1"], factory=ansible_factory)
    try:
        assert isinstance(ts["cp1"], AnsibleTransport) and ts["cp1"].run(["true"]).ok
    finally:
        close_all(ts)
    with pytest.raises(UnreachableHosts) as e:
        connect_all(c, factory=ansible_factory)
    assert "1 host(s) unreachable: w1" in e.value.message and "Connection refused" in e.value.message


@pytest.fixture(scope="module")
def netns_sshd(tmp_path_factory):
    if REAL_REASON:
        pytest.skip(REAL_REASON)
    if not shutil.which("ip"):
        pytest.skip("iproute2 missing")
    with sshd_in_netns(tmp_path_factory.mktemp("ans-nsd"), "kdeploy-ans") as s:
        yield s


@real
def test_netns_via_kdeploy_netns_proxy(netns_sshd, tmp_path):
    s = netns_sshd
    tr = AnsibleTransport("labnode", "127.0.0.1", port=s.port, key_file=s.client_key,
                          known_hosts_file=s.known_hosts, netns=s.netns)
    try:
        # the sshd listens only inside the namespace's loopback
        assert tr.run(["sh", "-c", "readlink /proc/$PPID/ns/net"]).ok
        tr.put(str(tmp_path / "ns-file"), b"in-netns", mode=0o644)
        assert tr.get(str(tmp_path / "ns-file")) == b"in-netns"
    finally:
        tr.close()
    plain = AnsibleTransport("labnode", "127.0.0.1", port=s.port, key_file=s.client_key,
                             known_hosts_file=s.known_hosts)
    try:
        with pytest.raises(TransportError, match="host labnode .*unreachable"):
            plain.run(["true"])
    finally:
        plain.close()


def test_netns_proxy_usage_and_missing_netns():
    r = subprocess.run([sys.executable, "-m", "kdeploy.netns_proxy"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    if os.geteuid() == 0:
        r = subprocess.run([sys.executable, "-m", "kdeploy.netns_proxy", "kdeploy-no-such-ns",
                            "127.0.0.1", "22"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 255 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_netns_proxy_pipes_bytes_in_this_namespace():
    import socket
    import threading
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def echo():
        c, _ = srv.accept()
        with c:
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            c.sendall(data[::-1])
    th = threading.Thread(target=echo, daemon=True)
    th.start()
    r = subprocess.run([sys.executable, "-m", "kdeploy.netns_proxy", "-", "127.0.0.1", str(port)],
                       input=b"abc\x00\xff", capture_output=True, timeout=20)
    srv.close()
    assert r.returncode == 0 and r.stdout == b"\xff\x00cba"
