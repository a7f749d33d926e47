"""Deployer CPU per MB sent over paramiko, by cipher: what a deploy's uploads cost the deployer.

Starts a throwaway sshd on 127.0.0.1 (tests/unit/transport/sshd.py), streams SIZE MB of
incompressible data into `cat > /dev/null` over one connection per cipher, three times each,
and prints the median wall seconds and deployer CPU seconds (this process, paramiko's threads
included), with each cipher's ratio to paramiko's default (aes128-ctr + hmac-sha2-256).

    python3 bench/ssh_cipher.py [--mb 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paramiko  # noqa: E402

from tests.unit.transport.sshd import start_sshd  # noqa: E402

CIPHERS = ("aes128-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def send(port: int, key: Path, known: Path, cipher: str, data: bytes, times: int) -> tuple[float, float]:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def factory(sock, **kw):
        t = paramiko.Transport(sock, **kw)
        opts = t.get_security_options()
        opts.ciphers = (cipher,) + tuple(c for c in opts.ciphers if c != cipher)
        return t
    client.connect("127.0.0.1", port=port, username="root", key_filename=str(key),
                   allow_agent=False, look_for_keys=False, transport_factory=factory)
    got = client.get_transport().local_cipher
    assert got == cipher, (got, cipher)
    t0, c0 = time.monotonic(), time.process_time()
    for _ in range(times):
        chan = client.get_transport().open_session()
        chan.exec_command("cat > /dev/null")
        chan.sendall(data)
        chan.shutdown_write()
        chan.recv_exit_status()
        chan.close()
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    client.close()
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    a = ap.parse_args()
    data = os.urandom(8 << 20)
    times = max(1, a.mb // 8)
    with tempfile.TemporaryDirectory() as d:
        s = start_sshd(Path(d) / "sshd")
        try:
            rows = {}
            for c in CIPHERS:
                runs = [send(s.port, s.client_key, s.known_hosts, c, data, times) for _ in range(3)]
                rows[c] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        finally:
            s.stop()
    base = rows[CIPHERS[0]]
    mb = times * 8
    print(f"{mb} MB into `cat > /dev/null` over one paramiko {paramiko.__version__} connection, "
          "median of 3")
    print(f"{'cipher':<24} {'wall s':>7} {'CPU s':>6} {'CPU ms/MB':>10} {'CPU ratio':>10}")
    for c, (wall, cpu) in rows.items():
        print(f"{c:<24} {wall:>7.2f} {cpu:>6.2f} {cpu / mb * 1000:>10.2f} {cpu / base[1]:>10.2f}")


if __name__ == "__main__":
    main()
