import ast

from kdeploy.artifacts import catalog
from kdeploy.artifacts._checksums import CHECKSUMS
from kdeploy.artifacts.update import CHECKSUMS_MODULE, parse_sums, release_key, render, update_checksums
from kdeploy.errors import ArtifactError

A = "a" * 64
B = "b" * 64


def test_parse_sums_formats():
    assert parse_sums(A + "\n", "kubelet") == A
    assert parse_sums(f"{B}  other.tgz\n{A}  etcd-v3.7.0-linux-amd64.tar.gz\n",
                      "etcd-v3.7.0-linux-amd64.tar.gz") == A
    assert parse_sums(f"{A} *runc.amd64\n{B} *runc.arm64\n", "runc.arm64") == B
    assert parse_sums(f"{A.upper()}  ./bin/crictl.tar.gz", "crictl.tar.gz") == A
    assert parse_sums(f"{A}  something-else", "kubelet") is None
    assert parse_sums("<html>not found</html>", "kubelet") is None


def test_update_with_fake_fetcher_fills_every_entry():
    def fetch_text(url):
        # one sums file per URL; multi-asset files (etcd SHA256SUMS, runc.sha256sum) list all
        lines = []
        for r in catalog.all_releases():
            if r.sha256_url == url:
                import hashlib
                lines.append(hashlib.sha256(r.url.encode()).hexdigest() + "  " + r.asset)
        return "\n".join(lines) + "\n"

    res = update_checksums(fetch_text, dict(CHECKSUMS))
    assert res.failed == []
    assert set(res.table) == {release_key(r) for r in catalog.all_releases()}
    published = {release_key(r) for r in catalog.all_releases() if r.sha256_url}
    assert all(v and len(v) == 64 for k, v in res.table.items() if k in published)
    import hashlib
    r = catalog.releases(catalog.versions_for("1.36.3"), "arm64")[0]
    assert res.table[release_key(r)] == hashlib.sha256(r.url.encode()).hexdigest()


def test_update_failure_keeps_old_value_and_reports():
    current = dict(CHECKSUMS)
    known = next(k for k, v in current.items() if v)

    def fetch_text(url):
        raise ArtifactError(f"download of {url} failed: no network", "x")

    res = update_checksums(fetch_text, current)
    assert res.table == current          # nothing invented, nothing lost
    assert res.table[known] == current[known]
    assert res.changed == [] and len(res.failed) + len(res.skipped) == len(current)
    assert "no network" in res.failed[0]


def test_releases_without_checksum_file_are_skipped_and_kept():
    """Debian's .debs (api-lb) have no checksum file: never fetched, the pinned sum stays."""
    urls = []

    def fetch_text(url):
        urls.append(url)
        return ""

    current = dict(CHECKSUMS)
    res = update_checksums(fetch_text, current)
    debs = {release_key(r) for r in catalog.all_releases() if r.asset.endswith(".deb")}
    assert debs and set(res.skipped) == debs and "" not in urls
    assert all(res.table[k] == current[k] for k in debs)
    assert not any(k in debs for k in res.changed) and not any(f.split(":")[0] in debs for f in res.failed)


def test_render_roundtrip_and_committed_module_is_generated_format():
    text = render({"x/1/amd64/a": A, "y/2/arm64/b": None})
    ns = {}
    exec(compile(text, "gen", "exec"), ns)
    assert ns["CHECKSUMS"] == {"x/1/amd64/a": A, "y/2/arm64/b": None}
    assert CHECKSUMS_MODULE.read_text() == render(CHECKSUMS)
    ast.parse(CHECKSUMS_MODULE.read_text())
