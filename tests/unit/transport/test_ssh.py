"""SSHTransport against a real OpenSSH sshd (Debian's openssh-server) on 127.0.0.1, started in
the foreground by the test (never as a service), and one inside a network namespace."""
import hashlib
import logging
import os
import shutil
import stat
import time
from pathlib import Path

import paramiko
import pytest

from kdeploy.errors import TransportError
from kdeploy.transport.base import Transport
from kdeploy.transport.ssh import SSHTransport, _backoff

from .sshd import free_port, keygen, sshd_in_netns, sshd_missing_reason, start_sshd

REASON = sshd_missing_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    s = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


def _t(sshd, **kw) -> SSHTransport:
    kw.setdefault("known_hosts_file", sshd.known_hosts)
    kw.setdefault("key_file", sshd.client_key)
    return SSHTransport(kw.pop("host", "node1"), "127.0.0.1", port=sshd.port, allow_agent=False, **kw)


@pytest.fixture
def t(sshd):
    tr = _t(sshd).connect()
    yield tr
    tr.close()


# --- host keys ------------------------------------------------------------------------------

def test_strict_host_key_accepted_with_right_known_hosts(t):
    assert isinstance(t, Transport)
    assert t.run(["id", "-u"]).out == "0"


def test_changed_host_key_rejected_names_host_and_file(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    pub = Path(str(other) + ".pub").read_text().split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    with pytest.raises(TransportError) as e:
        _t(sshd, known_hosts_file=kh).connect()
    assert "host node1 (127.0.0.1:" in e.value.message and str(kh) in e.value.message
    assert "mismatch" in e.value.message and "ssh-keygen -R" in e.value.hint


def test_unknown_host_key_rejected_with_opt_out_hint(sshd, tmp_path):
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    with pytest.raises(TransportError) as e:
        _t(sshd, known_hosts_file=kh).connect()
    assert "host node1" in e.value.message and "unknown host key" in e.value.message
    assert str(kh) in e.value.message and "strictHostKeyChecking: false" in e.value.hint


def test_opt_out_accepts_unknown_key_with_warning_and_saves_nothing(sshd, tmp_path, caplog):
    kh = tmp_path / "kh"
    kh.write_text("")
    with caplog.at_level(logging.WARNING, logger="kdeploy.transport.ssh"):
        tr = _t(sshd, known_hosts_file=kh, strict_host_key_checking=False).connect()
    try:
        assert tr.run(["true"]).ok
    finally:
        tr.close()
    assert "accepting unknown host key" in caplog.text and kh.read_text() == ""


def test_wrong_client_key_is_auth_error(sshd, tmp_path):
    with pytest.raises(TransportError) as e:
        _t(sshd, key_file=keygen(tmp_path / "stranger")).connect()
    assert "authentication failed for user root" in e.value.message and "authorized_keys" in e.value.hint


def test_missing_key_file(sshd, tmp_path):
    with pytest.raises(TransportError, match="key file not found"):
        _t(sshd, key_file=tmp_path / "nope").connect()


# --- unreachable ----------------------------------------------------------------------------

def test_unreachable_port_names_host_after_retries(tmp_path):
    port = free_port()
    tr = SSHTransport("w9", "127.0.0.1", port=port, key_file=None, known_hosts_file=tmp_path / "kh",
                      retries=3, retry_window=0.3, allow_agent=False)
    t0 = time.monotonic()
    with pytest.raises(TransportError) as e:
        tr.connect()
    dt = time.monotonic() - t0
    assert e.value.message == (f"host w9 (127.0.0.1:{port}): unreachable after 3 attempts: "
                               "connection refused")
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)
    assert 0.25 < dt < 3


def test_backoff_defaults_fit_the_window():
    d = _backoff(3, 5.0)
    assert len(d) == 2 and abs(sum(d) - 5.0) < 1e-9 and d[0] < d[1]


