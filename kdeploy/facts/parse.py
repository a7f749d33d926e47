"""The facts script (one shell script per host, printing sections) and its pure parsers.

Each fact is a command (a section of the script) plus a parser (a pure function of the text it
printed). Parsers never raise on odd output: they return the "unknown" value instead.
"""
from __future__ import annotations

import json
import shlex
from typing import Sequence

from kdeploy.transport.base import SHA256_TOOL

MARKER = "kdeploy-facts-v1"
SECTION = "@@kdeploy:"
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


# sha256sum output for the paths, reusing a hash while the file's size, ctime and inode are
# unchanged (a cache in kdeploy's own dir on the host: hashing ~600 MB of binaries on every
# run would dominate a no-op `kdeploy up`). Any write or rename changes ctime/inode.
SHA_CACHE = "/var/lib/kdeploy/sha256.cache"
SHA_CACHED = r"""C=%s; N=/dev/null; T=$(mktemp -d 2>/dev/null || echo /tmp/kdeploy-sha.$$)
mkdir -p "$T"; : > "$T/hit"; : > "$T/miss"; : > "$T/h"; [ -f "$C" ] || C=/dev/null
[ -d /var/lib/kdeploy ] && N="%s.$$" && : > "$N"
# a constant number of processes whatever the number of paths: one stat, a few awk, one hasher
stat -L -c '%%f %%s %%Z %%i %%n' -- @PATHS@ 2>/dev/null \
  | awk 'length($1) == 4 && substr($1, 1, 1) == "8" {print $2, $3, $4, $5}' > "$T/s"
awk -v T="$T" 'FILENAME == ARGV[1] {c[$5] = $1; k[$5] = $2 " " $3 " " $4; next}
  ($4 in c) && k[$4] == $1 " " $2 " " $3 {print c[$4], $1, $2, $3, $4 > (T "/hit"); next}
  {print > (T "/miss")}' "$C" "$T/s"
%s
[ -s "$T/miss" ] && awk '{print $4}' "$T/miss" | xargs -d '\n' $KD_SHA 2>/dev/null | sed 's/ \*/  /' > "$T/h"
awk 'FILENAME == ARGV[1] {k[$4] = $1 " " $2 " " $3; next} ($2 in k) {print $1, k[$2], $2}' \
  "$T/miss" "$T/h" >> "$T/hit"
awk '{print $1 "  " $5}' "$T/hit"
if [ "$N" != /dev/null ]; then  # keep the entries of paths not looked at this time
  cp "$T/hit" "$N" && awk 'FILENAME == ARGV[1] {s[$5] = 1; next} !($5 in s)' "$T/hit" "$C" >> "$N"
  mv -f "$N" "%s"
fi
rm -rf "$T"
""" % (SHA_CACHE, SHA_CACHE, SHA256_TOOL, SHA_CACHE)

# record the hashes of files kdeploy just wrote and checked (upload verified their sha256), so
# neither this run nor the next hashes them again; same cache format as SHA_CACHED; @PAIRS@ are
# "sha256 path" lines
SHA_PRIME = r"""C=%s; mkdir -p /var/lib/kdeploy; N="$C.$$"; : > "$N"
while read -r h p; do
  k=$(stat -c '%%s %%Z %%i' -- "$p" 2>/dev/null) && echo "$h $k $p" >> "$N"
done <<'KDEPLOY_EOF'
@PAIRS@
KDEPLOY_EOF
[ -f "$C" ] && awk 'FILENAME==ARGV[1] {s[$5]=1; next} !($5 in s)' "$N" "$C" > "$N.o" && cat "$N.o" >> "$N"
rm -f "$N.o"; mv -f "$N" "$C"
""" % SHA_CACHE


