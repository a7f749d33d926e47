"""HttpFetcher against a loopback HTTP server that honours Range (as dl.k8s.io and GitHub do)."""
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kdeploy.artifacts.download import HttpFetcher, run_parallel, showing_progress
from kdeploy.errors import ArtifactError

BODY = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def server():
    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("Range")))
            if self.path != "/f":
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
            if start >= len(BODY):
                self.send_error(416)
                return
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(len(BODY) - start))
            self.end_headers()
            self.wfile.write(BODY[start:])

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


class Bar:
    def __init__(self):
        self.total, self.got, self.ended = None, 0, False

    def start(self, key, label, total):
        self.total = total

    def advance(self, key, n):
        self.got += n

    def done(self, key):
        self.ended = True


def test_partial_file_is_continued_with_a_range_request(server, tmp_path):
    base, seen = server
    part = tmp_path / "f.part"
    part.write_bytes(BODY[:300_000])  # what a killed run left
    bar = Bar()
    with showing_progress(bar):
        HttpFetcher()(f"{base}/f", part)
    assert seen == [("/f", "bytes=300000-")]
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(BODY).digest()
    assert bar.total == len(BODY) and bar.got == len(BODY) and bar.ended


def test_partial_file_longer_than_the_remote_starts_again(server, tmp_path):
    base, seen = server
    part = tmp_path / "f.part"
    part.write_bytes(b"x" * (len(BODY) + 10))
    HttpFetcher()(f"{base}/f", part)
    assert part.read_bytes() == BODY
    assert seen == [("/f", f"bytes={len(BODY) + 10}-"), ("/f", None)]


def test_http_error_is_an_artifact_error_naming_the_url(server, tmp_path):
    base, _ = server
    with pytest.raises(ArtifactError, match=r"/nope failed: HTTP 404"):
        HttpFetcher()(f"{base}/nope", tmp_path / "x")


def test_run_parallel_keeps_order_and_raises_after_all_ended():
    ended = []

    def job(i):
        def run():
            ended.append(i)
            if i == 1:
                raise ArtifactError("boom", "")
            return i * 10
        return run
    assert run_parallel([job(0), job(2), job(3)]) == [0, 20, 30]
    with pytest.raises(ArtifactError, match="boom"):
        run_parallel([job(0), job(1), job(2), job(3)])
    assert sorted(ended[3:]) == [0, 1, 2, 3]
