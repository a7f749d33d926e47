"""kdeploy lab: local Debian machines (systemd-nspawn containers) to deploy onto."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kdeploy.lab import api
from kdeploy.lab.backend import BACKENDS

app = typer.Typer(help="Local lab machines (systemd-nspawn) to try kdeploy on.", no_args_is_help=True)

NAME = typer.Option(api.DEFAULT_NAME, "--name", "-n", help="Lab name (several labs can run side by side).")


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


@app.command()
def up(
    output: Path = typer.Option(..., "--output", "-o", help="Write the lab's kdeploy inventory here."),
    masters: int = typer.Option(1, "--masters", help="Control-plane+etcd machines (3 for HA)."),
    workers: int = typer.Option(2, "--workers", help="Worker machines (0: masters are workers too)."),
    name: str = NAME,
    backend: str = typer.Option("nspawn", "--backend", help=f"One of: {', '.join(BACKENDS)}."),
    timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for SSH on every machine."),
) -> None:
    """Start Debian 12 machines and write an inventory `kdeploy up -i` can use as is."""
    # Ctrl-C / kill PID -> undo what was started (also when SIGINT was inherited as ignored)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    r = api.up(name=name, masters=masters, workers=workers, output=output, backend=backend,
               log=_log, ssh_timeout=timeout)
    if r.get("rootfs_build_s") is not None:
        _log(f"base rootfs built in {r['rootfs_build_s']:.1f}s (cached for next time)")
    _log(f"lab '{name}' up: {len(r['machines'])} machine(s) answer SSH {r['up_to_ssh_s']:.1f}s after launch")
    for m in r["machines"]:
        _log(f"  {m['name']:4} {m['address']:15} {','.join(m['roles'])}")
    _log(f"inventory: {r['inventory']}")
    _log(f"next: kdeploy up -i {r['inventory']} --artifacts DIR;  shell: kdeploy lab ssh --name {name} m1")


@app.command()
def status(
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Only this lab (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List labs and their machines: address, running/stopped, SSH answering."""
    labs = api.status(name=name)
    if as_json:
        typer.echo(json.dumps(labs, indent=2))
        return
    if not labs:
        typer.echo("no lab is up")
        return
    for lab in labs:
        typer.echo(f"lab {lab['name']} ({lab['backend']}, netns {lab['netns']}, {lab['phase']}) "
                   f"inventory: {lab['inventory']}")
        for m in lab["machines"]:
            mem = f"{m['memory_bytes'] / 2**20:.0f}MiB" if m["memory_bytes"] is not None else "-"
            typer.echo(f"  {m['name']:4} {m['address']:15} {m['state']:8} "
                       f"ssh={'yes' if m['ssh'] else 'no':3} mem={mem:7} {','.join(m['roles'])}")


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    machine: str = typer.Argument(..., help="Machine name (m1, m2, ...)."),
    command: Optional[List[str]] = typer.Argument(None, help="Command to run (after --)."),
    name: str = NAME,
) -> None:
    """Open a shell on a lab machine, or run a command: kdeploy lab ssh m1 -- uname -a"""
    argv = api.ssh_argv(name=name, machine=machine, command=command or None,
                        tty=None if sys.stdin.isatty() else False)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


@app.command()
def down(
    name: str = NAME,
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds for a clean poweroff before SIGKILL."),
) -> None:
    """Stop the machines and remove everything the lab created (also after a crashed up)."""
    s = api.down(name=name, log=_log, timeout=timeout)
    _log(f"lab '{name}' down in {s:.1f}s")
