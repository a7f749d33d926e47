"""kdeploy's applier: run on a host by playbooks/transport/apply.yml (python3, stdlib only, root).

The adapter (kdeploy.transport.ansible.applier_script) appends one line to a copy of this file,
`BUNDLE = {...}` (JSON), and Ansible's `script` module runs that copy from its private remote
tmp dir (removed after the task); the local copy is 0600 and deleted right after the run (it
holds private keys). BUNDLE["mode"] is "ops" (the host's operations of one engine step, in
order) or "gates" (its gates, after every host's operations):
  {"mode": "ops", "tar": "/var/lib/kdeploy/.upload-<random>.tar" (the binaries, or absent),
   "ops": [{"kind": "binary", "path", "member", "sha256", "mode"},
           {"kind": "file", "path", "content" (base64), "mode", "owner", "group"},
           {"kind": "mode", "path", "mode", "owner", "group"},
           {"kind": "block", "path", "content" (base64: the rendered block), "begin", "end"},
           {"kind": "run", "argv", "timeout", "check", "key"}, ...],
   "journal": {"path", "add": [...], "done": [...], "known": [...]},
   "gates": [{"cmd", "timeout", "what"}]}
Binaries arrive in one uncompressed tar (Ansible's copy, one transfer per host); each member
is placed like a file, its sha256 checked before the rename; the tar is removed afterwards.
What each operation does is exactly what kdeploy's engine does over ssh (kdeploy.execute.engine
Engine._host_phase): atomic writes (temp file beside the target, fsync, rename), parent dirs
0755, the journal of pending restarts written 0600 before and cleared after. Prints one JSON
line: {"ok": true, "done": N} or {"ok": false, "error": "..."} (exit 1). Never prints a file's
content.
"""
import base64
import grp
import hashlib
import json
import os
import pwd
import shlex
import subprocess
import sys  # noqa: F401 (used by the appended bundle: sys.exit(main(BUNDLE)))
import time

TMP_SUFFIX = ".kdeploy-tmp"


class Failed(Exception):
    pass


def fresh_tmp(path):
    """The temp file beside path (parent dirs created 0755), a leftover removed: never reused."""
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o755, exist_ok=True)
    tmp = os.path.join(d, "." + os.path.basename(path) + TMP_SUFFIX)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    return tmp


