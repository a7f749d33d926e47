"""Facts parsers on captured output (pure: no host)."""
import pytest

from kdeploy.facts import parse as P
from kdeploy.facts.gather import parse_output
from tests.conftest import path_without

OS_RELEASE = '''PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
'''

SS = '''LISTEN 0      4096       127.0.0.1:2379       0.0.0.0:*
LISTEN 0      4096               *:6443             *:*
LISTEN 0      128          0.0.0.0:22         0.0.0.0:*
LISTEN 0      4096          [::1]:10248          [::]:*
'''

PROC_TCP = '''#proc
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1A0B 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
'''

UNITS = '''Id=kubelet.service
LoadState=loaded
ActiveState=active
UnitFileState=enabled

Id=etcd.service
LoadState=not-found
ActiveState=inactive
UnitFileState=

Id=containerd.service
LoadState=loaded
ActiveState=failed
UnitFileState=disabled
'''

STAT = ('/etc/kubernetes/admin.conf\tregular file\t600\troot\troot\t5542\n'
        '/etc/kubernetes\tdirectory\t755\troot\troot\t4096\n'
        '/usr/local/bin/kubelet\tregular file\t755\troot\troot\t123\n')
SHA = ('3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7  /etc/kubernetes/admin.conf\n'
       'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  /usr/local/bin/kubelet\n')


def test_os_release():
    assert P.parse_os_release(OS_RELEASE) == {
        "ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": "bookworm",
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}
    assert P.parse_os_release("garbage\n=\nID='ubuntu'\n") == {"ID": "ubuntu"}


def test_uname_arch_mapping():
    assert P.parse_uname("x86_64\n6.1.0-18-amd64\n") == ("amd64", "6.1.0-18-amd64")
    assert P.parse_uname("aarch64\n6.1.0\n") == ("arm64", "6.1.0")
    assert P.parse_uname("") == ("", "")


def test_swaps():
    head = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    assert P.parse_swaps(head) is False
    assert P.parse_swaps(head + "/dev/sda2  partition\t1048572\t0\t-2\n") is True
    assert P.parse_swaps("") is False


def test_time():
    assert P.parse_time("1700000000.123456789\n") == 1700000000.123456789
    assert P.parse_time("1700000000.N\n") == 1700000000.0  # busybox: no %N
    assert P.parse_time("") == 0.0


def test_df_rows_in_argument_order():
    out = ("Filesystem     1-blocks       Used   Available Capacity Mounted on\n"
           "/dev/vda1   41083600896 9000000000 30000000000      24% /\n"
           "/dev/vdb1   10000000000 1000000000  8000000000      10% /var\n")
    assert P.parse_df(out) == {"/": 30000000000, "/var": 8000000000}
    same = out.splitlines()[:2] + [out.splitlines()[1]]
    assert P.parse_df("\n".join(same)) == {"/": 30000000000, "/var": 30000000000}


def test_ports_ss_and_proc_fallback():
    assert P.parse_ports(SS, [6443, 2379, 2380, 10248, 10250]) == (2379, 6443, 10248)
    # 0x094B = 2379, 0x192B = 6443 (v6), 0x1A0B = 6667 but ESTABLISHED (01): not listening
    assert P.parse_ports(PROC_TCP, [2379, 6443, 6667]) == (2379, 6443)
    assert P.parse_ports("", [22]) == ()


def test_units():
    u = P.parse_units(UNITS, ["kubelet", "etcd.service", "containerd", "missing"])
    assert u == {"kubelet": {"active": "active", "enabled": "enabled"},
                 "etcd.service": {"active": "inactive", "enabled": "not-found"},
                 "containerd": {"active": "failed", "enabled": "disabled"},
                 "missing": {"active": "unknown", "enabled": "unknown"}}


def test_files():
    sha, st = P.parse_files(STAT, SHA, ["/etc/kubernetes/admin.conf", "/etc/kubernetes",
                                        "/usr/local/bin/kubelet", "/etc/nope"])
    assert sha == {"/etc/kubernetes/admin.conf": "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7",
                   "/etc/kubernetes": "dir",
                   "/usr/local/bin/kubelet": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                   "/etc/nope": None}
    assert st["/etc/kubernetes/admin.conf"] == {"type": "regular file", "mode": 0o600, "owner": "root",
                                                "group": "root", "size": 5542}
    assert "/etc/nope" not in st


