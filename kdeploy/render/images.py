"""Image references the rendered files name (sandbox image, CoreDNS, the verify workload) and
the images kdeploy preloads on the nodes.

They come from the artifact set in use: an offline set records the refs of the image archives
it holds in its manifest.json ("images": relpath -> ref; the artifact build names the images it
makes under kdeploy's own registry, see kdeploy.artifacts.catalog.BUILT_IMAGE_REGISTRY). Those
archives are imported on every node, so those refs are "preloaded". An image the set does not
hold (the official release downloads hold none) keeps upstream's ref from the catalog
(kdeploy.artifacts.catalog.versions_for), and the nodes pull it. Reading a local manifest is
all this does: no network.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

from kdeploy.artifacts.catalog import versions_for

# IMAGES name (kdeploy.artifacts.catalog) -> Images field
_FIELD = {"pause-image": "pause", "coredns-image": "coredns", "agnhost-image": "agnhost"}


@dataclass(frozen=True)
class Images:
    pause: str
    coredns: str
    coredns_version: str
    agnhost: str
    source: str = "catalog"            # "catalog", or the artifact set's manifest
    preloaded: tuple[str, ...] = ()    # refs of the image archives kdeploy imports on every node

    def to_dict(self) -> dict:
        return {**asdict(self), "preloaded": list(self.preloaded)}

    @classmethod
    def from_dict(cls, doc: dict) -> "Images | None":
        """An Images from to_dict()'s output; None when it is not one (a hand-edited record)."""
        try:
            kw = {f.name: doc[f.name] for f in fields(cls)}
            kw["preloaded"] = tuple(kw["preloaded"])
            if not all(isinstance(v, str) for k, v in kw.items() if k != "preloaded") or \
                    not all(isinstance(r, str) for r in kw["preloaded"]):
                return None
            return cls(**kw)
        except (KeyError, TypeError):
            return None


def images_for(kubernetes_version: str) -> Images:
    """Upstream's refs (the catalog's); nothing preloaded: what the nodes pull themselves."""
    v = versions_for(kubernetes_version)
    return Images(v.pause_image, v.coredns_image, v.coredns, v.agnhost_image, "catalog")


def images_from_manifest(kubernetes_version: str, doc: dict, source: str = "manifest") -> Images:
    """The refs of an artifact set with manifest `doc`: an image archive the set holds is
    preloaded under the ref its manifest records (a set written before the manifest recorded
    refs: the catalog's, the name such sets gave their images); any other image keeps the
    catalog's ref and is pulled."""
    from kdeploy.artifacts.catalog import IMAGES
    base = images_for(kubernetes_version)
    refs = doc.get("images") if isinstance(doc.get("images"), dict) else {}
    files = doc.get("files") if isinstance(doc.get("files"), dict) else {}
    values = {f: getattr(base, f) for f in _FIELD.values()}
    preloaded = []
    for name, (fname, _, _) in IMAGES.items():
        rel = f"images/{fname}"
        if rel not in files:
            continue
        ref = refs.get(rel)
        ref = ref if isinstance(ref, str) and ref else values[_FIELD[name]]
        values[_FIELD[name]] = ref
        preloaded.append(ref)
    if not preloaded:
        return base
    return Images(values["pause"], values["coredns"], base.coredns_version, values["agnhost"],
                  source, tuple(preloaded))


def images_of_dir(root: Path, kubernetes_version: str | None = None) -> Images:
    """The refs of the artifact set in directory `root` (its manifest is read, not verified).
    kubernetes_version: the cluster's (default: the set's own)."""
    from kdeploy.artifacts.layout import MANIFEST, read_manifest
    doc = read_manifest(Path(root))
    version = kubernetes_version or str(doc.get("kubernetesVersion", ""))
    return images_from_manifest(version, doc, str(Path(root) / MANIFEST))


def images_of_artifacts(kubernetes_version: str, artifacts: Iterable) -> Images:
    """The refs of a resolved artifact set (kdeploy.artifacts.resolve's files): each image
    archive carries the ref it is imported under (ArtifactFile.ref: from an offline set's
    manifest, or read from the archive of an image directory); a set whose manifest predates
    refs is read from its manifest; the catalog's refs for images the set does not hold."""
    from kdeploy.artifacts.catalog import IMAGES
    held = [a for a in artifacts or () if a.name in IMAGES]
    if not held:
        return images_for(kubernetes_version)
    if any(getattr(a, "ref", None) is None for a in held):
        roots = {Path(a.local_path).parent.parent for a in held}
        if len(roots) == 1:
            return images_of_dir(roots.pop(), kubernetes_version)
    base = images_for(kubernetes_version)
    values = {f: getattr(base, f) for f in _FIELD.values()}
    preloaded = []
    for a in held:
        ref = a.ref or values[_FIELD[a.name]]
        values[_FIELD[a.name]] = ref
        preloaded.append(ref)
    return Images(values["pause"], values["coredns"], base.coredns_version, values["agnhost"],
                  "artifacts", tuple(preloaded))


# --- the kubelet's preloaded-image allowlist -------------------------------------------------

def repository(ref: str) -> str:
    """An image ref without its tag and digest (what the kubelet's allowlist matches)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def preloaded_allowlist(images: Images, extra: Iterable[str] = ()) -> list[str]:
    """The kubelet's preloadedImagesVerificationAllowlist: the images kdeploy preloads plus the
    operator's own (spec.kubelet.preloadedImages), sorted, without repeats.

    Images under kdeploy's own registry are listed as its "/*" prefix: only kdeploy imports
    there and nothing can be pulled from it, so the prefix means exactly kdeploy's images (those
    of every set it imported, e.g. the previous version's during an upgrade), and kubelet 1.35
    matches exact names against the pod's image *with* its tag (no tagged image ever matches;
    1.36 strips the tag first), while a prefix matches in 1.35-1.37. Other preloaded refs (a set
    from before built images were renamed) are listed by name (effective from 1.36)."""
    from kdeploy.artifacts.catalog import BUILT_IMAGE_REGISTRY
    own = BUILT_IMAGE_REGISTRY + "/"
    names = {own + "*" if r.startswith(own) else repository(r) for r in images.preloaded}
    return sorted(names | set(extra))


def record_text(images: Images, kubernetes_version: str) -> str:
    """The state dir's record of the images a deployment configured (images.json)."""
    return json.dumps({"kubernetesVersion": kubernetes_version, **images.to_dict()},
                      indent=1, sort_keys=True) + "\n"


def from_record(text: str, kubernetes_version: str) -> Images | None:
    """The recorded images when the record is for this Kubernetes version, else None."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("kubernetesVersion") != kubernetes_version:
        return None
    return Images.from_dict(doc)