def test_retry_succeeds_when_sshd_comes_up_late(tmp_path):
    port = free_port()
    d = tmp_path / "late"
    d.mkdir()
    client_key = keygen(d / "ck")
    import threading
    box = {}
    timer = threading.Timer(0.6, lambda: box.setdefault("s", start_sshd(d / "s", port=port,
                                                                         client_key=client_key)))
    timer.start()
    try:
        tr = SSHTransport("late", "127.0.0.1", port=port, key_file=client_key, retries=5,
                          retry_window=6, strict_host_key_checking=False, allow_agent=False)
        tr.connect()
        assert tr.run(["true"]).ok
        tr.close()
    finally:
        timer.join()
        if "s" in box:
            box["s"].stop()


# --- run ------------------------------------------------------------------------------------

def test_run_semantics(t):
    assert t.run("echo $((40+2))").out == "42"
    assert t.run(["echo", "$((40+2))", "a b"]).out == "$((40+2)) a b"
    assert t.run(["cat"], input=b"x" * 300000).stdout == b"x" * 300000
    r = t.run("echo out; echo err >&2; exit 7", check=False)
    assert (r.rc, r.out, r.err) == (7, "out", "err")


def test_run_failure_message(t):
    with pytest.raises(TransportError) as e:
        t.run("echo first >&2; echo 'it broke' >&2; exit 3")
    assert e.value.message.startswith("host node1: command failed (exit code 3)")
    assert "it broke" in e.value.message


def test_run_secret_masked(t, caplog):
    with caplog.at_level(logging.DEBUG, logger="kdeploy.transport"):
        with pytest.raises(TransportError) as e:
            t.run(["sh", "-c", "exit 1", "--token=hunter2"], secret=True, input=b"pw-hunter3")
    assert "hunter2" not in e.value.message and "hunter2" not in caplog.text
    assert "hunter3" not in caplog.text


def test_run_large_output_both_streams(t):
    r = t.run("head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2")
    assert len(r.stdout) == 3000000 and len(r.stderr) == 2000000


def test_run_timeout(t):
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 0.5s"):
        t.run(["sleep", "10"], timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert t.run(["true"]).ok  # the connection is still usable


def test_background_child_does_not_hang(t):
    t0 = time.monotonic()
    assert t.run("sleep 30 & echo started").out == "started"
    assert time.monotonic() - t0 < 5


def test_one_connection_reused_and_reconnects_when_dropped(t):
    first = t._client.get_transport()
    t.run(["true"]); t.run(["true"])
    assert t._client.get_transport() is first
    first.close()  # the host rebooted / the connection dropped
    assert t.run(["echo", "back"]).out == "back"
    assert t._client.get_transport() is not first


def test_concurrent_runs_on_one_connection(t):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda i: t.run(["echo", str(i)]).out, range(16)))
    assert outs == [str(i) for i in range(16)]


# --- files ----------------------------------------------------------------------------------

def test_put_get_mode_owner(t, tmp_path):
    p = tmp_path / "etc" / "kubernetes" / "admin.conf"
    t.put(str(p), b"apiVersion: v1\n", mode=0o600)
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (0, 0)
    assert stat.S_IMODE(os.stat(p.parent).st_mode) == 0o755
    assert t.get(str(p)) == b"apiVersion: v1\n"
    assert t.get(str(tmp_path / "missing")) is None
    t.put(str(p), b"v2", mode=0o644, owner="nobody", group="nogroup")
    st = os.stat(p)
    import grp, pwd
    assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == ("nobody", "nogroup")
    assert p.read_bytes() == b"v2" and stat.S_IMODE(st.st_mode) == 0o644
    assert os.listdir(p.parent) == ["admin.conf"]  # no temp file left


def test_small_put_and_get_are_one_command_each(t, tmp_path, monkeypatch):
    """A small file (a journal, /etc/hosts) is written and read with one command each, not
    about eight and five SFTP requests; a large one still goes through SFTP; a file that cannot
    be read is an error naming it."""
    from kdeploy.transport import ssh
    calls = []
    real = t._exec
    monkeypatch.setattr(t, "_exec", lambda *a: (calls.append(a[1]), real(*a))[1])
    p = tmp_path / "journal"
    t.put(str(p), b"unit-restart:kubelet.service\n", mode=0o600)
    assert t.get(str(p)) == b"unit-restart:kubelet.service\n"
    assert len(calls) == 2 and calls[0] == "write 1 files (journal)" and "cat" in calls[1]
    assert t._sftp is None and stat.S_IMODE(os.stat(p).st_mode) == 0o600
    monkeypatch.setattr(ssh, "MANY_BYTES", 10)
    t.put(str(p), b"y" * 100)
    assert len(calls) == 2 and t._sftp is not None and p.read_bytes() == b"y" * 100
    with pytest.raises(TransportError, match=r"node1 \(127.0.0.1:\d+\): cannot read \S+ \(exit code 1\)\n.*directory"):
        t.get(str(tmp_path))