def test_modules_cgroup_cpu_mem():
    assert P.parse_modules("br_netfilter builtin\noverlay missing\n") == {
        "br_netfilter": "builtin", "overlay": "missing"}
    assert P.parse_cgroup("cgroup2fs\n") == 2 and P.parse_cgroup("tmpfs") == 1
    assert P.parse_cgroup("") is None
    assert P.parse_cpu_mem("4\nMemTotal:        8000000 kB\n") == (4, 8000000 * 1024)


def _sections(**kw) -> str:
    return "".join(f"\n{P.SECTION}{k}\n{v}" for k, v in kw.items()) + f"\n{P.SECTION}end\n"


def test_parse_output_whole():
    out = _sections(os_release=OS_RELEASE, uname="x86_64\n6.1.0-18-amd64", hostname="cp1",
                    hostname_resolves="yes", swaps="Filename Type Size Used Priority",
                    time="1700000010.5", df="", systemd="yes", python3="/usr/bin/python3",
                    cgroup="cgroup2fs", cpu_mem="2\nMemTotal: 4000 kB",
                    modules="br_netfilter loaded\noverlay available", ports=SS, units=UNITS,
                    file_stat=STAT, file_sha=SHA)
    h = parse_output("cp1", out, paths=["/etc/kubernetes/admin.conf"], units=["kubelet"],
                     ports=[6443, 10250], local_time=1700000000.0, rtt=0.01)
    assert (h.os_id, h.os_version, h.arch, h.hostname) == ("debian", "12", "amd64", "cp1")
    assert h.hostname_resolves and h.has_systemd and not h.swap_active
    assert h.modules_ok == {"br_netfilter": True, "overlay": True}
    assert h.ports_in_use == (6443,) and h.port_in_use(6443) and not h.port_in_use(10250)
    assert h.unit("kubelet")["active"] == "active" and h.unit("other")["enabled"] == "not-found"
    assert h.clock_skew == 10.5 and h.cgroup_version == 2 and h.python3 == "/usr/bin/python3"


def test_parse_output_incomplete_is_error():
    import pytest
    from kdeploy.errors import TransportError
    with pytest.raises(TransportError, match="incomplete"):
        parse_output("cp1", f"{P.SECTION}os_release\nID=debian\n")


def test_script_carries_params_and_quotes_paths():
    s = P.build_script(["/etc/a b", "/etc/$x"], ["kubelet"], [6443])
    assert P.params_of(s) == {"paths": ["/etc/a b", "/etc/$x"], "units": ["kubelet"], "ports": [6443],
                            "etcd": False, "contents": []}
    assert "'/etc/a b'" in s and "'/etc/$x'" in s


@pytest.mark.parametrize("hasher", ["openssl", "sha256sum"])
def test_sha_cache_reuses_hashes_until_the_file_changes(tmp_path, hasher):
    """The facts script's hash cache: a cached hash is reused only while size, ctime and inode
    are unchanged; an atomic replace (new inode) is hashed again. The hashes are OpenSSL's or,
    on a host without it, sha256sum's."""
    import hashlib
    import os
    import subprocess

    from kdeploy.facts.parse import SHA_CACHE, SHA_CACHED

    f = tmp_path / "bin"
    f.write_bytes(b"one")
    cache = tmp_path / "sha256.cache"
    script = (SHA_CACHED.replace(SHA_CACHE, str(cache)).replace("/var/lib/kdeploy", str(tmp_path))
              .replace("@PATHS@", str(f)))

    env = {"PATH": path_without(tmp_path, "sha256sum" if hasher == "openssl" else "openssl")}

    def run():
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                              env=env).stdout

    assert run() == f"{hashlib.sha256(b'one').hexdigest()}  {f}\n"
    # poison the cache entry: a reused entry shows the poisoned hash
    cache.write_text(cache.read_text().replace(hashlib.sha256(b"one").hexdigest(), "0" * 64))
    assert run().startswith("0" * 64)
    tmp = tmp_path / "bin.new"
    tmp.write_bytes(b"two")
    os.replace(tmp, f)
    assert run() == f"{hashlib.sha256(b'two').hexdigest()}  {f}\n"


