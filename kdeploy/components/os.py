"""The host itself: kernel modules and sysctls every node needs."""
from kdeploy.components import Component, Row
from kdeploy.plan.resources import Phase
from kdeploy.render.context import MODULES_CONF, SYSCTL_CONF

COMPONENT = Component(
    "os", Phase.os,
    files=(
        # load now what the kernel lacks (built-in modules need no modprobe: overlay shows in
        # /proc/filesystems, br_netfilter as /proc/sys/net/bridge); at boot systemd-modules-load
        # reads the file. Container machines and kernels with these built in run no modprobe.
        Row("os/modules-load.conf.j2", MODULES_CONF,
            run_on_change=(("sh", "-c", "{ grep -qw overlay /proc/filesystems || modprobe overlay; } && "
                            "{ [ -d /proc/sys/net/bridge ] || modprobe br_netfilter; }"),)),
        Row("os/sysctl.conf.j2", SYSCTL_CONF, run_on_change=(("sysctl", "-p", SYSCTL_CONF),)),
    ),
)
