"""`kdeploy render --ansible DIR`: an Ansible project that deploys the cluster without kdeploy.

    ansible-playbook -i DIR/inventory DIR/cluster.yml     # = kdeploy up on new machines

Built from the one rendering path (kdeploy.plan.desired.desired_state, the PKI of the state
dir, the artifact set): the files on the hosts are byte for byte those `kdeploy up` places.

    DIR/ (0700)
      inventory/hosts.yml     hosts in groups mirroring kdeploy's roles (kubespray's names:
                              kube_control_plane, etcd, kube_node; k8s_cluster = all of them),
                              connection vars (user, port, key, known hosts, bastion, become)
      group_vars/all.yml      the cluster (name, version, API endpoint), kdeploy's phase order
      host_vars/<host>.yml    per phase: files, binaries, blocks, units, gates of the host
      files/<host>/<path>     rendered files (secrets 0600)
      blocks/<host>/<path>    blocks kdeploy owns inside files it does not own (/etc/hosts)
      binaries/<name>         the artifact set's files (hard links when possible)
      tasks/phase.yml         one phase on a host (the same for every phase)
      cluster.yml             `up`: one play per phase, in kdeploy's order
      README.md

Every string in the vars files is tagged `!unsafe`: Ansible never templates kdeploy's
content (a `{` in a jsonpath gate stays literal); file contents are copied, never templated.
A second run reports changed=0 on every host: copies compare checksums, commands run only
for a file that changed (its run_on_change), units are restarted only when one of their files
changed and they were not just started.
"""
from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from kdeploy.errors import KdeployError
from kdeploy.plan.resources import PHASES, HostResources

GROUP_OF_ROLE = {"control-plane": "kube_control_plane", "etcd": "etcd", "worker": "kube_node"}
GATE_DELAY = 2


class _Unsafe(str):
    pass


class _Dumper(yaml.SafeDumper):
    pass


