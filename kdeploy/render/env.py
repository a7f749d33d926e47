"""The one Jinja2 environment kdeploy renders host files with.

Templates live in <repo>/templates. The environment is strict (an undefined variable is an
error), never autoescapes (these are configs, not HTML), keeps trailing newlines, and trims
block tags so templates can be laid out readably. Compiled templates are cached per process:
the environment is built once (see `environment()`).

Every template error surfaces as a KdeployError naming the template file and line.
"""
from __future__ import annotations

import json
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

import kdeploy
from kdeploy.errors import KdeployError

# templates/ lives at the repo root; kdeploy/templates is a symlink to it, which wheels ship
# as package data (setuptools copies the files it points to)
TEMPLATES_DIR = Path(kdeploy.__file__).resolve().parent / "templates"


class TemplateError(KdeployError):
    """A template failed to load or render (a bug in kdeploy or its templates)."""

    def __init__(self, template: str, line: int | None, detail: str):
        where = f"templates/{template}" + (f":{line}" if line else "")
        super().__init__(f"{where}: {detail}",
                         "this is a kdeploy bug (or an edited template): report it with the message above")
        self.template, self.line = template, line


def _yaml_str(value: Any) -> str:
    """A YAML/JSON double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(str(value))


def _tojson_compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def make_environment(path: Path | str | None = None) -> jinja2.Environment:
    """A new environment over `path` (default: the repository's templates/)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path or TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        cache_size=-1,            # never evict a compiled template
    )
    env.filters["yaml_str"] = _yaml_str
    env.filters["json"] = _tojson_compact
    env.filters["shquote"] = shlex.quote
    return env


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The shared environment (built once per process)."""
    return make_environment()


def globals_merged(context: dict[str, Any], env: jinja2.Environment | None = None) -> dict[str, Any]:
    """`context` on top of the environment's globals, for render(..., with_globals=True)."""
    env = env or environment()
    return {**env.globals, **context}


def _template_where(exc: BaseException, name: str,
                    env: jinja2.Environment) -> tuple[str, int | None]:
    """(template, line) where `exc` happened: the innermost template frame of its traceback.
    Jinja rewrites tracebacks so template frames carry the template's file name and line."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.name or name, exc.lineno
    roots = [str(Path(p).resolve()) for p in getattr(env.loader, "searchpath", ())]
    where: tuple[str, int | None] = (name, None)
    tb = exc.__traceback__
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        tmpl = tb.tb_frame.f_globals.get("__jinja_template__")
        if tmpl is not None:
            where = (tmpl.name or name, tmpl.get_corresponding_lineno(tb.tb_lineno))
        else:
            for root in roots:
                if fname.startswith(root + "/"):
                    where = (fname[len(root) + 1:], tb.tb_lineno)
                    break
        tb = tb.tb_next
    return where


_compiled: dict[tuple[int, str], jinja2.Template] = {}


def get_template(name: str, env: jinja2.Environment | None = None) -> jinja2.Template:
    env = env or environment()
    key = (id(env), name)
    tmpl = _compiled.get(key)
    if tmpl is not None and tmpl.environment is env:
        return tmpl
    try:
        tmpl = _compiled[key] = env.get_template(name)
        return tmpl
    except jinja2.TemplateNotFound:
        raise TemplateError(name, None, "template not found") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(e.name or name, e.lineno, f"syntax error: {e.message}") from None


def render(name: str, context: dict[str, Any], env: jinja2.Environment | None = None, *,
           with_globals: bool = False) -> str:
    """Render template `name` with `context`; errors become TemplateError (file:line).

    with_globals=True promises that `context` already holds the environment's globals
    (see `globals_merged`), which skips Jinja's per-render merge of globals and context: the
    fast path when rendering thousands of hosts.
    """
    env = env or environment()
    tmpl = get_template(name, env)
    try:
        if with_globals:
            return env.concat(tmpl.root_render_func(tmpl.new_context(context, shared=True)))
        return tmpl.render(context)
    except KdeployError:
        raise
    except jinja2.UndefinedError as e:
        raise TemplateError(*_template_where(e, name, env), f"undefined: {e.message}") from None
    except jinja2.TemplateError as e:
        raise TemplateError(*_template_where(e, name, env), str(e)) from None
    except Exception as e:  # a filter or a value misbehaved
        raise TemplateError(*_template_where(e, name, env), f"{e.__class__.__name__}: {e}") from None
