"""Write single-layer container image archives without docker.

The archive holds both an OCI image layout (oci-layout, index.json, blobs/sha256/...) and a
docker-archive manifest.json, like `docker save` since Docker 25, so both
`ctr -n k8s.io images import FILE` and `docker load` accept it. The image name is carried by
the `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations and RepoTags.

Output is reproducible: fixed mtimes, uid/gid 0, sorted entries.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

EPOCH = 0  # file mtimes inside the image
CREATED = "1970-01-01T00:00:00Z"


@dataclass
class ImageFile:
    src: Path          # file on disk
    dest: str          # absolute path in the image, e.g. /pause
    mode: int = 0o755


@dataclass
class ImageSpec:
    ref: str                                  # kdeploy.invalid/pause:3.10.2
    files: list[ImageFile]
    arch: str = "amd64"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str | None = None
    exposed_ports: list[str] = field(default_factory=list)  # "53/udp"
    env: list[str] = field(default_factory=lambda: [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    workdir: str = "/"


def _tarinfo(name: str, *, size: int = 0, mode: int = 0o644, dir: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.mode = mode
    if dir:
        ti.type = tarfile.DIRTYPE
    else:
        ti.size = size
    return ti


def _layer(files: list[ImageFile]) -> bytes:
    buf = io.BytesIO()
    dirs: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for f in sorted(files, key=lambda f: f.dest):
            rel = f.dest.lstrip("/")
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    tf.addfile(_tarinfo(d + "/", mode=0o755, dir=True))
            data = Path(f.src).read_bytes()
            tf.addfile(_tarinfo(rel, size=len(data), mode=f.mode), io.BytesIO(data))
        # /tmp is expected by many programs
        if "tmp" not in dirs:
            tf.addfile(_tarinfo("tmp/", mode=0o1777, dir=True))
    return buf.getvalue()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def write_image_archive(spec: ImageSpec, out: Path) -> str:
    """Write the archive to `out`; return the manifest digest (sha256:...)."""
    layer = _layer(spec.files)
    layer_digest = _sha(layer)
    cfg: dict = {
        "architecture": spec.arch,
        "os": "linux",
        "created": CREATED,
        "config": {"Env": spec.env, "WorkingDir": spec.workdir},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created": CREATED, "created_by": "kdeploy oci writer"}],
    }
    if spec.entrypoint:
        cfg["config"]["Entrypoint"] = spec.entrypoint
    if spec.cmd:
        cfg["config"]["Cmd"] = spec.cmd
    if spec.user:
        cfg["config"]["User"] = spec.user
    if spec.exposed_ports:
        cfg["config"]["ExposedPorts"] = {p: {} for p in spec.exposed_ports}
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    cfg_digest = _sha(cfg_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{cfg_digest}", "size": len(cfg_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer_digest}", "size": len(layer)}],
    }
    man_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    man_digest = _sha(man_bytes)
    tag = spec.ref.rsplit(":", 1)[1] if ":" in spec.ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{man_digest}", "size": len(man_bytes),
            "platform": {"architecture": spec.arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": spec.ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    }
    docker_manifest = [{
        "Config": f"blobs/sha256/{cfg_digest}",
        "RepoTags": [spec.ref],
        "Layers": [f"blobs/sha256/{layer_digest}"],
    }]
    entries: list[tuple[str, bytes]] = [
        ("blobs/sha256/" + cfg_digest, cfg_bytes),
        ("blobs/sha256/" + layer_digest, layer),
        ("blobs/sha256/" + man_digest, man_bytes),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
        ("manifest.json", json.dumps(docker_manifest).encode()),
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
    ]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("blobs/", "blobs/sha256/"):
            tf.addfile(_tarinfo(d, mode=0o755, dir=True))
        for name, data in entries:
            tf.addfile(_tarinfo(name, size=len(data)), io.BytesIO(data))
    tmp.replace(out)
    return f"sha256:{man_digest}"


def read_image_refs(archive: Path) -> list[str]:
    """Image names recorded in an archive written by write_image_archive (or docker save)."""
    refs: list[str] = []
    with tarfile.open(archive) as tf:
        try:
            idx = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
            for m in idx.get("manifests", []):
                r = (m.get("annotations") or {}).get("io.containerd.image.name")
                if r:
                    refs.append(r)
        except KeyError:
            pass
        if not refs:
            try:
                for m in json.load(tf.extractfile("manifest.json")):  # type: ignore[arg-type]
                    refs.extend(m.get("RepoTags") or [])
            except KeyError:
                pass
    return refs


def archive_refs(path: Path) -> list[str]:
    """The image names an image archive carries (what `ctr images import` tags): the
    io.containerd.image.name annotations of an OCI layout's index.json, a full
    org.opencontainers.image.ref.name, or a docker-archive manifest.json's RepoTags.
    Raises ValueError when the file is not an image archive."""
    try:
        with tarfile.open(path) as tf:
            names = set(tf.getnames())
            refs: list[str] = []
            if "index.json" in names:
                for m in json.load(tf.extractfile("index.json")).get("manifests", []):
                    ann = m.get("annotations") or {}
                    ref = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name", "")
                    if "/" in ref or ":" in ref.split("/")[-1] and "." in ref.split("/")[0]:
                        refs.append(ref)
            if not refs and "manifest.json" in names:
                for m in json.load(tf.extractfile("manifest.json")):
                    refs.extend(m.get("RepoTags") or [])
    except (tarfile.TarError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"not a readable image archive: {e}") from None
    if not refs:
        raise ValueError("the archive names no image (no io.containerd.image.name annotation, "
                         "no full org.opencontainers.image.ref.name, no RepoTags)")
    return refs