def test_put_many_writes_every_file_in_one_command(t, tmp_path, monkeypatch):
    """A phase's small files in one round trip: contents byte for byte (binary, empty, no
    trailing newline), owner and mode, parent dirs created, an existing file replaced (new
    inode), no temp file left; secrets never world-readable on the way."""
    import grp
    import pwd

    from kdeploy.transport.base import Put
    old = tmp_path / "etc" / "old.conf"
    old.parent.mkdir()
    old.write_bytes(b"old")
    ino = os.stat(old).st_ino
    files = [Put(str(old), b"new"), Put(str(tmp_path / "pki" / "ca.key"), os.urandom(3000), 0o600),
             Put(str(tmp_path / "etc" / "empty"), b"", 0o640, "nobody", "nogroup"),
             Put(str(tmp_path / "a b" / "c'd"), b"line\nno newline"),
             Put(str(tmp_path / "etc" / "hook.sh"), b"#!/bin/sh\n", 0o755)]
    calls = []
    real = t._exec
    monkeypatch.setattr(t, "_exec", lambda *a: (calls.append(a[1]), real(*a))[1])
    t.put_many(files)
    assert calls == ["write 5 files (old.conf, ca.key, empty, c'd, hook.sh)"]
    for f in files:
        p = Path(f.path)
        st = os.stat(p)
        assert p.read_bytes() == f.data and stat.S_IMODE(st.st_mode) == f.mode
        assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == (f.owner, f.group)
        assert sorted(os.listdir(p.parent)) == sorted(Path(g.path).name for g in files
                                                      if Path(g.path).parent == p.parent)
    assert os.stat(old).st_ino != ino and stat.S_IMODE(os.stat(tmp_path / "pki").st_mode) == 0o755


def test_put_many_that_fails_changes_no_file(t, tmp_path):
    from kdeploy.transport.base import Put
    a = tmp_path / "a"
    a.write_bytes(b"old")
    with pytest.raises(TransportError, match=r"cannot write \S+/a, \S+/b \(exit code 1\)\n.*invalid user"):
        t.put_many([Put(str(a), b"new"), Put(str(tmp_path / "b"), b"x", owner="no-such-user-kd")])
    assert a.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["a"]


def test_put_many_splits_what_exceeds_one_command(t, tmp_path, monkeypatch):
    from kdeploy.transport import ssh
    from kdeploy.transport.base import Put
    monkeypatch.setattr(ssh, "MANY_BYTES", 2500)
    calls = []
    real = t._exec
    monkeypatch.setattr(t, "_exec", lambda *a: (calls.append(a[1]), real(*a))[1])
    files = [Put(str(tmp_path / f"f{i}"), bytes([i]) * 1000) for i in range(5)]
    t.put_many(files)
    assert len(calls) == 3 and all(Path(f.path).read_bytes() == f.data for f in files)


def test_get_file_streams_a_large_file_to_a_private_local_copy(t, tmp_path):
    src = tmp_path / "remote" / "etcd.db"
    src.parent.mkdir()
    data = os.urandom(5 << 20) + b"end"
    src.write_bytes(data)
    dst = tmp_path / "local" / "etcd.db"
    dst.parent.mkdir()
    assert t.get_file(str(src), dst) == len(data)
    assert dst.read_bytes() == data and stat.S_IMODE(os.stat(dst).st_mode) == 0o600
    assert sorted(os.listdir(dst.parent)) == ["etcd.db"]            # no partial file left
    assert t.get_file(str(tmp_path / "missing"), tmp_path / "local" / "x") is None
    assert not (tmp_path / "local" / "x").exists()


