"""The kdeploy command line. One module per verb; each exposes `app` (a Typer) or `register(app)`."""
from __future__ import annotations

import importlib
import sys

import typer

from kdeploy import __version__
from kdeploy.errors import KdeployError

app = typer.Typer(
    name="kdeploy",
    help="Declarative Kubernetes deployment over SSH: inventory -> plan -> converge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # never print tracebacks with locals (they leak secrets)
)

# (module, sub-command name or None when the module registers top-level commands itself)
_VERBS = [
    ("inventory", "inventory"),
    ("certs", "certs"),
    ("render", None),
    ("plan", None),
    ("up", None),
    ("upgrade", None),
    ("node", "node"),
    ("etcd", "etcd"),
    ("reset", None),
    ("verify", None),
    ("cis", None),
    ("artifacts", "artifacts"),
    ("lab", "lab"),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """kdeploy turns bare Linux machines into a Kubernetes cluster."""


for _mod, _name in _VERBS:
    try:
        m = importlib.import_module(f"kdeploy.cli.{_mod}")
    except ModuleNotFoundError as e:  # a verb not written yet
        if e.name != f"kdeploy.cli.{_mod}":
            raise
        continue
    if _name is None:
        m.register(app)
    else:
        app.add_typer(m.app, name=_name)


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # click returns a typer.Exit's code instead of exiting
        sys.exit(rc if isinstance(rc, int) else 0)
    except KdeployError as e:
        typer.secho(f"error: {e.message}", fg="red", err=True)
        if e.hint:
            typer.echo(f"hint: {e.hint}", err=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except _click_errors() as e:  # usage errors: bad option, missing -i ...
        e.show()
        # click's usage exit code is 2, which `plan` uses for "changes pending"
        sys.exit(USAGE_EXIT if e.exit_code == 2 else e.exit_code)


def _click_errors() -> tuple[type[Exception], ...]:
    """ClickException of click and of the copy of click that newer typer versions bundle."""
    out = []
    try:
        import click
        out.append(click.exceptions.ClickException)
    except ImportError:  # pragma: no cover
        pass
    try:
        from typer._click.exceptions import ClickException
        out.append(ClickException)
    except ImportError:
        pass
    return tuple(out)


USAGE_EXIT = 64  # EX_USAGE
