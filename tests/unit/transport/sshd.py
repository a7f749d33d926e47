"""A throwaway OpenSSH server for tests: foreground sshd on 127.0.0.1 (optionally inside a
network namespace the test created), tmp host key, tmp authorized key, PidFile in tmp.
Never enabled as a service; stopped by its PID."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
                                "/usr/lib/ssh/sftp-server") if os.path.exists(p)), None)


def sshd_missing_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (sshd must run as root to log in as root)"
    if not os.path.exists(SSHD) or SFTP_SERVER is None:
        return "openssh-server not installed (apt-get install -y openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen missing (openssh-client)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "kdeploy-test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)
    return path


@dataclass
class Sshd:
    dir: Path
    port: int
    host_key: Path
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen
    netns: str | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return (self.dir / "sshd.log").read_text()
        except OSError:
            return ""


def start_sshd(d: Path, *, netns: str | None = None, port: int | None = None,
               client_key: Path | None = None, max_sessions: int = 50) -> Sshd:
    d.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    host_key = keygen(d / "host_ed25519", "kdeploy-test-host")
    client_key = client_key or keygen(d / "client_ed25519")
    (d / "authorized_keys").write_text(Path(str(client_key) + ".pub").read_text())
    port = port or free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
PrintMotd no
AcceptEnv LANG
Subsystem sftp {SFTP_SERVER}
LogLevel VERBOSE
MaxSessions {max_sessions}
MaxStartups 50:30:100
""")
    pub = Path(str(host_key) + ".pub").read_text().split()
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    argv = [SSHD, "-D", "-e", "-f", str(cfg)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    s = Sshd(d, port, host_key, client_key, known, proc, netns)
    _wait_listening(s)
    return s


def _wait_listening(s: Sshd, timeout: float = 10) -> None:
    from kdeploy.netns import connect_in_netns
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({s.proc.returncode}):\n{s.log()}")
        try:
            connect_in_netns(s.netns, "127.0.0.1", s.port, 1).close()
            return
        except OSError:
            time.sleep(0.05)
    s.stop()
    raise RuntimeError(f"sshd did not listen on {s.port}:\n{s.log()}")


@contextmanager
def sshd_in_netns(d: Path, prefix: str):
    """A throwaway network namespace (loopback up) with an sshd inside; both removed after."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    s = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        s = start_sshd(d, netns=name)
        yield s
    finally:
        if s is not None:
            s.stop()
        subprocess.run(["ip", "netns", "del", name], check=True)