def test_put_secret_never_readable_by_others_during_upload(t, tmp_path, monkeypatch):
    """The sshd is local: stat the hidden temp file while the upload writes into it (SFTP: a
    file past MANY_BYTES; the one-command path writes under umask 077)."""
    from kdeploy.transport import ssh
    monkeypatch.setattr(ssh, "MANY_BYTES", 0)
    p = tmp_path / "pki" / "ca.key"
    tmp = p.parent / ".ca.key.kdeploy-tmp"
    seen = []
    real = paramiko.SFTPFile.write

    def spy(self, data):
        seen.append(stat.S_IMODE(os.stat(tmp).st_mode))
        return real(self, data)
    monkeypatch.setattr(paramiko.SFTPFile, "write", spy)
    t.put(str(p), b"-----BEGIN PRIVATE KEY-----", mode=0o600)
    assert seen and all(m == 0o600 for m in seen)


def test_put_replaces_atomically_and_ignores_stale_temp(t, tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"old")
    stale = tmp_path / ".f.kdeploy-tmp"
    stale.write_bytes(b"stale")
    os.chmod(stale, 0o666)
    ino = os.stat(p).st_ino
    t.put(str(p), b"new", mode=0o600)
    assert p.read_bytes() == b"new" and os.stat(p).st_ino != ino and not stale.exists()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_put_unknown_owner(t, tmp_path, monkeypatch):
    from kdeploy.transport import ssh
    with pytest.raises(TransportError, match=r"cannot write \S+/f .*\n.*invalid user: 'no-such-user-kd"):
        t.put(str(tmp_path / "f"), b"x", owner="no-such-user-kd")
    monkeypatch.setattr(ssh, "MANY_BYTES", 0)   # through SFTP
    with pytest.raises(TransportError, match="unknown owner or group"):
        t.put(str(tmp_path / "f"), b"x", owner="no-such-user-kd")
    assert os.listdir(tmp_path) == []


def test_put_file_verifies_sha(t, tmp_path, blob_cache):
    src = tmp_path / "kubelet.src"
    src.write_bytes(os.urandom(5 << 20))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = tmp_path / "bin" / "kubelet"
    t.put_file(str(dst), src, sha256=sha)
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == sha
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o755
    with pytest.raises(TransportError, match="does not match its sha256"):
        t.put_file(str(tmp_path / "bin" / "bad"), src, sha256="0" * 64)
    assert sorted(os.listdir(dst.parent)) == ["kubelet"]


def test_a_small_binary_changed_in_transit_is_refused_before_it_lands(t, tmp_path, monkeypatch):
    """Under 1 MiB a binary goes over SFTP; the host hashes the temp file before the rename.
    Bytes changed on the way (here: after the local check) never reach the target."""
    src = tmp_path / "loopback.src"
    src.write_bytes(os.urandom(300_000))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    real = SSHTransport._put_root

    def corrupting(self, path, write, *a):
        def bad(f):
            write(f)
            f.write(b"!")   # one byte more than the deployer sent and checked
        return real(self, path, bad, *a)
    monkeypatch.setattr(SSHTransport, "_put_root", corrupting)
    dst = tmp_path / "cni" / "loopback"
    with pytest.raises(TransportError, match="sha256 mismatch for .*loopback after upload"):
        t.put_file(str(dst), src, sha256=sha)
    assert os.listdir(dst.parent) == []


@pytest.fixture
def blob_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from kdeploy.transport import blobs
    return blobs


def _host_decompresses(blobs, monkeypatch, fmt: str) -> None:
    """This machine (the test's host) has zstd: "gzip" makes the transport look for a zstd
    tool the host lacks, as on a host without zstd."""
    import dataclasses
    assert shutil.which("zstd"), "the unit tests' host needs zstd (apt-get install zstd)"
    if fmt == "gzip":
        monkeypatch.setitem(blobs.FORMATS, "zstd",
                            dataclasses.replace(blobs.FORMATS["zstd"], tool="zstd-not-installed"))


