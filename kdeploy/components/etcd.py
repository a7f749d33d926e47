"""etcd: the cluster's store, one member per etcd host, mutual TLS."""
from kdeploy.components import PRIVATE, Binary, Component, Row
from kdeploy.execute.steps import Gate
from kdeploy.model import defaults
from kdeploy.pki import paths
from kdeploy.plan.resources import Phase
from kdeploy.render.context import ETCD_BOOTSTRAP_ENV, ETCD_SYSUSERS, unit_path

ETCDCTL = (f"{defaults.BIN_DIR}/etcdctl --endpoints=https://127.0.0.1:{defaults.ETCD_CLIENT_PORT} "
           f"--cacert={paths.ETCD_CA_CRT} --cert={paths.ETCD_HEALTHCHECK_CLIENT_CRT} "
           f"--key={paths.ETCD_HEALTHCHECK_CLIENT_KEY}")

COMPONENT = Component(
    "etcd", Phase.etcd, role="etcd",
    files=(# etcd's system user (CIS 1.1.12), created in the os phase: its keys (kdeploy.pki) are
           # placed with that owner in the etcd phase; the unit's StateDirectory owns the data dir
           Row("etcd/sysusers.conf.j2", ETCD_SYSUSERS, phase=Phase.os,
               run_on_change=(("systemd-sysusers", ETCD_SYSUSERS),)),
           Row("etcd/etcd.service.j2", unit_path("etcd"), restarts=("etcd",), mode=PRIVATE),
           # no restart: etcd reads it only on its first start (kdeploy.verbs.membership)
           Row("etcd/etcd-bootstrap.env.j2", ETCD_BOOTSTRAP_ENV, mode=PRIVATE)),
    units=("etcd",),
    binaries=(Binary("etcd", "etcd"), Binary("etcdctl"), Binary("etcdutl")),
    ports=(defaults.ETCD_CLIENT_PORT, defaults.ETCD_PEER_PORT),
    gates=(Gate("etcd", "etcd", f"{ETCDCTL} endpoint health", 120, "etcd endpoint health"),),
    # a rolling upgrade moves on only when every member is healthy, not just this one
    rollout_gates=(Gate("etcd", "etcd", f"{ETCDCTL} endpoint health --cluster", 120,
                        "every etcd member healthy"),),
)