def _unsafe_repr(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data else "'"
    return dumper.represent_scalar("!unsafe", str(data), style=style)


_Dumper.add_representer(_Unsafe, _unsafe_repr)


def _tag(v: Any) -> Any:
    """Every str -> !unsafe (never templated by Ansible); keys stay plain."""
    if isinstance(v, str):
        return _Unsafe(v)
    if isinstance(v, (list, tuple)):
        return [_tag(x) for x in v]
    if isinstance(v, dict):
        return {k: _tag(x) for k, x in v.items()}
    return v


def dump(data: Any, *, unsafe: bool = True) -> str:
    return yaml.dump(_tag(data) if unsafe else data, Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, width=1000)


def _unit_phases(res: HostResources) -> dict[str, int]:
    return {u.name: PHASES.index(u.phase) for u in res.units}


def host_vars(name: str, res: HostResources, gates_of_host: Mapping[str, list], *,
              binary_names: Mapping[str, str]) -> dict:
    """The host's vars: per phase (kdeploy's order) what tasks/phase.yml places and runs.
    binary_names: install path -> file name under binaries/. Pure."""
    unit_phase = _unit_phases(res)
    phases: dict[str, dict] = {}
    for i, ph in enumerate(PHASES):
        # want: what `stat -c %a:%U:%G` and sha256sum print for the placed file (tasks copy
        # only what differs: a re-run runs one command per phase, not one module per file)
        files = [{"src": f"files/{name}{f.path}", "dest": f.path, "mode": f"{f.mode:04o}",
                  "owner": f.owner, "group": f.group, "secret": bool(f.secret or not f.mode & 0o004),
                  "want": f"{f.mode:o}:{f.owner}:{f.group} {f.sha256}",
                  "restarts": list(f.restarts), "run": [list(a) for a in f.run_on_change]}
                 for f in res.files if f.phase == ph]
        bins = [{"src": f"binaries/{binary_names[b.path]}", "dest": b.path, "mode": f"{b.mode:04o}",
                 "want": f"{b.mode:o}:root:root {b.sha256}",
                 "restarts": list(b.restarts), "run": [list(a) for a in b.run_on_change]}
                for b in res.binaries if b.phase == ph]
        blocks = [{"src": f"blocks/{name}{b.path}", "dest": b.path, "marker": b.marker,
                   "restarts": [], "run": [list(a) for a in b.run_on_change]}
                  for b in res.blocks if b.phase == ph]
        units = [u.name for u in res.units if u.phase == ph and u.enabled and u.running]
        # restarts pending from this or earlier phases' files may run now (a unit of a later
        # phase is restarted, or started, at its own phase)
        upto = sorted(u for u, p in unit_phase.items() if p <= i)
        restarts = {u for r in (*res.files, *res.binaries) for u in r.restarts}
        upto += sorted(u for u in restarts if u not in unit_phase)  # not kdeploy's units: now
        gates = [{"cmd": g.cmd, "what": g.what or g.cmd,
                  "retries": max(1, int(g.timeout // GATE_DELAY))} for g in gates_of_host.get(ph, [])]
        dirs = sorted({posixpath.dirname(x["dest"]) for x in (*files, *bins)})
        if files or bins or blocks or units or gates:
            phases[str(ph)] = {"dirs": dirs, "binaries": bins, "files": files, "blocks": blocks,
                               "units": units, "restart_upto": sorted(set(upto)), "gates": gates}
    return {"kd_phases": phases}


def inventory(cluster) -> dict:
    """inventory/hosts.yml: kdeploy's roles as kubespray's groups, connection vars. Hosts
    reached through a network namespace (the lab) have no proxy here: run ansible-playbook
    inside the namespace (`ip netns exec NETNS ansible-playbook ...`)."""
    from kdeploy.transport.ansible import proxy_command
    from kdeploy.transport.base import ssh_kwargs
    hosts: dict[str, dict] = {}
    groups: dict[str, dict] = {g: {"hosts": {}} for g in GROUP_OF_ROLE.values()}
    for h in cluster.hosts:
        _, address, s = ssh_kwargs(cluster, h)
        kh = os.path.expanduser(str(s["known_hosts_file"] or "~/.ssh/known_hosts"))
        strict = s["strict_host_key_checking"]
        args = ["-o", f"UserKnownHostsFile={kh}",
                "-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}"]
        pc = proxy_command(None, s["bastion"], known_hosts=kh, strict=strict)
        if pc:
            args += ["-o", f"ProxyCommand={pc}"]
        import shlex
        hv: dict[str, Any] = {"ansible_host": address, "ansible_port": int(s["port"]),
                              "ansible_user": s["user"], "ansible_ssh_common_args": shlex.join(args)}
        if s["key_file"]:
            hv["ansible_ssh_private_key_file"] = s["key_file"]
        if s["sudo"] or s["user"] != "root":
            hv.update(ansible_become=True, ansible_become_method="sudo")
        hosts[h.name] = hv
        for r in h.roles:
            g = GROUP_OF_ROLE.get(r.value)
            if g:
                groups[g]["hosts"][h.name] = None
    groups = {g: v for g, v in groups.items() if v["hosts"]}
    return {"all": {"children": {"k8s_cluster": {"hosts": hosts, "children": groups}}}}


PHASE_TASKS = """\
# One kdeploy phase on one host (kd_phase; the host's kd_phases[kd_phase] from host_vars).
# Order as kdeploy's engine: binaries, files, blocks; daemon-reload when a unit file changed;
# the changed files' commands; units enabled and started; units whose files changed
# restarted (not those just started); then the phase's gates (until they pass).
- name: "{{ kd_phase }}: what this host gets"
  ansible.builtin.set_fact:
    kd_p: "{{ kd_phases[kd_phase] | default({'dirs': [], 'binaries': [], 'files': [], 'blocks': [], 'units': [], 'restart_upto': [], 'gates': []}) }}"

- name: "{{ kd_phase }}: what is on the host (mode:owner:group sha256 per file)"
  ansible.builtin.command:
    argv: "{{ ['sh', '-c', kd_have_script, 'sh'] + ((kd_p.binaries + kd_p.files) | map(attribute='dest') | list) }}"
  vars:
    kd_have_script: >-
      for f in "$@"; do if [ -f "$f" ]; then
      echo "$(stat -c %%a:%%U:%%G -- "$f") $(sha256sum < "$f" | cut -d' ' -f1)";
      else echo missing; fi; done
  register: kd_have
  changed_when: false
  when: (kd_p.binaries + kd_p.files) | length > 0

- name: "{{ kd_phase }}: directories"
  ansible.builtin.file:
    path: "{{ item }}"
    state: directory
  loop: "{{ kd_p.dirs }}"
  when: "'missing' in (kd_have.stdout_lines | default([]))"

- name: "{{ kd_phase }}: binaries"
  ansible.builtin.copy:
    src: "{{ playbook_dir }}/{{ item.src }}"
    dest: "{{ item.dest }}"
    mode: "{{ item.mode }}"
    owner: root
    group: root
  loop: "{{ kd_p.binaries }}"
  loop_control:
    label: "{{ item.dest }}"
    index_var: kd_i
  when: kd_have.stdout_lines[kd_i] != item.want
  register: kd_bins

- name: "{{ kd_phase }}: files"
  ansible.builtin.copy:
    src: "{{ playbook_dir }}/{{ item.src }}"
    dest: "{{ item.dest }}"
    mode: "{{ item.mode }}"
    owner: "{{ item.owner }}"
    group: "{{ item.group }}"
  loop: "{{ kd_p.files }}"
  loop_control:
    label: "{{ item.dest }}"
    index_var: kd_i
  when: kd_have.stdout_lines[(kd_p.binaries | length) + kd_i] != item.want
  no_log: "{{ item.secret }}"
  register: kd_files

- name: "{{ kd_phase }}: blocks"
  ansible.builtin.blockinfile:
    path: "{{ item.dest }}"
    block: "{{ lookup('ansible.builtin.file', playbook_dir ~ '/' ~ item.src) }}"
    marker: "# {mark}"
    marker_begin: "BEGIN {{ item.marker }} (managed by kdeploy)"
    marker_end: "END {{ item.marker }}"
    create: true
    mode: "0644"
  loop: "{{ kd_p.blocks }}"
  loop_control:
    label: "{{ item.dest }}"
  register: kd_blocks

- name: "{{ kd_phase }}: what changed"
  ansible.builtin.set_fact:
    kd_changed: "{{ ((kd_bins.results | default([])) + (kd_files.results | default([])) + (kd_blocks.results | default([]))) | selectattr('changed') | map(attribute='item') | list }}"

- name: "{{ kd_phase }}: systemd daemon-reload"
  ansible.builtin.systemd_service:
    daemon_reload: true
  when: kd_changed | map(attribute='dest') | select('search', '/systemd/system/') | list | length > 0

- name: "{{ kd_phase }}: commands of changed files"
  ansible.builtin.command:
    argv: "{{ item }}"
  loop: "{{ kd_changed | map(attribute='run') | flatten(levels=1) | list }}"
  changed_when: true

- name: "{{ kd_phase }}: units' state"
  ansible.builtin.command:
    argv: "{{ ['sh', '-c', kd_units_script, 'sh'] + kd_p.units }}"
  vars:
    kd_units_script: >-
      for u in "$@"; do echo "$(systemctl is-enabled -- "$u" 2>/dev/null) $(systemctl is-active -- "$u" 2>/dev/null)"; done
  register: kd_units
  changed_when: false
  when: kd_p.units | length > 0

- name: "{{ kd_phase }}: units enabled and started"
  ansible.builtin.systemd_service:
    name: "{{ item }}"
    enabled: true
    state: started
  loop: "{{ kd_p.units }}"
  loop_control:
    index_var: kd_i
  when: kd_units.stdout_lines[kd_i] != 'enabled active'
  register: kd_started

- name: "{{ kd_phase }}: restarts due"
  ansible.builtin.set_fact:
    kd_restart: "{{ kd_all | intersect(kd_p.restart_upto) }}"
    kd_pending: "{{ kd_all | difference(kd_p.restart_upto) }}"
  vars:
    # earlier phases' pending restarts + this phase's changed files', less the units that
    # were just started (they run the new files already)
    kd_all: "{{ ((kd_pending | default([])) + (kd_changed | map(attribute='restarts') | flatten | list)) | unique | difference(kd_started.results | default([]) | selectattr('changed') | map(attribute='item') | list) }}"

- name: "{{ kd_phase }}: units whose files changed restarted"
  ansible.builtin.systemd_service:
    name: "{{ item }}"
    state: restarted
  loop: "{{ kd_restart }}"

- name: "{{ kd_phase }}: gates"
  ansible.builtin.command:
    argv: ["sh", "-c", "{{ item.cmd }}"]
  register: kd_gate
  until: kd_gate.rc == 0
  retries: "{{ item.retries }}"
  delay: %(delay)d
  changed_when: false
  loop: "{{ kd_p.gates }}"
  loop_control:
    label: "{{ item.what }}"
""" % {"delay": GATE_DELAY}


def cluster_playbook(phases=PHASES) -> str:
    out = ["# kdeploy up, without kdeploy: ansible-playbook -i inventory cluster.yml",
           "# One play per kdeploy phase, in kdeploy's order; hosts in parallel (a new cluster).",
           "# Rolling changes of a running control plane (one host at a time, drains) are",
           "# kdeploy upgrade's job: see README.md."]
    for ph in phases:
        out += [f"- name: kdeploy phase {ph}", "  hosts: k8s_cluster", "  gather_facts: false",
                "  tasks:", "    - name: phase", "      ansible.builtin.import_tasks: tasks/phase.yml",
                "      vars:", f"        kd_phase: {ph}", ""]
    return "\n".join(out)


README = """\
# {name}: an Ansible project written by `kdeploy render --ansible`

    ansible-playbook -i inventory cluster.yml

deploys Kubernetes {version} on the hosts of `inventory/hosts.yml` exactly as `kdeploy up`
would (the same files, byte for byte, the same phases, restarts and gates). kdeploy need not
be installed on the control node: ansible-core >= 2.15 and ssh are enough; the hosts need
python3 and systemd. A second run reports changed=0.

Hosts behind a network namespace (kdeploy's lab) are reached from inside it:
`ip netns exec NETNS ansible-playbook -i inventory cluster.yml`.

Playbooks per lifecycle verb:

| kdeploy verb                 | playbook     |
|------------------------------|--------------|
| up (new cluster, converge)   | cluster.yml  |
| upgrade, node add/remove, reset, etcd backup/restore, certs renew | not provided yet: use kdeploy |

Not here (kdeploy does it): the journal of pending restarts (an interrupted run that wrote a
file but did not restart its unit: restart it by hand, or re-render and re-run), rolling one
host at a time when a running etcd or control plane changes, etcd membership changes.

Secrets (private keys, tokens, kubeconfigs) are in files/ and binaries are in binaries/;
the project directory is 0700 and secret files 0600: keep it as private as the cluster's CA.
"""


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if dst.exists():
            dst.unlink()
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_project(out: Path, cluster, desired: Mapping[str, HostResources], *,
                  gates=()) -> dict[str, int]:
    """Write the project into `out` (created 0700). {host: files written}."""
    from kdeploy.pki.crypto import write_atomic
    from kdeploy.plan.desired import roles_of
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    roles = roles_of(cluster)
    # binaries: one copy per artifact, named by their file name (unique per install path)
    names: dict[str, str] = {}
    srcs: dict[str, str] = {}
    for res in desired.values():
        for b in res.binaries:
            base = posixpath.basename(b.path)
            key = names.get(b.path)
            if key is None:
                key = base if base not in srcs or srcs[base] == b.local_path else f"{base}.{len(srcs)}"
                names[b.path] = key
                srcs[key] = b.local_path
    for key, src in srcs.items():
        _link_or_copy(Path(src), out / "binaries" / key)
    counts: dict[str, int] = {}
    for name, res in desired.items():
        for f in res.files:
            write_atomic(out / "files" / name / f.path.lstrip("/"), f.content, 0o600)
        for b in res.blocks:
            write_atomic(out / "blocks" / name / b.path.lstrip("/"), b.content.encode(), 0o600)
        gates_of_host: dict[str, list] = {}
        for g in gates:
            if g.role in roles[name]:
                gates_of_host.setdefault(str(g.phase), []).append(g)
        hv = host_vars(name, res, gates_of_host, binary_names=names)
        write_atomic(out / "host_vars" / f"{name}.yml", dump(hv).encode(), 0o600)
        counts[name] = len(res.files) + len(res.blocks) + len(res.binaries)
    write_atomic(out / "inventory" / "hosts.yml", dump(inventory(cluster)).encode(), 0o600)
    gv = {"kdeploy_cluster": cluster.name, "kdeploy_kubernetes_version": cluster.version,
          "kdeploy_api_server": cluster.api_server_url, "kdeploy_phases": [str(p) for p in PHASES],
          "ansible_python_interpreter": "/usr/bin/python3",
          # one ssh round trip per module (sudo without requiretty, as kdeploy needs anyway)
          "ansible_pipelining": True}
    write_atomic(out / "group_vars" / "all.yml", dump(gv).encode(), 0o600)
    write_atomic(out / "tasks" / "phase.yml", PHASE_TASKS.encode(), 0o644)
    write_atomic(out / "cluster.yml", cluster_playbook().encode(), 0o644)
    write_atomic(out / "README.md", README.format(name=cluster.name, version=cluster.version).encode(),
                 0o644)
    for d in ("files", "blocks", "binaries", "host_vars", "inventory", "group_vars", "tasks"):
        if (out / d).is_dir():
            (out / d).chmod(0o700)
    return counts


def check_target(out: Path) -> None:
    """Refuse to write into a directory that is not empty and not an earlier project."""
    if out.exists() and not out.is_dir():
        raise KdeployError(f"{out} exists and is not a directory", "pass a directory to --ansible")
    if out.is_dir() and any(out.iterdir()) and not (out / "cluster.yml").is_file():
        raise KdeployError(f"{out} is not empty and holds no kdeploy Ansible project",
                           "pass an empty or new directory to --ansible")
