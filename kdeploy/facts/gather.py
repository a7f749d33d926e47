"""Gather facts: one round trip per host (one script printing sections), hosts in parallel."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

from kdeploy.errors import KdeployError, TransportError
from kdeploy.facts import parse as P
from kdeploy.facts.model import HostFacts

log = logging.getLogger("kdeploy.facts")


def gather(transport, *, paths: Sequence[str] = (), units: Sequence[str] = (),
           ports: Sequence[int] = (), etcdctl: str | None = None, contents: Sequence[str] = (),
           timeout: float = 60) -> HostFacts:
    """Facts of one host. Read-only. Raises TransportError (host unreachable, sudo needs a
    password, no /bin/sh ...)."""
    paths, units, ports = list(dict.fromkeys(paths)), list(dict.fromkeys(units)), list(ports)
    contents = list(dict.fromkeys(contents))
    script = P.build_script(paths, units, ports, etcdctl, contents)
    t0 = time.time()
    res = transport.run(script, timeout=timeout, check=True)
    t1 = time.time()
    facts = parse_output(transport.host, res.stdout.decode("utf-8", "replace"),
                         paths=paths, units=units, ports=ports, local_time=(t0 + t1) / 2,
                         rtt=t1 - t0, contents=contents)
    log.debug("host %s: facts in %.3fs", transport.host, t1 - t0)
    return facts


def parse_output(host: str, out: str, *, paths: Sequence[str] = (), units: Sequence[str] = (),
                 ports: Sequence[int] = (), local_time: float = 0.0, rtt: float = 0.0,
                 contents: Sequence[str] = ()) -> HostFacts:
    """Pure: the facts script's output -> HostFacts. A contents section that does not parse
    leaves contents empty (observe() reads those files itself)."""
    s = P.split_sections(out)
    if "end" not in s:
        raise TransportError(f"host {host}: the facts script's output is incomplete",
                             "is /bin/sh a POSIX shell on the host?")
    arch, kernel = P.parse_uname(s.get("uname", ""))
    sha, stat = P.parse_files(s.get("file_stat", ""), s.get("file_sha", ""), paths)
    etcd_data, etcd_members = P.parse_etcd(s.get("etcd", ""))
    cpus, mem = P.parse_cpu_mem(s.get("cpu_mem", ""))
    return HostFacts(
        host=host,
        os_release=P.parse_os_release(s.get("os_release", "")),
        arch=arch, kernel=kernel,
        hostname=s.get("hostname", "").strip(),
        hostname_resolves=P.parse_yes(s.get("hostname_resolves", "")),
        swap_active=P.parse_swaps(s.get("swaps", "")),
        time=P.parse_time(s.get("time", "")), local_time=local_time, rtt=rtt,
        disk_free_bytes=P.parse_df(s.get("df", "")),
        file_sha256=sha, file_stat=stat,
        units=P.parse_units(s.get("units", ""), units) if units else {},
        ports_in_use=P.parse_ports(s.get("ports", ""), ports) if ports else (),
        modules=P.parse_modules(s.get("modules", "")),
        has_systemd=P.parse_yes(s.get("systemd", "")),
        python3=s.get("python3", "").strip() or None,
        cgroup_version=P.parse_cgroup(s.get("cgroup", "")),
        cpus=cpus, mem_bytes=mem,
        versions=P.parse_versions(s.get("versions", "")),
        etcd_data=etcd_data, etcd_members=etcd_members,
        contents=(P.parse_read(s.get("contents", ""), contents) or {}) if contents else {},
    )


def gather_all(transports: Mapping[str, object], *, paths: Sequence[str] | Mapping[str, Sequence[str]] = (),
               units: Sequence[str] | Mapping[str, Sequence[str]] = (),
               ports: Sequence[int] | Mapping[str, Sequence[int]] = (),
               etcdctl: Mapping[str, str] | None = None,
               contents: Sequence[str] | Mapping[str, Sequence[str]] = (),
               max_workers: int = 32) -> dict[str, HostFacts]:
    """Facts of many hosts in parallel. paths/units/ports/contents: one list for all, or
    {host: list}; etcdctl: {etcd host: the etcdctl command line reading its member list}.
    Any failure: one TransportError naming every host that failed and why."""
    def per(v, name):
        return v.get(name, ()) if isinstance(v, Mapping) else v

    if not transports:
        return {}
    out: dict[str, HostFacts] = {}
    failed: dict[str, str] = {}
    from kdeploy.transport.pool import group_of
    group = group_of(transports)
    if group is not None:  # one call for every host (ansible: one ansible-runner run)
        return _gather_group(group, transports, paths={n: per(paths, n) for n in transports},
                             units={n: per(units, n) for n in transports},
                             ports={n: per(ports, n) for n in transports}, etcdctl=etcdctl or {},
                             contents={n: per(contents, n) for n in transports})
    with ThreadPoolExecutor(max_workers=min(max_workers, len(transports)),
                            thread_name_prefix="kdeploy-facts") as ex:
        futs = {n: ex.submit(gather, t, paths=per(paths, n), units=per(units, n), ports=per(ports, n),
                             etcdctl=(etcdctl or {}).get(n), contents=per(contents, n))
                for n, t in transports.items()}
        for n, f in futs.items():
            try:
                out[n] = f.result()
            except KdeployError as e:
                failed[n] = e.message
            except Exception as e:  # noqa: BLE001
                failed[n] = f"{type(e).__name__}: {e}"
    if failed:
        raise TransportError(
            f"cannot gather facts of {len(failed)} host(s): " + ", ".join(sorted(failed)) + "\n"
            + "\n".join(f"  {n}: {failed[n]}" for n in sorted(failed)))
    return out


def _gather_group(group, transports, *, paths, units, ports, etcdctl, contents) -> dict[str, HostFacts]:
    args = {n: (list(dict.fromkeys(paths[n])), list(dict.fromkeys(units[n])), list(ports[n]))
            for n in transports}
    reads = {n: list(dict.fromkeys(contents[n])) for n in transports}
    scripts = {n: P.build_script(*args[n], etcdctl.get(n), reads[n]) for n in transports}
    t0 = time.time()
    results = group.run_many(scripts, timeout=60)
    t1 = time.time()
    out: dict[str, HostFacts] = {}
    failed: dict[str, str] = {}
    for n in transports:
        r = results.get(n)
        try:
            if isinstance(r, KdeployError):
                raise r
            if r is None or r.rc != 0:
                raise TransportError(f"host {n}: the facts script failed"
                                     + (f" (exit code {r.rc}): {r.err[-500:]}" if r is not None else ""))
            out[n] = parse_output(n, r.stdout.decode("utf-8", "replace"), paths=args[n][0],
                                  units=args[n][1], ports=args[n][2], local_time=(t0 + t1) / 2,
                                  rtt=t1 - t0, contents=reads[n])
        except KdeployError as e:
            failed[n] = e.message
    if failed:
        raise TransportError(
            f"cannot gather facts of {len(failed)} host(s): " + ", ".join(sorted(failed)) + "\n"
            + "\n".join(f"  {n}: {failed[n]}" for n in sorted(failed)))
    return out


def fake_output(fake, script: str) -> str:
    """What the facts script would print on a FakeTransport (from its in-memory state)."""
    import hashlib
    import json
    p = P.params_of(script)
    sysinfo = fake.system
    lines: list[str] = []

    def S(name: str) -> None:
        lines.append("")
        lines.append(P.SECTION + name)

    S("os_release")
    lines += [f'{k}="{v}"' for k, v in sysinfo["os_release"].items()]
    S("uname"); lines += [sysinfo["machine"], sysinfo["kernel"]]
    S("hostname"); lines.append(sysinfo["hostname"])
    S("hostname_resolves"); lines.append("yes" if sysinfo["hostname_resolves"] else "no")
    S("swaps"); lines.append("Filename\tType\tSize\tUsed\tPriority")
    if sysinfo["swap"]:
        lines.append("/swapfile file 1048572 0 -2")
    S("time"); lines.append(f"{time.time() + sysinfo['clock_offset']:.9f}")
    S("df"); lines.append("Filesystem 1-blocks Used Available Capacity Mounted on")
    for m in ("/", "/var"):
        lines.append(f"/dev/fake 100 0 {sysinfo['disk_free']} 1% /")
    S("systemd"); lines.append("yes" if sysinfo["systemd"] else "no")
    S("python3"); lines.append(sysinfo["python3"] or "")
    S("cgroup"); lines.append({2: "cgroup2fs", 1: "tmpfs"}.get(sysinfo["cgroup"], ""))
    S("cpu_mem"); lines += [str(sysinfo["cpus"]), f"MemTotal: {sysinfo['mem_bytes'] // 1024} kB"]
    S("modules"); lines += [f"{m} {st}" for m, st in sysinfo["modules"].items()]
    S("versions"); lines += [f"{b} Kubernetes v{v}" for b, v in sysinfo.get("versions", {}).items()]
    if p.get("etcd"):
        S("etcd")
        if fake.is_dir("/var/lib/etcd/member"):
            lines.append("data")
        if "etcd_members" in sysinfo and fake.units.get("etcd", {}).get("active") == "active":
            lines.append(json.dumps({"members": sysinfo["etcd_members"]}))
    if p["ports"]:
        S("ports")
        lines += [f"LISTEN 0 4096 0.0.0.0:{port} 0.0.0.0:*" for port in sorted(fake.listening)]
    if p["units"] and sysinfo["systemd"]:
        S("units")
        for u in p["units"]:
            st = fake.units.get(u)
            if st is None:
                lines += [f"Id={P._unit_id(u)}", "LoadState=not-found", "ActiveState=inactive",
                          "UnitFileState=", ""]
            else:
                lines += [f"Id={P._unit_id(u)}", "LoadState=loaded",
                          f"ActiveState={st.get('active', 'inactive')}",
                          f"UnitFileState={st.get('enabled', 'disabled')}", ""]
    if p["paths"]:
        S("file_stat")
        sha_lines = []
        for path in p["paths"]:
            f = fake.fs.get(path)
            if f is not None:
                lines.append(f"{path}\tregular file\t{f.mode:o}\t{f.owner}\t{f.group}\t{len(f.data)}")
                sha_lines.append(f"{hashlib.sha256(f.data).hexdigest()}  {path}")
            elif fake.is_dir(path):
                lines.append(f"{path}\tdirectory\t755\troot\troot\t4096")
        S("file_sha"); lines += sha_lines
    if p.get("contents"):
        import base64
        S("contents")
        for path in p["contents"]:
            f = fake.fs.get(path)
            lines += ["F", base64.b64encode(f.data).decode()] if f is not None else ["M", ""]
    S("end")
    return "\n".join(lines) + "\n"