# the versions of the components as installed (what `kdeploy upgrade` and `up` compare with the
# inventory); a binary that is not there prints nothing. Starting four Go binaries on every host
# dominated a no-op's facts: a version is kept in a cache beside the hash cache while the
# binary's size, ctime and inode are unchanged (as SHA_CACHED does)
VERSION_BINARIES = ("kube-apiserver", "kubelet", "kube-proxy", "etcd")
VERSIONS_CACHE = "/var/lib/kdeploy/versions.cache"
VERSIONS_SCRIPT = r"""S versions
V=%s
for b in %s; do
  p=/usr/local/bin/$b; [ -x $p ] || continue
  k="$(stat -c '%%s %%Z %%i' -- $p 2>/dev/null) $p"; v=""
  [ -f $V ] && v=$(awk -v k="$k" 'index($0, k " ") == 1 {print substr($0, length(k) + 2); exit}' $V)
  if [ -z "$v" ]; then
    v=$($p --version 2>/dev/null | head -n1)
    if [ -n "$v" ] && [ -d "${V%%/*}" ]; then
      { grep -v " $p " $V 2>/dev/null; echo "$k $v"; } > $V.$$ && mv -f $V.$$ $V
    fi
  fi
  echo "$b $v"
done
""" % (VERSIONS_CACHE, " ".join(VERSION_BINARIES))


# etcd membership: whether this host holds etcd data, and the member list as its own running
# member reports it (read from etcd, never guessed from the inventory)
ETCD_SCRIPT = """S etcd
[ -d %s/member ] && echo data
if [ -x /usr/local/bin/etcdctl ] && systemctl is-active -q etcd 2>/dev/null; then
  timeout 10 %s member list -w json 2>/dev/null | tr -d '\\n'; echo
fi
"""


# each path's content: "F" and its base64 on one line, or "M" and an empty line (missing)
READ_FILES = ('for p in "$@"; do if [ -f "$p" ]; then printf "F\\n"; base64 -w0 -- "$p"; echo; '
              'else printf "M\\n\\n"; fi; done')


def parse_read(text: str, paths: Sequence[str]) -> dict[str, bytes | None] | None:
    """READ_FILES' output -> {path: bytes or None (missing)}; None when it is incomplete."""
    import base64
    import binascii
    lines = text.split("\n")
    out: dict[str, bytes | None] = {}
    for i, path in enumerate(paths):
        tag = lines[2 * i] if 2 * i < len(lines) else ""
        data = lines[2 * i + 1] if 2 * i + 1 < len(lines) else ""
        if tag == "M":
            out[path] = None
        elif tag == "F":
            try:
                out[path] = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return None
        else:
            return None
    return out


def build_script(paths: Sequence[str] = (), units: Sequence[str] = (),
                 ports: Sequence[int] = (), etcdctl: str | None = None,
                 contents: Sequence[str] = ()) -> str:
    """One POSIX sh script printing every section; its first line carries the parameters.
    contents: small files whose text the plan needs (the files holding blocks, the journal),
    read here rather than in a second round trip per host."""
    q = shlex.quote
    params = json.dumps({"paths": list(paths), "units": list(units), "ports": list(ports),
                         "etcd": bool(etcdctl), "contents": list(contents)})
    qp = " ".join(q(p) for p in paths)
    qu = " ".join(q(u) for u in units)
    s = f"""# {MARKER} {params}
export LC_ALL=C PATH="$PATH:/usr/sbin:/sbin:/usr/bin:/bin"
S() {{ printf '\\n{SECTION}%s\\n' "$1"; }}
S os_release; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
S uname; uname -m; uname -r
S hostname; h=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname); echo "$h"
S hostname_resolves; if timeout 3 getent ahostsv4 "$h" >/dev/null 2>&1; then echo yes; else echo no; fi
S swaps; cat /proc/swaps 2>/dev/null
S time; date +%s.%N
S df; df -P -B1 / /var 2>/dev/null
S systemd; if [ -d /run/systemd/system ]; then echo yes; else echo no; fi
S python3; command -v python3 2>/dev/null || true
S cgroup; stat -fc %T /sys/fs/cgroup 2>/dev/null
S cpu_mem; nproc 2>/dev/null; grep '^MemTotal:' /proc/meminfo 2>/dev/null
S modules
for m in br_netfilter overlay; do
  if [ -d /sys/module/$m ]; then echo "$m loaded"
  elif [ $m = br_netfilter ] && [ -d /proc/sys/net/bridge ]; then echo "$m builtin"
  elif [ $m = overlay ] && grep -qw overlay /proc/filesystems 2>/dev/null; then echo "$m builtin"
  elif modprobe -n $m >/dev/null 2>&1; then echo "$m available"
  else echo "$m missing"; fi
done
"""
    s += VERSIONS_SCRIPT
    if etcdctl:
        from kdeploy.model.defaults import ETCD_DATA_DIR
        s += ETCD_SCRIPT % (ETCD_DATA_DIR, etcdctl)
    if ports:
        s += ("S ports; if command -v ss >/dev/null 2>&1; then ss -ltnH 2>/dev/null; "
              "else echo '#proc'; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; fi\n")
    if units:
        s += (f"S units; systemctl show --no-pager -p Id,LoadState,ActiveState,UnitFileState "
              f"-- {qu} 2>/dev/null\n")
    if paths:
        s += (f"S file_stat; stat --printf '%n\\t%F\\t%a\\t%U\\t%G\\t%s\\n' -- {qp} 2>/dev/null\n"
              f"S file_sha\n" + SHA_CACHED.replace("@PATHS@", qp))
    if contents:
        s += (f"S contents\nR() {{ {READ_FILES}; }}\nR " + " ".join(q(p) for p in contents) + "\n")
    s += "S end\nexit 0\n"
    return s


