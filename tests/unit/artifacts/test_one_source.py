"""Version data has one source: kdeploy/artifacts/catalog.py. No other module of the package
spells a pinned version or image reference as a literal (it imports it from the catalog)."""
import ast
import dataclasses
from pathlib import Path

import kdeploy
from kdeploy.artifacts import catalog

PKG = Path(kdeploy.__file__).resolve().parent
SOURCES = {PKG / "artifacts" / "catalog.py", PKG / "artifacts" / "_checksums.py"}


def _pinned() -> set[str]:
    out = {catalog.DEFAULT_KUBERNETES_VERSION, *catalog.SUPPORTED_MINORS}
    for v in catalog.pinned_versions().values():
        for f in dataclasses.fields(v):
            val = getattr(v, f.name)
            out |= {val, f"v{val}"}
        out |= {v.pause_image, v.coredns_image, v.agnhost_image}
    return out


def test_no_version_literal_outside_the_catalog():
    pinned = _pinned()
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.resolve() in SOURCES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in pinned:
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "versions belong in kdeploy/artifacts/catalog.py:\n" + "\n".join(found)


def test_defaults_come_from_the_catalog():
    from kdeploy.lab.inventory import render, topology
    from kdeploy.model.cluster import KubernetesSettings
    from kdeploy.render.images import images_for
    assert KubernetesSettings().version == catalog.DEFAULT_KUBERNETES_VERSION
    lab = render(name="lab", hosts=topology(1, 0), key_file="/k", known_hosts="/kh", netns="ns")
    assert f'version: "{catalog.DEFAULT_KUBERNETES_VERSION}"' in lab
    v = catalog.versions_for(catalog.DEFAULT_KUBERNETES_VERSION)
    img = images_for(catalog.DEFAULT_KUBERNETES_VERSION)
    assert (img.pause, img.coredns, img.coredns_version) == (v.pause_image, v.coredns_image,
                                                             v.coredns)
