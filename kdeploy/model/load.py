"""Load an inventory file into a validated Cluster.

Two formats:
- kdeploy's own YAML (apiVersion kdeploy.io/v1alpha1, kind Cluster), with line numbers kept so
  every error names file:line and the field path;
- a kubespray-style Ansible inventory (INI or YAML with groups kube_control_plane, etcd,
  kube_node, k8s_cluster), parsed by ansible-core's own inventory parser.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdeploy.errors import InventoryError
from kdeploy.model.cluster import API_VERSION, Cluster
from kdeploy.model.validate import Problem, check_cluster

Path_ = tuple[str | int, ...]


class _LineMap(dict):
    """field path -> 1-based line in the YAML file."""

    def line_for(self, path: Path_) -> int | None:
        path = tuple(path)
        while path:
            if path in self:
                return self[path]
            path = path[:-1]
        return self.get((), None)


def _walk(node: yaml.Node, path: Path_, lines: _LineMap, problems: list[Problem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            if key in seen:
                problems.append(Problem(".".join(map(str, path + (key,))) or key,
                                        f"duplicate key '{key}'", "remove one of the two",
                                        k.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = k.start_mark.line + 1
            _walk(v, path + (key,), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (i,), lines, problems)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError("inventory file not found", "check the -i/--inventory path",
                             file=str(path)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise InventoryError(f"cannot read inventory: {e.__class__.__name__}",
                             "pass a readable UTF-8 YAML or INI file", file=str(path)) from None


def _looks_like_kdeploy(data: Any) -> bool:
    return isinstance(data, dict) and ("apiVersion" in data or "kind" in data or "hosts" in data
                                       and "all" not in data)


def load_inventory(path: str | Path) -> tuple[Cluster, list[Problem]]:
    """Load and validate; return (cluster, warnings). Raise InventoryError listing every error."""
    path = Path(path)
    text = _read(path)
    try:
        node, data = _parse(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if _looks_like_ini(text):
            return _finish_ansible(path)
        raise InventoryError(f"not valid YAML: {getattr(e, 'problem', e)}",
                             "fix the YAML syntax (indentation, quotes, colons)", file=str(path),
                             line=mark.line + 1 if mark else None) from None
    if node is None or data is None:
        raise InventoryError("the inventory is empty",
                             "see inventories/sample/ for a complete example", file=str(path))
    if not isinstance(data, dict) or _is_ansible(data):
        if isinstance(data, dict) or _looks_like_ini(text):
            return _finish_ansible(path)
        raise InventoryError(f"the top level must be a mapping, not {type(data).__name__}",
                             f"start the file with 'apiVersion: {API_VERSION}'", file=str(path))
    lines = _LineMap()
    problems: list[Problem] = []
    _walk(node, (), lines, problems)
    if data.get("apiVersion") not in (None, API_VERSION):
        problems.append(Problem("apiVersion", f"unsupported apiVersion {data.get('apiVersion')!r}",
                                f"use '{API_VERSION}'", lines.line_for(("apiVersion",))))
    _raise_if(problems, path, lines)
    return _finish(data, path, lines, problems)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """Compose once (node tree with line marks), construct from it; libyaml when available."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _is_ansible(data: dict) -> bool:
    return "apiVersion" not in data and ("all" in data or any(
        k in data for k in ("kube_control_plane", "kube-master", "kube_node", "k8s_cluster")))


def _looks_like_ini(text: str) -> bool:
    return any(line.strip().startswith("[") and line.strip().endswith("]")
               for line in text.splitlines())


def _finish_ansible(path: Path):
    """An Ansible inventory: a host named only in a group (no ip, no ansible_host) would get
    its name as its address: said as a warning, refused on control-plane and etcd hosts, whose
    certificates and etcd peer URLs need a real address."""
    from kdeploy.model.ansible import NO_ADDRESS, load_ansible
    doc = load_ansible(path)
    problems, notes = [], []
    for i, name, group in doc.pop(NO_ADDRESS, []):
        roles = doc["hosts"][i]["roles"]
        what = (f"host {name} (group {group}) has no address: neither ip nor ansible_host is set, "
                "so its name is used as its address")
        hint = f"set ip=... (or ansible_host=...) for {name}"
        if "control-plane" in roles or "etcd" in roles:
            problems.append(Problem(f"hosts[{i}].address", what + "; a control-plane or etcd host's "
                                    "certificates and etcd peer URL need a real one", hint))
        else:
            notes.append(Problem(f"hosts[{i}].address", what + " (it must resolve on every node)",
                                 hint, warning=True))
    _raise_if(problems, path, _LineMap())
    cluster, warnings = _finish(doc, path, _LineMap(), [])
    return cluster, notes + warnings


def _finish(data: dict, path: Path, lines: _LineMap, problems: list[Problem]):
    try:
        cluster = Cluster.model_validate({**data, "source": str(path)})
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            problems.append(_problem_from_pydantic(loc, err, lines))
        _raise_if(problems, path, lines)
        raise  # unreachable
    errors, warnings = check_cluster(cluster, lines.line_for)
    _raise_if(errors, path, lines)
    return cluster, warnings


def _problem_from_pydantic(loc: Path_, err: dict, lines: _LineMap) -> Problem:
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        msg, hint = f"unknown field '{loc[-1]}'", "remove it or fix its spelling (see docs/inventory.md)"
    elif kind == "missing":
        msg, hint = f"required field '{loc[-1]}' is missing", "add it (see docs/inventory.md)"
    else:
        msg, hint = err.get("msg", "invalid value"), f"got {_short(err.get('input'))}"
    return Problem(field or "(top level)", msg, hint, lines.line_for(loc))


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _raise_if(problems: list[Problem], path: Path, lines: _LineMap) -> None:
    errors = [p for p in problems if not p.warning]
    if not errors:
        return
    first = errors[0]
    extra = "".join(f"\n  {path}{':' + str(p.line) if p.line else ''}: {p.field}: {p.message}"
                    + (f" ({p.hint})" if p.hint else "") for p in errors[1:])
    raise InventoryError(first.message + extra, first.hint, file=str(path), field=first.field,
                         line=first.line)
