"""Per-machine supervisor: `python -m kdeploy.lab.supervisor launch.json`.

Started detached (own session) by `lab up`. It moves itself into the machine's cgroups (so the
machine does not share the host's root cgroups), then runs systemd-nspawn and starts it again
when it exits with 133 (`reboot` inside the machine). SIGTERM/SIGINT: forwarded to nspawn
(-> clean poweroff of the machine), then the supervisor exits when nspawn has.
launch.json: {"argv": [...], "cgroups": [dir, ...], "pidfile": path, "env_unset": [...]}
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

REBOOT_EXIT = 133


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(config_path: str) -> int:
    with open(config_path) as f:
        cfg = json.load(f)
    for d in cfg["cgroups"]:
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    env = {k: v for k, v in os.environ.items() if k not in cfg.get("env_unset", [])}
    state = {"stop": False, "child": None}

    def on_signal(signum, frame):
        state["stop"] = True
        if state["child"] is not None:
            try:
                state["child"].send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    rc = 0
    while not state["stop"]:
        print(f"[{time.strftime('%T')}] kdeploy-lab supervisor: starting {' '.join(cfg['argv'])}", flush=True)
        child = subprocess.Popen(cfg["argv"], stdin=subprocess.DEVNULL, env=env)
        state["child"] = child
        _write_atomic(cfg["pidfile"], str(child.pid))
        if state["stop"]:  # signal arrived before child was known
            child.send_signal(signal.SIGTERM)
        rc = child.wait()
        print(f"[{time.strftime('%T')}] kdeploy-lab supervisor: nspawn exited {rc}", flush=True)
        if rc != REBOOT_EXIT:
            break
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