@pytest.mark.parametrize("fmt", ["zstd", "gzip"])
def test_big_file_is_sent_compressed_once_per_content(t, tmp_path, blob_cache, monkeypatch, fmt):
    """A binary goes to every host as one cached blob: compressed once, streamed to each host,
    decompressed and sha-checked there; the bytes on the wire are the blob's. zstd where the
    host has it, gzip where not."""
    _host_decompresses(blob_cache, monkeypatch, fmt)
    src = tmp_path / "kube-proxy"
    src.write_bytes(b"".join(b"kube-proxy %08d\n" % i for i in range(300_000)))  # 5.7 MB
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    compressed = []
    real = blob_cache._compress
    monkeypatch.setattr(blob_cache, "_compress", lambda *a: (compressed.append((a[0], a[3])), real(*a)))
    sent0 = t._transport().packetizer._Packetizer__sent_bytes
    for host_path in ("a/kube-proxy", "b/kube-proxy"):
        t.put_file(str(tmp_path / host_path), src, mode=0o750, sha256=sha)
        assert (tmp_path / host_path).read_bytes() == src.read_bytes()
        assert stat.S_IMODE(os.stat(tmp_path / host_path).st_mode) == 0o750
    sent = t._transport().packetizer._Packetizer__sent_bytes - sent0
    blob = blob_cache._path(sha, fmt)
    assert compressed == [(src, fmt)] and blob.is_file()
    assert sent < 2 * blob.stat().st_size + 200_000 < src.stat().st_size  # the blob, twice
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != "kube-proxy"]  # no temp left


@pytest.mark.parametrize("fmt", ["zstd", "gzip"])
def test_a_damaged_blob_is_rebuilt_and_the_host_gets_the_right_bytes(t, tmp_path, blob_cache,
                                                                      monkeypatch, fmt):
    import gzip

    import zstandard
    _host_decompresses(blob_cache, monkeypatch, fmt)
    src = tmp_path / "etcd"
    src.write_bytes(os.urandom(1 << 20) * 2)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    wrong = gzip.compress(b"not etcd") if fmt == "gzip" else zstandard.compress(b"not etcd")
    blob_cache._path(sha, fmt).parent.mkdir(parents=True)
    blob_cache._path(sha, fmt).write_bytes(wrong)
    t.put_file(str(tmp_path / "bin" / "etcd"), src, sha256=sha)
    assert (tmp_path / "bin" / "etcd").read_bytes() == src.read_bytes()
    data = blob_cache._path(sha, fmt).read_bytes()
    assert (gzip.decompress(data) if fmt == "gzip" else zstandard.decompress(data)) == src.read_bytes()


def test_put_write_error_is_transport_error(t, tmp_path):
    d = tmp_path / "file-not-dir"
    d.write_bytes(b"")
    with pytest.raises(TransportError, match=r"host node1 \(127.0.0.1:\d+\): cannot write"):
        t.put(str(d / "x"), b"x")


@pytest.mark.skipif(not shutil.which("sudo"), reason="sudo not installed: the sudo upload path "
                    "(user temp dir + sudo install) is covered with a stub sudo in test_local.py")
def test_sudo_path_as_root(sshd, tmp_path):
    tr = _t(sshd, sudo=True).connect()
    try:
        assert tr.run(["id", "-u"]).out == "0"
        p = tmp_path / "s" / "f"
        tr.put(str(p), b"x", mode=0o600, owner="nobody", group="nogroup")
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and tr.get(str(p)) == b"x"
        assert tr.get(str(tmp_path / "none")) is None
        assert tr.get_file(str(p), tmp_path / "copy") == 1 and (tmp_path / "copy").read_bytes() == b"x"
    finally:
        tr.close()


# --- facts over ssh -------------------------------------------------------------------------

def test_facts_over_ssh(t, tmp_path):
    from kdeploy.facts import gather
    f = tmp_path / "present"
    f.write_bytes(b"abc")
    h = gather(t, paths=[str(f), str(tmp_path / "absent")], units=["kubelet"], ports=[sshd_port(t)])
    assert h.file_sha256 == {str(f): hashlib.sha256(b"abc").hexdigest(), str(tmp_path / "absent"): None}
    assert h.arch in ("amd64", "arm64") and h.os_id and h.ports_in_use == (sshd_port(t),)
    assert abs(h.clock_skew) < 1


def sshd_port(t):
    return t.port


# --- inventory -> pool ----------------------------------------------------------------------

