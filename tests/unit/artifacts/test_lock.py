import json

import pytest

from kdeploy.artifacts.lock import ChecksumLock
from kdeploy.errors import ArtifactError


def test_round_trip(tmp_path):
    p = tmp_path / "state" / "artifacts.lock.json"
    lock = ChecksumLock(p)
    lock.record("runc/1.4.3/amd64/runc.amd64", "AB" * 32, "https://x/runc.sha256sum")
    lock.save()
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    again = ChecksumLock(p)
    assert again.get("runc/1.4.3/amd64/runc.amd64") == "ab" * 32
    assert again.source("runc/1.4.3/amd64/runc.amd64") == "https://x/runc.sha256sum"
    assert again.get("other") is None


def test_read_only_lock_is_never_written(tmp_path):
    p = tmp_path / "artifacts.lock.json"
    lock = ChecksumLock(p, write=False)
    lock.record("k", "ab" * 32, "pinned")
    lock.save()
    assert not p.exists() and lock.get("k") == "ab" * 32


@pytest.mark.parametrize("text", ["{", json.dumps({"version": 2, "files": {}}),
                                  json.dumps({"version": 1, "files": {"k": {"sha256": "short"}}})])
def test_damaged_lock_is_a_clear_error(tmp_path, text):
    p = tmp_path / "artifacts.lock.json"
    p.write_text(text)
    with pytest.raises(ArtifactError) as e:
        ChecksumLock(p)
    assert str(p) in e.value.message and "delete it" in e.value.hint
