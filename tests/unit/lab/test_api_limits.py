from kdeploy.lab.api import HOST_LIMITS, raise_host_limits


def test_host_inotify_limits_are_raised_never_lowered(tmp_path):
    proc = tmp_path / "sys"
    (proc / "fs" / "inotify").mkdir(parents=True)
    (proc / "fs/inotify/max_user_instances").write_text("128\n")
    (proc / "fs/inotify/max_user_watches").write_text("9999999\n")
    changed = raise_host_limits(lambda s: None, proc)
    assert changed == {"fs.inotify.max_user_instances": HOST_LIMITS["fs/inotify/max_user_instances"]}
    assert (proc / "fs/inotify/max_user_watches").read_text() == "9999999\n"
    assert raise_host_limits(lambda s: None, proc) == {}