def test_connect_all_from_inventory_names_unreachable_host(sshd, tmp_path):
    from kdeploy.model.cluster import Cluster
    from kdeploy.transport.pool import UnreachableHosts, connect_all
    shutil.copy(sshd.client_key, tmp_path / "id")
    dead = free_port()
    c = Cluster.model_validate({
        "spec": {"ssh": {"keyFile": "id", "knownHostsFile": str(sshd.known_hosts), "port": sshd.port}},
        "hosts": [{"name": "cp1", "address": "127.0.0.1", "roles": ["control-plane"]},
                  {"name": "w1", "address": "127.0.0.1", "roles": ["worker"], "ssh": {"port": dead}}],
        }).model_copy(update={"source": str(tmp_path / "cluster.yaml")})
    from kdeploy.transport import pool

    def factory(cluster, host):
        return SSHTransport.from_cluster(cluster, host, retries=1).connect()
    ts = connect_all(c, ["cp1"], factory=factory)
    assert ts["cp1"].run(["true"]).ok
    pool.close_all(ts)
    with pytest.raises(UnreachableHosts) as e:
        connect_all(c, factory=factory)
    assert "1 host(s) unreachable: w1" in e.value.message and f"127.0.0.1:{dead}" in e.value.message


# --- network namespace and bastion ----------------------------------------------------------

@pytest.fixture(scope="module")
def netns_sshd(tmp_path_factory):
    if not shutil.which("ip"):
        pytest.skip("iproute2 missing")
    with sshd_in_netns(tmp_path_factory.mktemp("nsd"), "kdeploy-test") as s:
        yield s


