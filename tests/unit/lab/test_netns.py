"""connect_in_netns against a listener inside a network namespace created by the test."""
import os
import shutil
import socket
import subprocess
import threading
import uuid

import pytest

from kdeploy.errors import TransportError
from kdeploy.netns import connect_in_netns, run_in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="needs root and iproute2 to create a network namespace")


def _netns_inode() -> int:
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


@pytest.fixture
def netns():
    name = f"kdeploy-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def _listen_in(netns: str):
    """A listener on 127.0.0.1 inside netns (the host's 127.0.0.1 is another stack)."""
    def make():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        return s
    srv = run_in_netns(netns, make)
    port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        c.sendall(b"hello from the namespace\n")
        c.close()
    threading.Thread(target=serve, daemon=True).start()
    return srv, port


def test_connects_inside_the_namespace_only(netns):
    before = _netns_inode()
    srv, port = _listen_in(netns)
    try:
        # from the host namespace the port is not there ...
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        # ... from inside it is
        s = connect_in_netns(netns, "127.0.0.1", port, timeout=2)
        with s:
            assert s.gettimeout() == 2
            assert s.makefile("rb").readline() == b"hello from the namespace\n"
    finally:
        srv.close()
    assert _netns_inode() == before, "the calling thread must never change namespace"


def test_absolute_path_and_none(netns):
    srv, port = _listen_in(netns)
    try:
        connect_in_netns(f"/run/netns/{netns}", "127.0.0.1", port, timeout=2).close()
    finally:
        srv.close()
    with socket.socket() as host_srv:
        host_srv.bind(("127.0.0.1", 0))
        host_srv.listen(1)
        connect_in_netns(None, "127.0.0.1", host_srv.getsockname()[1], timeout=2).close()


def test_refused_is_an_oserror(netns):
    with pytest.raises(ConnectionRefusedError):
        connect_in_netns(netns, "127.0.0.1", 1, timeout=2)


def test_missing_namespace_is_a_transport_error():
    with pytest.raises(TransportError) as e:
        connect_in_netns("kdeploy-no-such-netns", "127.0.0.1", 22, timeout=1)
    assert e.value.hint
