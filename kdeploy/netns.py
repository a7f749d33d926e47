"""TCP connections from inside a network namespace, without moving the calling thread.

    sock = connect_in_netns("kdeploy-lab-lab", "192.168.57.11", 22, timeout=5)
    client.connect("192.168.57.11", sock=sock, ...)   # paramiko

A socket belongs to the network namespace it was created in, for its whole life, whatever
namespace the thread using it is in later. So a short-lived thread enters the namespace
(setns(CLONE_NEWNET) only changes that thread), creates and connects the socket, and ends;
the main thread never changes namespace. Needs CAP_SYS_ADMIN (root) for setns.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading

from kdeploy.errors import TransportError

CLONE_NEWNET = getattr(os, "CLONE_NEWNET", 0x40000000)
NETNS_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    """`ip netns` name -> /run/netns/<name>; an absolute path (e.g. /proc/PID/ns/net) stays."""
    return netns if netns.startswith("/") else os.path.join(NETNS_DIR, netns)


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(netns: str, fn, *args, **kwargs):
    """Run fn(*args) in a fresh thread that has entered `netns`; return its result or raise its error."""
    path = netns_path(netns)
    box: dict = {}

    def worker() -> None:
        try:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise TransportError(f"network namespace {netns} does not exist ({path})",
                                     "is the lab up? see `kdeploy lab status`") from None
            try:
                try:
                    _setns(fd, CLONE_NEWNET)
                except PermissionError:
                    raise TransportError(f"cannot enter network namespace {netns}: permission denied",
                                         "entering a network namespace needs root (CAP_SYS_ADMIN)") from None
            finally:
                os.close(fd)
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=worker, name=f"netns:{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def connect_in_netns(netns: str | None, host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to host:port, created inside /run/netns/<netns> (or here if None).

    Connection failures raise the usual OSError (ConnectionRefusedError, socket.timeout, ...),
    as socket.create_connection does; a missing namespace or no permission raises TransportError.
    The returned socket has `timeout` set; callers may change it.
    """
    if not netns:
        return socket.create_connection((host, port), timeout=timeout)
    return run_in_netns(netns, socket.create_connection, (host, port), timeout=timeout)