def discard(tmp):
    """Remove a temp file a failed write left (gone already is fine)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def place_member(tar, member, path, mode, sha256):
    """A binary from the upload tar: temp file beside path, sha256 checked, rename."""
    tmp = fresh_tmp(path)
    src = tar.extractfile(member)
    if src is None:
        raise Failed("binary %s: missing from the upload" % path)
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
            os.fchown(f.fileno(), 0, 0)
            os.fchmod(f.fileno(), mode)
        if h.hexdigest() != sha256:
            raise Failed("sha256 mismatch for %s after upload (expected %s, got %s)"
                         % (path, sha256, h.hexdigest()))
        os.rename(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def write_atomic(path, data, mode, owner="root", group="root"):
    tmp = fresh_tmp(path)
    try:
        uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError as e:
        raise Failed("cannot place %s: no such user or group %s" % (path, e))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def apply_block(old, block, begin, end):
    """kdeploy.plan.planner.apply_block: old text with the block inserted or replaced."""
    lines = old.splitlines(True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == begin), None)
    if start is not None:
        stop = next((i for i in range(start, len(lines)) if lines[i].rstrip("\n") == end), None)
        if stop is not None:
            return "".join(lines[:start]) + block + "".join(lines[stop + 1:])
    if old and not old.endswith("\n"):
        old += "\n"
    return old + block


def read_journal(path):
    try:
        with open(path, "rb") as f:
            entries = json.loads(f.read() or b"null")
    except (OSError, ValueError):
        return set()
    return {e for e in entries if isinstance(e, str)} if isinstance(entries, list) else set()


LOCK = ["/var/lib/kdeploy/.apply.lock"]   # beside the journal (do_ops sets it)


class host_lock:
    """Two engine lanes may apply on one host at once: the journal and the hash cache are
    read-modify-write files, updated under this exclusive lock (flock)."""

    def __enter__(self):
        import fcntl
        os.makedirs(os.path.dirname(LOCK[0]), mode=0o755, exist_ok=True)
        self.fd = os.open(LOCK[0], os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def update_journal(j, add=(), remove=()):
    with host_lock():
        cur = read_journal(j["path"])
        new = {k for k in (cur | set(add)) - set(remove) if k in set(j["known"])}
        if new != cur:
            write_atomic(j["path"], (json.dumps(sorted(new), indent=0) + "\n").encode(), 0o600)


def tail(data, lines=8):
    text = data.decode("utf-8", "replace").strip()
    return "\n".join("  " + ln for ln in text.splitlines()[-lines:])


def run(op):
    argv = op["argv"]
    shown = argv[2] if argv[:2] == ["sh", "-c"] else shlex.join(argv)
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=op.get("timeout") or None)
    except subprocess.TimeoutExpired:
        raise Failed("command timed out after %s s: %s" % (op.get("timeout"), shown))
    except OSError as e:
        raise Failed("command failed (exit code 127): %s\n  %s" % (shown, e))
    if p.returncode != 0 and op.get("check", True):
        msg = "command failed (%s): %s" % (
            "killed by a signal" if p.returncode < 0 else "exit code %d" % p.returncode, shown)
        t = tail(p.stderr) or tail(p.stdout)
        raise Failed(msg + ("\n" + t if t else ""))


def do_ops(bundle):
    j = bundle.get("journal") or {}
    if j.get("path"):
        LOCK[0] = os.path.join(os.path.dirname(j["path"]), ".apply.lock")
    if j.get("add"):
        update_journal(j, add=j["add"])
    n = 0
    tar = None
    if bundle.get("tar"):
        import tarfile
        tar = tarfile.open(bundle["tar"], "r:")
    try:
        for op in bundle.get("ops", []):
            do_op(op, tar)
            n += 1
    finally:
        if tar is not None:
            tar.close()
            os.unlink(bundle["tar"])
    if j.get("done"):
        update_journal(j, remove=j["done"])
    return n


def do_op(op, tar):
    kind = op["kind"]
    if kind == "binary":
        if tar is None:
            raise Failed("binary %s: no upload" % op["path"])
        place_member(tar, op["member"], op["path"], op["mode"], op["sha256"])
    elif kind == "file":
        write_atomic(op["path"], base64.b64decode(op["content"]), op["mode"], op["owner"], op["group"])
    elif kind == "mode":
        try:
            os.chown(op["path"], pwd.getpwnam(op["owner"]).pw_uid, grp.getgrnam(op["group"]).gr_gid)
        except KeyError as e:
            raise Failed("cannot chown %s: no such user or group %s" % (op["path"], e))
        os.chmod(op["path"], op["mode"])
    elif kind == "block":
        try:
            with open(op["path"], "rb") as f:
                old = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            old = ""
        new = apply_block(old, base64.b64decode(op["content"]).decode(), op["begin"], op["end"])
        write_atomic(op["path"], new.encode(), 0o644)
    elif kind == "run":
        if op.get("lock"):
            with host_lock():
                run(op)
        else:
            run(op)
    else:
        raise Failed("unknown operation %r" % kind)


def do_gates(gates):
    for g in gates:
        deadline = time.monotonic() + g["timeout"]
        last = ""
        while True:
            try:
                p = subprocess.run(["sh", "-c", g["cmd"]], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
                if p.returncode == 0:
                    break
                out = (p.stderr or p.stdout).decode("utf-8", "replace").rstrip("\n")
                last = (out.splitlines()[-1:] or [""])[0]
            except subprocess.TimeoutExpired:
                last = "timed out after 30 s"
            if time.monotonic() > deadline:
                raise Failed("%s did not pass within %d s: %s" % (g.get("what") or g["cmd"],
                                                                   int(g["timeout"]), last))
            time.sleep(1.0)
    return len(gates)


def main(bundle):
    os.umask(0o022)
    try:
        if bundle.get("mode") == "ops":
            n = do_ops(bundle)
        elif bundle.get("mode") == "gates":
            n = do_gates(bundle.get("gates", []))
        else:
            raise Failed("no operations given")
    except Failed as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        return 1
    except OSError as e:
        print(json.dumps({"ok": False, "error": "%s: %s" % (e.strerror or e, e.filename or "")}))
        return 1
    print(json.dumps({"ok": True, "done": n}))
    return 0


# the adapter appends: BUNDLE = json.loads(base64.b64decode("...")); sys.exit(main(BUNDLE))