def params_of(script: str) -> dict:
    """The parameters a script was built with (for fakes and logs)."""
    first = script.split("\n", 1)[0]
    return json.loads(first.split(MARKER, 1)[1])


def split_sections(out: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    cur = None
    for line in out.split("\n"):
        if line.startswith(SECTION):
            cur = line[len(SECTION):].strip()
            sections[cur] = []
        elif cur is not None:
            sections[cur].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in sections.items()}


# --- parsers (pure) ---------------------------------------------------------------------------

def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        try:
            parts = shlex.split(v)
            v = parts[0] if parts else ""
        except ValueError:
            v = v.strip("\"'")
        out[k.strip()] = v
    return {k: out[k] for k in ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME", "ID_LIKE")
            if k in out}


def parse_uname(text: str) -> tuple[str, str]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    machine = lines[0] if lines else ""
    kernel = lines[1] if len(lines) > 1 else ""
    return ARCH.get(machine, machine), kernel


def parse_swaps(text: str) -> bool:
    """/proc/swaps: a header line, then one line per active swap area."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return any(not ln.startswith("Filename") for ln in lines)


def parse_time(text: str) -> float:
    t = text.strip()
    try:
        return float(t)
    except ValueError:  # busybox date: no %N
        try:
            return float(t.split(".")[0])
        except ValueError:
            return 0.0


def parse_df(text: str, mounts: Sequence[str] = ("/", "/var")) -> dict[str, int]:
    """df -P -B1 / /var: rows in argument order (a /var on / shows mount point /)."""
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("Filesystem")]
    out: dict[str, int] = {}
    for m, row in zip(mounts, rows):
        if len(row) >= 6 and row[3].isdigit():
            out[m] = int(row[3])
    return out


def parse_yes(text: str) -> bool:
    return text.strip().splitlines()[:1] == ["yes"]


def parse_cgroup(text: str) -> int | None:
    t = text.strip()
    if t == "cgroup2fs":
        return 2
    if t in ("tmpfs", "cgroupfs"):
        return 1
    return None


def parse_cpu_mem(text: str) -> tuple[int, int]:
    cpus = mem = 0
    for ln in text.splitlines():
        ln = ln.strip()
        if ln.isdigit():
            cpus = int(ln)
        elif ln.startswith("MemTotal:"):
            parts = ln.split()
            if len(parts) >= 2 and parts[1].isdigit():
                mem = int(parts[1]) * (1024 if len(parts) < 3 or parts[2].lower() == "kb" else 1)
    return cpus, mem


def parse_modules(text: str) -> dict[str, str]:
    out = {}
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def parse_ports(text: str, wanted: Sequence[int]) -> tuple[int, ...]:
    """`ss -ltnH` lines, or /proc/net/tcp{,6} after a '#proc' line: the wanted ports listened on."""
    wanted_set = set(int(p) for p in wanted)
    found: set[int] = set()
    lines = text.splitlines()
    if lines and lines[0].strip() == "#proc":
        for ln in lines[1:]:
            parts = ln.split()
            # sl local_address rem_address st ...; st 0A = LISTEN
            if len(parts) >= 4 and ":" in parts[1] and parts[3] == "0A":
                try:
                    found.add(int(parts[1].rsplit(":", 1)[1], 16))
                except ValueError:
                    pass
    else:
        for ln in lines:
            parts = ln.split()
            if len(parts) >= 4 and parts[0] == "LISTEN":
                port = parts[3].rsplit(":", 1)[-1]
                if port.isdigit():
                    found.add(int(port))
    return tuple(sorted(found & wanted_set))


def _unit_id(name: str) -> str:
    known = (".service", ".socket", ".target", ".mount", ".timer", ".path", ".slice", ".scope",
             ".device", ".swap", ".automount")
    return name if name.endswith(known) else name + ".service"


def parse_units(text: str, units: Sequence[str]) -> dict[str, dict[str, str]]:
    """`systemctl show -p Id,LoadState,ActiveState,UnitFileState u...`: blank-line separated
    blocks. A unit absent from the output (no systemd) is reported as unknown."""
    blocks: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for ln in text.splitlines() + [""]:
        if not ln.strip():
            if cur.get("Id"):
                blocks[cur["Id"]] = cur
            cur = {}
            continue
        k, _, v = ln.partition("=")
        cur[k.strip()] = v.strip()
    out: dict[str, dict[str, str]] = {}
    for u in units:
        b = blocks.get(_unit_id(u))
        if b is None:
            out[u] = {"active": "unknown", "enabled": "unknown"}
        elif b.get("LoadState") == "not-found":
            out[u] = {"active": b.get("ActiveState") or "inactive", "enabled": "not-found"}
        else:
            out[u] = {"active": b.get("ActiveState") or "unknown",
                      "enabled": b.get("UnitFileState") or "static"}
    return out


def parse_files(stat_text: str, sha_text: str, paths: Sequence[str]
                ) -> tuple[dict[str, str | None], dict[str, dict]]:
    """stat --printf '%n\\t%F\\t%a\\t%U\\t%G\\t%s\\n' and sha256sum output -> (sha256, stat) per path.
    A missing path: sha None, no stat. A directory: sha "dir". An unreadable file: sha "?"."""
    stats: dict[str, dict] = {}
    for ln in stat_text.splitlines():
        parts = ln.split("\t")
        if len(parts) != 6:
            continue
        name, ftype, mode, owner, group, size = parts
        try:
            stats[name] = {"type": ftype, "mode": int(mode, 8), "owner": owner, "group": group,
                           "size": int(size)}
        except ValueError:
            continue
    shas: dict[str, str] = {}
    for ln in sha_text.splitlines():
        if len(ln) > 66 and ln[64:66] in ("  ", " *"):
            h = ln[:64]
            name = ln[66:]
            if ln.startswith("\\"):  # sha256sum escapes odd names; we never use such paths
                continue
            shas[name] = h
    sha_out: dict[str, str | None] = {}
    stat_out: dict[str, dict] = {}
    for p in paths:
        st = stats.get(p)
        if st is None:
            sha_out[p] = None
            continue
        stat_out[p] = st
        if st["type"] == "directory":
            sha_out[p] = "dir"
        else:
            sha_out[p] = shas.get(p, "?")
    return sha_out, stat_out


def parse_versions(text: str) -> dict[str, str]:
    """`kubelet Kubernetes v1.37.2`, `etcd etcd Version: 3.7.0` -> {kubelet: 1.37.2, etcd: 3.7.0}."""
    import re
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, _, rest = line.strip().partition(" ")
        m = re.search(r"v?(\d+\.\d+\.\d+)", rest)
        if name and m:
            out[name] = m.group(1)
    return out


def parse_etcd(text: str) -> tuple[bool, tuple[dict, ...] | None]:
    """(this host holds etcd data, the member list or None when it could not be read). A
    member: {id (hex), name ("" until started), peer_urls, learner}."""
    data = False
    members = None
    for line in text.splitlines():
        line = line.strip()
        if line == "data":
            data = True
        elif line.startswith("{"):
            try:
                doc = json.loads(line)
                members = tuple(
                    {"id": format(int(m["ID"]), "x"), "name": m.get("name", ""),
                     "peer_urls": tuple(m.get("peerURLs", ())), "learner": bool(m.get("isLearner")),
                     "client_urls": tuple(m.get("clientURLs", ()))}
                    for m in doc.get("members", ()))
            except (ValueError, KeyError, TypeError, AttributeError):
                members = None
    return data, members
