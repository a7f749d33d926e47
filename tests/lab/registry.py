"""A read-only OCI registry for lab tests: serves the images of OCI image archives (an
`oci-layout` with index.json and blobs/, as kdeploy.artifacts.oci writes them) under the
registry API paths containerd pulls from, behind HTTP Basic authentication.

    python3 -m tests.lab.registry --bind ADDR --port N --user U --password-file F \
        --log FILE NAME:TAG=ARCHIVE.tar ...

Every request is appended to --log as one JSON line (method, path, authorized) so a test can
tell what the nodes pulled and whether they sent credentials.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def load_archive(path: Path) -> tuple[dict[str, bytes], str, str]:
    """(blobs by digest, manifest digest, manifest media type) of a one-image OCI archive."""
    blobs: dict[str, bytes] = {}
    with tarfile.open(path) as tf:
        index = json.load(tf.extractfile("index.json"))
        for m in tf.getmembers():
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                data = tf.extractfile(m).read()
                blobs["sha256:" + hashlib.sha256(data).hexdigest()] = data
    desc = index["manifests"][0]
    return blobs, desc["digest"], desc["mediaType"]


def serve(bind: str, port: int, user: str, password: str, images: dict[str, Path], log: Path):
    repos: dict[str, dict] = {}
    blobs: dict[str, bytes] = {}
    for ref, archive in images.items():
        name, tag = ref.rsplit(":", 1)
        b, digest, media = load_archive(archive)
        blobs.update(b)
        repos.setdefault(name, {})[tag] = (digest, media)
        repos[name][digest] = (digest, media)
    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    mu = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, body: bool) -> None:
            ok = self.headers.get("Authorization") == want
            with mu, open(log, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path, "authorized": ok}) + "\n")
            if not ok:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="lab"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, ctype, digest = self._lookup()
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _lookup(self):
            path = self.path.split("?", 1)[0]
            if path in ("/v2", "/v2/"):
                return b"{}", "application/json", None
            if not path.startswith("/v2/"):
                return None, None, None
            rest = path[4:]
            for kind in ("/manifests/", "/blobs/"):
                if kind in rest:
                    name, ref = rest.rsplit(kind, 1)
                    if kind == "/blobs/":
                        return blobs.get(ref), "application/octet-stream", ref
                    hit = repos.get(name, {}).get(ref)
                    if not hit:
                        return None, None, None
                    digest, media = hit
                    return blobs[digest], media, digest
            return None, None, None

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

    ThreadingHTTPServer((bind, port), Handler).serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("images", nargs="+", help="NAME:TAG=ARCHIVE")
    a = ap.parse_args()
    images = {ref: Path(p) for ref, p in (i.split("=", 1) for i in a.images)}
    serve(a.bind, a.port, a.user, Path(a.password_file).read_text().strip(), images, Path(a.log))


if __name__ == "__main__":
    main()
