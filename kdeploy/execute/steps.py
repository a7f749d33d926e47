"""Lifecycle verbs as data: a verb is an ordered list of Steps over the one engine.

A Step applies the plan's changes of some phases to some hosts under a host Policy (all in
parallel, one at a time, or in batches), with per-host hooks before and after (cordon/drain,
wait Ready/uncordon) and the phases' gates between hosts. Hooks may act on another host than
the one being changed (a drain runs against the API); what they must undo if the run fails
(uncordon) they push on the engine's cleanup stack, which runs in reverse order.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Protocol

from kdeploy.errors import KdeployError


@dataclass(frozen=True)
class Policy:
    mode: str = "parallel"        # parallel | serial | batch
    size: int = 0                 # batch: hosts per batch
    percent: int = 0              # batch: this percentage of the step's hosts (rounded up, >= 1)

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """`N` (hosts per batch) or `P%` (of the hosts), as --batch takes them."""
        m = re.fullmatch(r"\s*(\d+)\s*(%?)\s*", str(text))
        if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
            raise KdeployError(f"batch {text!r} is not a count or a percentage",
                               "write e.g. --batch 1, --batch 2 or --batch 25%")
        n = int(m.group(1))
        return cls("batch", percent=n) if m.group(2) else cls("batch", size=n)

    def batches(self, hosts: list[str]) -> list[list[str]]:
        if not hosts:
            return []
        if self.mode == "parallel":
            return [list(hosts)]
        if self.mode == "serial":
            return [[h] for h in hosts]
        size = self.size or max(1, math.ceil(len(hosts) * self.percent / 100))
        return [hosts[i:i + size] for i in range(0, len(hosts), size)]

    def describe(self) -> str:
        if self.mode != "batch":
            return self.mode
        return f"batches of {self.size}" if self.size else f"batches of {self.percent}%"


@dataclass(frozen=True)
class Gate:
    """A check that must pass on a host after a phase changed it, retried until timeout."""
    phase: str
    role: str                 # hosts with this role run it
    cmd: str
    timeout: float = 120.0
    what: str = ""
    # a check of the host itself (its containerd answers): after a parallel step it runs on the
    # hosts the step changed, not on every host of the role (a worker joining 24 others does not
    # ask the 24 unchanged ones); False: a check of a cluster-wide service (etcd, the apiservers)
    # runs on every host of the role once any changed
    per_host: bool = False


PARALLEL = Policy()
SERIAL = Policy("serial")


class Context(Protocol):
    """What a hook sees: the engine's transports, its event sink and its cleanup stack."""
    def api(self, argv: list[str], *, timeout: float = 60, check: bool = True): ...
    def push_cleanup(self, key: str, what: str, fn: Callable[[], None]) -> None: ...
    def pop_cleanup(self, key: str) -> None: ...
    def emit(self, event: dict) -> None: ...


@dataclass(frozen=True)
class Hook:
    name: str                                   # shown in events: "drain", "uncordon"
    fn: Callable[[Context, str], None]          # (context, host being changed)

    def __call__(self, ctx: Context, host: str) -> None:
        self.fn(ctx, host)


@dataclass(frozen=True)
class Step:
    name: str
    phases: tuple[str, ...]
    policy: Policy = PARALLEL
    hosts: tuple[str, ...] | None = None        # None: any host; else only these, in this order
    before: tuple[Hook, ...] = ()
    after: tuple[Hook, ...] = ()
    # up's etcd/control-plane steps: parallel on a new cluster, one at a time (gated) as soon as
    # a running member would restart
    serial_when_restarting: bool = False
    gates: tuple | None = None                   # None: the engine's gates of these phases
    always: bool = False                         # hooks-only steps: every host of `hosts`, changes or not

    def hosts_with_changes(self, plan, default_order: tuple[str, ...]) -> list[str]:
        """The hosts this step acts on: its own (or default_order), those the plan changes in
        its phases, in that order."""
        order = self.hosts if self.hosts is not None else default_order
        if self.always:
            return list(order)
        return [h for h in order if any(plan.for_host_phase(h, p) for p in self.phases)]


def converge_steps(phases: tuple[str, ...]) -> tuple[Step, ...]:
    """`kdeploy up`: one step per phase, hosts in parallel; a running etcd or control plane
    rolls one host at a time."""
    return tuple(Step(p, (p,), serial_when_restarting=p in ("etcd", "control-plane"))
                 for p in phases)


@dataclass(frozen=True)
class Lanes:
    """Sequences of steps run side by side, each lane in its own order: `up` brings the control
    plane up (etcd, api-lb, control-plane) while every node installs its runtime and images,
    which need nothing from the control plane. The next step starts when every lane is done.
    A plan that restarts a running unit in these phases runs the lanes one after the other (a
    rolling change keeps today's order)."""
    name: str
    lanes: tuple[tuple[Step, ...], ...]

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(p for lane in self.lanes for s in lane for p in s.phases)

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(s for lane in self.lanes for s in lane)


CONTROL_LANE = ("etcd", "api-lb", "control-plane")
NODE_LANE = ("runtime", "images")


def with_lanes(steps: tuple[Step, ...]) -> tuple:
    """`up`'s steps with the control-plane steps and the nodes' runtime/images steps in one Lanes
    (placed where the first of them was); every other step keeps its place."""
    a = tuple(s for s in steps if set(s.phases) <= set(CONTROL_LANE))
    b = tuple(s for s in steps if set(s.phases) <= set(NODE_LANE))
    if not a or not b:
        return steps
    out: list = []
    for s in steps:
        if s in a or s in b:
            if not any(isinstance(x, Lanes) for x in out):
                out.append(Lanes("control-plane | runtime, images", (a, b)))
            continue
        out.append(s)
    return tuple(out)