def test_sha_cache_keeps_entries_of_paths_not_looked_at(tmp_path):
    import subprocess

    from kdeploy.facts.parse import SHA_CACHE, SHA_CACHED
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    cache = tmp_path / "sha256.cache"

    def run(*paths):
        script = (SHA_CACHED.replace(SHA_CACHE, str(cache)).replace("/var/lib/kdeploy", str(tmp_path))
                  .replace("@PATHS@", " ".join(map(str, paths))))
        subprocess.run(["sh", "-c", script], check=True, capture_output=True)

    run(a, b)
    run(a)
    assert {line.split()[-1] for line in cache.read_text().splitlines()} == {str(a), str(b)}


def test_sha_prime_records_known_sums_that_the_facts_script_then_reuses(tmp_path):
    """After an upload the engine records the checked sums (no hashing on the host); the facts
    script reports them without hashing, keeps other entries, and hashes a file changed since."""
    import hashlib
    import os
    import subprocess

    from kdeploy.facts.parse import SHA_CACHE, SHA_CACHED, SHA_PRIME
    a, b = tmp_path / "kubelet", tmp_path / "etcd"
    a.write_bytes(b"kubelet")
    b.write_bytes(b"etcd")
    cache = tmp_path / "sha256.cache"

    def sh(script):
        script = script.replace(SHA_CACHE, str(cache)).replace("/var/lib/kdeploy", str(tmp_path))
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout

    sh(SHA_CACHED.replace("@PATHS@", str(b)))  # an entry of another path
    sh(SHA_PRIME.replace("@PAIRS@", f"{'1' * 64} {a}"))  # a sum the upload checked
    assert sh(SHA_CACHED.replace("@PATHS@", f"{a} {b}")) == (
        f"{'1' * 64}  {a}\n{hashlib.sha256(b'etcd').hexdigest()}  {b}\n")
    new = tmp_path / "kubelet.new"
    new.write_bytes(b"kubelet 2")
    os.replace(new, a)
    assert sh(SHA_CACHED.replace("@PATHS@", str(a))) == f"{hashlib.sha256(b'kubelet 2').hexdigest()}  {a}\n"


def test_component_versions_are_cached_until_the_binary_changes(tmp_path):
    """A no-op's facts do not start every Go binary for its --version: the answer is kept
    while size, ctime and inode are unchanged; a replaced binary is asked again."""
    import os
    import subprocess

    from kdeploy.facts.parse import VERSIONS_CACHE, VERSIONS_SCRIPT
    bindir, calls = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()

    def install(version: str) -> None:
        new = bindir / "kubelet.new"
        new.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'Kubernetes {version}'\n")
        new.chmod(0o755)
        os.replace(new, bindir / "kubelet")

    script = ("S() { :; }\n" + VERSIONS_SCRIPT.replace(VERSIONS_CACHE, str(tmp_path / "versions.cache"))
              .replace("/usr/local/bin/", f"{bindir}/"))

    def versions() -> str:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout

    install("v1.36.3")
    assert versions() == versions() == "kubelet Kubernetes v1.36.3\n"
    assert calls.read_text().count("x") == 1
    install("v1.37.2")
    assert versions() == "kubelet Kubernetes v1.37.2\n"
    assert calls.read_text().count("x") == 2


def test_the_facts_read_the_files_asked_for_in_the_same_run(tmp_path):
    """The files a plan reads (the ones holding blocks, the journal) come with the facts, run
    here by sh on real files: present (any bytes), empty, missing, a name with a space; the run
    record never holds their text."""
    import subprocess
    a, empty, spaced = tmp_path / "hosts", tmp_path / "empty", tmp_path / "a b"
    a.write_bytes(b"192.0.2.1 cp1\n\xff\x00 binary\n")
    empty.write_bytes(b"")
    spaced.write_text("x\n")
    paths = [str(a), str(empty), str(tmp_path / "missing"), str(spaced)]
    s = P.build_script([str(a)], [], [], None, paths)
    out = subprocess.run(["sh", "-c", s], capture_output=True, text=True, check=True).stdout
    h = parse_output("cp1", out, paths=[str(a)], contents=paths)
    assert h.contents == {str(a): a.read_bytes(), str(empty): b"", str(tmp_path / "missing"): None,
                          str(spaced): b"x\n"}
    assert "contents" not in h.to_dict()
    # a section that does not parse: no contents (observe() then reads the files itself)
    broken = out.replace("\nF\n", "\nF\n!!", 1)
    assert parse_output("cp1", broken, paths=[str(a)], contents=paths).contents == {}
