import dataclasses

from kdeploy.lab import recipe as r


def test_hash_is_stable_and_order_independent():
    a = r.Recipe(arch="amd64")
    b = r.Recipe(arch="amd64", packages=tuple(reversed(r.PACKAGES)))
    assert a.hash() == b.hash() == r.Recipe(arch="amd64").hash()
    assert len(a.hash()) == 16 and int(a.hash(), 16) >= 0


def test_hash_changes_with_content():
    base = r.Recipe(arch="amd64")
    assert dataclasses.replace(base, packages=base.packages + ("curl",)).hash() != base.hash()
    assert dataclasses.replace(base, suite="trixie").hash() != base.hash()
    assert dataclasses.replace(base, arch="arm64").hash() != base.hash()
    assert dataclasses.replace(base, version=base.version + 1).hash() != base.hash()
    files = tuple((p, t + "#") for p, t in base.files)
    assert dataclasses.replace(base, files=files).hash() != base.hash()


def test_rootfs_dir_under_xdg_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = r.rootfs_dir(r.Recipe(arch="amd64"))
    assert d.parent == tmp_path / "kdeploy" / "lab"
    assert d.name == "rootfs-" + r.Recipe(arch="amd64").hash()


def test_required_packages_present():
    for p in ("systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "iptables",
              "conntrack", "socat", "ipset", "ethtool", "kmod", "ca-certificates",
              "iputils-ping", "procps", "libseccomp2"):
        assert p in r.PACKAGES


def test_mirror_from_deb822_and_one_line(tmp_path):
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "# nothing\ndeb [arch=amd64 signed-by=/x.gpg] http://mirror.example/debian-security bookworm-security main\n")
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb deb-src\n# comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    (d / "other.list").write_text("deb https://apt.example bookworm main\n")
    assert r.debian_mirror("bookworm", root=tmp_path) == "http://mirror.example/debian"


def test_mirror_missing_is_a_lab_error(tmp_path):
    import pytest
    from kdeploy.errors import LabError
    (tmp_path / "etc/apt").mkdir(parents=True)
    with pytest.raises(LabError) as e:
        r.debian_mirror("bookworm", root=tmp_path)
    assert e.value.hint
