"""The shared Jinja2 environment: strict, no autoescape, errors name template file:line."""
from __future__ import annotations

import pytest

from kdeploy.errors import KdeployError
from kdeploy.render import env as renv
from kdeploy.render.env import TEMPLATES_DIR, make_environment, render


def test_templates_dir_is_repo_templates():
    assert TEMPLATES_DIR.name == "templates" and (TEMPLATES_DIR / "node").is_dir()


def test_environment_is_shared_and_strict():
    e = renv.environment()
    assert e is renv.environment()
    assert e.autoescape is False and e.keep_trailing_newline and e.trim_blocks and e.lstrip_blocks


def test_undefined_names_template_and_line(tmp_path):
    (tmp_path / "a.j2").write_text("line one\n{{ present }}\n{{ missing }}\n")
    env = make_environment(tmp_path)
    assert render("a.j2", {"present": "<&>", "missing": 1}, env) == "line one\n<&>\n1\n"
    with pytest.raises(KdeployError) as ei:
        render("a.j2", {"present": 1}, env)
    assert "templates/a.j2:3" in ei.value.message and "missing" in ei.value.message


def test_error_in_included_template_names_it(tmp_path):
    (tmp_path / "outer.j2").write_text("x\n{% include 'inner.j2' %}\n")
    (tmp_path / "inner.j2").write_text("\n\n{{ nope.attr }}\n")
    with pytest.raises(KdeployError) as ei:
        render("outer.j2", {}, make_environment(tmp_path))
    assert "templates/inner.j2:3" in ei.value.message


def test_syntax_error_and_missing_template(tmp_path):
    (tmp_path / "bad.j2").write_text("ok\n{% if %}\n")
    env = make_environment(tmp_path)
    with pytest.raises(KdeployError, match=r"templates/bad.j2:2: syntax error"):
        render("bad.j2", {}, env)
    with pytest.raises(KdeployError, match="template not found"):
        render("none.j2", {}, env)


def test_every_template_compiles():
    env = make_environment()
    names = env.list_templates(filter_func=lambda n: n.endswith(".j2"))
    assert len(names) > 15
    for n in names:
        env.get_template(n)
