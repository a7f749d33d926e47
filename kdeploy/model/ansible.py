"""Read a kubespray-style Ansible inventory (INI or YAML) with ansible-core's own parser.

Groups: kube_control_plane (or the older kube-master / kube_master), etcd, kube_node
(kube-node); k8s_cluster:children ties them together. Host vars used: ansible_host (else ip,
else the host name), ip (the node address if set), ansible_user, ansible_port,
ansible_ssh_private_key_file, ansible_become. Cluster vars (from [all:vars] / k8s_cluster
vars, kubespray names): kube_version, cluster_name, kube_pods_subnet, kube_service_addresses,
kube_network_node_prefix, dns_domain, kube_proxy_mode, container_manager.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdeploy.errors import InventoryError

GROUPS = {
    "control-plane": ("kube_control_plane", "kube-master", "kube_master"),
    "etcd": ("etcd",),
    "worker": ("kube_node", "kube-node"),
}


NO_ADDRESS = "x-kdeploy-no-address"   # hosts named only in a group: (index, name, group)


def load_ansible(path: Path) -> dict[str, Any]:
    """Return the kdeploy document (dict) equivalent to the Ansible inventory at path."""
    # only the static parsers: an executable inventory (the script plugin) must never run
    # during validate/render/plan, and no plugin may reach out to a network service
    os.environ["ANSIBLE_INVENTORY_ENABLED"] = "ini,yaml"
    os.environ.setdefault("ANSIBLE_LOCALHOST_WARNING", "False")
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
    try:
        from ansible.errors import AnsibleError
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.vars.manager import VariableManager
    except ImportError:  # pragma: no cover - ansible-core is a dependency
        raise InventoryError("reading Ansible inventories needs ansible-core",
                             "pip install ansible-core", file=str(path)) from None
    loader = DataLoader()
    try:
        inv = InventoryManager(loader=loader, sources=[str(path)], parse=False)
        inv.parse_source(str(path))
    except AnsibleError as e:
        raise InventoryError(f"cannot parse the Ansible inventory: {e.message}",
                             "check the INI/YAML inventory syntax", file=str(path)) from None
    if not inv.hosts:
        raise InventoryError("not a kdeploy inventory, and no hosts found when read as an "
                             "Ansible inventory",
                             "start a kdeploy inventory with 'apiVersion: kdeploy.io/v1alpha1' or "
                             "use kubespray's groups kube_control_plane, etcd, kube_node",
                             file=str(path))
    vm = VariableManager(loader=loader, inventory=inv)
    roles: dict[str, list[str]] = {}
    for role, names in GROUPS.items():
        for g in names:
            if g in inv.groups:
                for h in inv.groups[g].get_hosts():
                    roles.setdefault(h.name, [])
                    if role not in roles[h.name]:
                        roles[h.name].append(role)
    if not roles:
        raise InventoryError("the Ansible inventory has none of the groups kube_control_plane, "
                             "etcd, kube_node", "put hosts into kubespray's groups", file=str(path))
    hosts = []
    no_address: list[tuple[int, str, str]] = []   # (index, host, a group naming it)
    cluster_vars: dict[str, Any] = {}
    for name in sorted(roles, key=lambda n: list(inv.hosts).index(n)):
        hv = vm.get_vars(host=inv.get_host(name), include_hostvars=False)
        cluster_vars = cluster_vars or hv
        entry: dict[str, Any] = {
            "name": name,
            "address": str(hv.get("ip") or hv.get("ansible_host") or name),
            "roles": roles[name],
        }
        if not (hv.get("ip") or hv.get("ansible_host")):
            group = next(g for role in roles[name] for g in GROUPS[role] if g in inv.groups
                         and name in {h.name for h in inv.groups[g].get_hosts()})
            no_address.append((len(hosts), name, group))
        ssh: dict[str, Any] = {}
        if "ansible_user" in hv:
            ssh["user"] = str(hv["ansible_user"])
        if "ansible_port" in hv:
            ssh["port"] = int(hv["ansible_port"])
        if "ansible_ssh_private_key_file" in hv:
            ssh["keyFile"] = str(hv["ansible_ssh_private_key_file"])
        if "ansible_become" in hv:
            ssh["sudo"] = str(hv["ansible_become"]).lower() in ("true", "yes", "1")
        if ssh:
            entry["ssh"] = ssh
        hosts.append(entry)
    v = cluster_vars
    network: dict[str, Any] = {}
    for src, dst in (("kube_pods_subnet", "podCIDR"), ("kube_service_addresses", "serviceCIDR"),
                     ("dns_domain", "clusterDomain")):
        if src in v:
            network[dst] = str(v[src])
    if "kube_network_node_prefix" in v:
        network["nodeCIDRMaskSize"] = int(v["kube_network_node_prefix"])
    spec: dict[str, Any] = {}
    if "kube_version" in v:
        spec["kubernetes"] = {"version": str(v["kube_version"]).lstrip("v")}
    if network:
        spec["network"] = network
    if "kube_proxy_mode" in v:
        spec["kubeProxy"] = {"mode": str(v["kube_proxy_mode"])}
    doc: dict[str, Any] = {"apiVersion": "kdeploy.io/v1alpha1", "kind": "Cluster", "spec": spec,
                           "hosts": hosts}
    if "cluster_name" in v:
        doc["metadata"] = {"name": str(v["cluster_name"]).split(".")[0]}
    doc[NO_ADDRESS] = no_address
    return doc
