"""stdio <-> TCP proxy whose socket lives in a network namespace: an ssh ProxyCommand.

    ssh -o ProxyCommand="python3 -m kdeploy.netns_proxy kdeploy-lab-lab %h %p" root@192.168.57.11

The socket is created inside /run/netns/<netns> by kdeploy.netns.connect_in_netns (only a
short-lived thread enters the namespace), then bytes are copied both ways until each side ends.
Used by the Ansible transport, whose ssh cannot take a ready-made socket the way paramiko can;
needs no extra package (socat + nsenter would do the same). Needs root (setns).
Errors go to stderr as one line (ssh shows it) and exit code 255, never a traceback.
"""
from __future__ import annotations

import os
import socket
import sys
import threading

USAGE = "usage: python3 -m kdeploy.netns_proxy NETNS HOST PORT  (NETNS '-': this namespace)"
_BUF = 1 << 16


def _stdin_to_sock(sock: socket.socket, fd: int) -> None:
    try:
        while True:
            data = os.read(fd, _BUF)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _sock_to_stdout(sock: socket.socket, fd: int) -> None:
    try:
        while True:
            data = sock.recv(_BUF)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
    except OSError:
        pass


def proxy(sock: socket.socket, in_fd: int = 0, out_fd: int = 1) -> None:
    """Copy in_fd -> sock and sock -> out_fd; return when the remote side has closed."""
    sock.settimeout(None)
    t = threading.Thread(target=_stdin_to_sock, args=(sock, in_fd), daemon=True)
    t.start()
    _sock_to_stdout(sock, out_fd)  # the server closing ends the session


def main(argv: list[str] | None = None) -> int:
    from kdeploy.errors import KdeployError
    from kdeploy.netns import connect_in_netns

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[2].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    netns, host, port = args[0], args[1], int(args[2])
    try:
        sock = connect_in_netns(None if netns == "-" else netns, host, port, 10.0)
    except KdeployError as e:
        print(f"kdeploy.netns_proxy: {e.message}", file=sys.stderr)
        return 255
    except OSError as e:
        print(f"kdeploy.netns_proxy: cannot connect to {host}:{port} in network namespace "
              f"{netns}: {e.strerror or e}", file=sys.stderr)
        return 255
    with sock:
        proxy(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