def test_netns_connect(netns_sshd):
    s = netns_sshd
    tr = SSHTransport("labnode", "127.0.0.1", port=s.port, key_file=s.client_key,
                      known_hosts_file=s.known_hosts, netns=s.netns, allow_agent=False).connect()
    try:
        # the command runs inside the namespace: its loopback is the namespace's own
        assert tr.run(["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).out == \
            str(os.stat(f"/run/netns/{s.netns}").st_ino)
        assert tr.run(["true"]).ok
        tr.put("/tmp/kdeploy-netns-test-" + s.netns, b"x", mode=0o600)
        assert tr.get("/tmp/kdeploy-netns-test-" + s.netns) == b"x"
        tr.run(["rm", "-f", "/tmp/kdeploy-netns-test-" + s.netns])
    finally:
        tr.close()


def test_netns_port_not_reachable_from_host_namespace(netns_sshd):
    s = netns_sshd
    tr = SSHTransport("labnode", "127.0.0.1", port=s.port, key_file=s.client_key,
                      known_hosts_file=s.known_hosts, retries=1, allow_agent=False)
    with pytest.raises(TransportError, match="host labnode"):
        tr.connect()


def test_missing_netns_is_clear(netns_sshd):
    tr = SSHTransport("labnode", "127.0.0.1", port=22, netns="kdeploy-test-does-not-exist",
                      allow_agent=False)
    with pytest.raises(TransportError, match="network namespace kdeploy-test-does-not-exist does not exist"):
        tr.connect()


def test_bastion_in_netns(netns_sshd):
    """Jump through the namespace's sshd (the bastion, itself in the netns) to the same sshd."""
    s = netns_sshd
    tr = SSHTransport("behind", "127.0.0.1", port=s.port, key_file=s.client_key,
                      known_hosts_file=s.known_hosts, netns=s.netns, allow_agent=False,
                      bastion={"address": "127.0.0.1", "port": s.port, "user": "root",
                               "key_file": str(s.client_key)})
    try:
        tr.connect()
        assert tr._jump is not None and tr.run(["echo", "via-bastion"]).out == "via-bastion"
    finally:
        tr.close()


def test_hosts_behind_one_bastion_share_one_login_to_it(netns_sshd):
    """Fan-out: 16 hosts connecting at once through a bastion log in to it once (each host is
    a channel of that connection); the connection closes with the last host."""
    from concurrent.futures import ThreadPoolExecutor

    from kdeploy.transport import ssh
    s = netns_sshd
    logins = s.log().count("Accepted publickey")
    bastion = {"address": "127.0.0.1", "port": s.port, "user": "root", "key_file": str(s.client_key)}
    ts = [SSHTransport(f"w{i}", "127.0.0.1", port=s.port, key_file=s.client_key,
                       known_hosts_file=s.known_hosts, netns=s.netns, allow_agent=False,
                       bastion=bastion) for i in range(16)]
    try:
        with ThreadPoolExecutor(16) as ex:
            outs = list(ex.map(lambda t: t.connect().run(["hostname"]).ok, ts))
        assert all(outs)
        assert len({id(t._jump) for t in ts}) == 1 and ssh._JUMPS.open_count() == 1
        deadline = time.monotonic() + 5
        while s.log().count("Accepted publickey") - logins < 17 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.log().count("Accepted publickey") - logins == 17  # 16 hosts + 1 bastion login
    finally:
        for t in ts:
            t.close()
    assert ssh._JUMPS.open_count() == 0


def test_bastion_cannot_reach_target(netns_sshd):
    s = netns_sshd
    tr = SSHTransport("behind", "127.0.0.1", port=free_port(), key_file=s.client_key,
                      known_hosts_file=s.known_hosts, netns=s.netns, allow_agent=False, retries=1,
                      bastion={"address": "127.0.0.1", "port": s.port, "key_file": str(s.client_key)})
    with pytest.raises(TransportError, match="host behind .*bastion"):
        tr.connect()


@pytest.mark.parametrize("max_sessions", [10, 3])
def test_many_commands_and_uploads_at_once_stay_within_sshds_session_limit(tmp_path_factory, tmp_path,
                                                                          blob_cache, max_sessions):
    """Lanes and parallel uploads put a dozen commands on one host at once; sshd refuses more
    sessions than MaxSessions per connection (10 by default, fewer on hardened hosts). Every one
    completes: the transport queues them, retries a refused one, and never drops the connection
    (and the others' commands) for it."""
    from concurrent.futures import ThreadPoolExecutor
    s = start_sshd(tmp_path_factory.mktemp("sshd-maxsessions"), max_sessions=max_sessions)
    try:
        tr = _t(s).connect()
        src = tmp_path / "containerd"
        src.write_bytes(b"".join(b"containerd %08d\n" % i for i in range(100_000)))  # 2 MB
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        def job(i: int):
            if i == 1:   # the SFTP session opens while the others take every slot
                return tr.get("/etc/hostname") is not None
            if i % 4 == 0:
                tr.put_file(str(tmp_path / f"up{i}" / "containerd"), src, sha256=sha)
                return (tmp_path / f"up{i}" / "containerd").read_bytes() == src.read_bytes()
            return tr.run(["sh", "-c", f"sleep 0.5; echo {i}"]).out == str(i)
        with ThreadPoolExecutor(24) as ex:
            assert all(ex.map(job, range(24)))
        tr.close()
    finally:
        s.stop()


def test_commands_that_exit_at_once_never_lose_the_connection(t, monkeypatch):
    """sshd drops the whole connection (every command on it: "ieof packet referred to
    nonexistent channel") when an EOF or data packet arrives for a channel it has closed.
    paramiko builds our EOF under the channel's lock but sends it after, so a thread switch
    there put it behind the CLOSE it sends back for a command that had already exited (seen
    on the 24-node lab: the other commands on that host's connection failed). Here every EOF
    leaves late, as after such a switch: a command running beside quick ones, without input
    or exiting without reading its input, keeps its connection and gets its answer."""
    import threading
    from paramiko.common import cMSG_CHANNEL_EOF
    tr = t._transport()
    real = tr._send_user_message

    def late_eof(m):
        if m.asbytes()[:1] == cMSG_CHANNEL_EOF:
            time.sleep(0.3)   # the host's CLOSE of a command that exits at once is in by now
        return real(m)
    monkeypatch.setattr(tr, "_send_user_message", late_eof)
    beside = []
    long = threading.Thread(target=lambda: beside.append(t.run("sleep 2; echo alive", check=False)))
    long.start()
    time.sleep(0.2)
    assert t.run(["true"]).rc == 0
    assert t.run("exit 3", input=b"x" * 100_000, check=False).rc == 3
    assert t.run(["cat"], input=b"all of it").out == "all of it"
    long.join()
    assert beside[0].rc == 0 and beside[0].out == "alive", beside
    assert t._transport() is tr   # the same connection throughout
