"""Timeline actions: what a scenario does to its backends, its traffic, its gateway and its
Redis, and when.

Each action is one async function in the `ACTIONS` registry, under the name a scenario
writes in `do:`; adding an action is adding one function (and its parameters in
`scenario.ACTION_NAMES`). Sim faults stack: `errors` after `latency` keeps the latency,
and `heal` returns a sim to the faults it started with.

Sims are reached through `SimHandle`: `LocalSim` wraps a `SimServer` this process runs,
`RemoteSim` drives one elsewhere through its control API. A failed action (a sim that
cannot listen again, a reload the gateway refused) does not stop the run: it is recorded
with its reason, shown in the report, and the scenario's SLOs judge the consequences.

The operator's actions (`capture`, `switch`, `switch-back`) go through the gateway's admin
API with the very client `tailguard ctl` uses (`gateway.ctl.AdminClient`), asked of the
first replica: what the scenario proves is what an operator would get.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from gateway.ctl import AdminClient, AdminRefused, AdminUnreachable
from gateway.loadtest.scenario import ActionModel, ScenarioModel, SimModel, SimOutputsModel
from gateway.sim import Faults, Latency, SimControl, SimControlError, SimServer
from gateway.sim.outputs import Outputs

__all__ = [
    "ACTIONS",
    "ActionError",
    "ActionRecord",
    "FaultContext",
    "LocalSim",
    "NoisyNeighbour",
    "RemoteSim",
    "SimHandle",
    "base_faults",
    "base_outputs",
    "run_timeline",
]

log = logging.getLogger(__name__)


class ActionError(Exception):
    """An action could not be carried out; the message says why, for the report."""


class SimHandle(Protocol):
    """One sim the timeline can act on; `faults` is the set in force now."""

    spec: SimModel
    faults: Faults
    outputs: Outputs

    async def apply(self, faults: Faults) -> None: ...

    async def set_outputs(self, outputs: Outputs) -> None: ...

    async def die(self) -> None: ...

    async def revive(self) -> None: ...

    async def backend_requests(self) -> int:
        """Model calls served so far (health probes excluded), for requests-per-request."""
        ...


def base_faults(spec: SimModel) -> Faults:
    """The faults a sim starts with: its base latency, and its tail if it has one."""
    if spec.latency == 0:
        return Faults()
    ms = spec.latency * 1000.0
    if spec.tail is None:
        return Faults(latency=Latency(kind="fixed", ms=ms))
    return Faults(
        latency=Latency(kind="tail", ms=ms, tail_rate=spec.tail.share, tail_factor=spec.tail.factor)
    )


def base_outputs(spec: SimOutputsModel | None) -> Outputs:
    """What a sim's classifier answers at the start (nothing extra without `outputs`)."""
    if spec is None:
        return Outputs()
    return Outputs(classes=spec.classes, bias=spec.bias, disagree_rate=spec.disagree)


def _served(stats: Mapping[str, object]) -> int:
    by_kind = stats.get("by_kind")
    total = stats.get("total")
    health = by_kind.get("health", 0) if isinstance(by_kind, Mapping) else 0
    return int(total) - int(health) if isinstance(total, int) and isinstance(health, int) else 0


class LocalSim:
    """A sim served by this process."""

    def __init__(self, spec: SimModel, server: SimServer) -> None:
        self.spec = spec
        self.server = server
        self.faults = server.faults
        self.outputs = server.outputs

    async def apply(self, faults: Faults) -> None:
        self.server.faults = self.faults = faults

    async def set_outputs(self, outputs: Outputs) -> None:
        self.server.outputs = self.outputs = outputs

    async def die(self) -> None:
        await self.server.die()

    async def revive(self) -> None:
        try:
            await self.server.revive()
        except (OSError, RuntimeError) as e:
            raise ActionError(f"sim {self.spec.name} cannot listen again: {e}") from None

    async def backend_requests(self) -> int:
        return _served(self.server.stats.to_dict())


class RemoteSim:
    """A sim that runs elsewhere, driven through its control API (its control_url, else url)."""

    def __init__(self, spec: SimModel, control: SimControl) -> None:
        self.spec = spec
        self.control = control
        self.faults = Faults()
        self.outputs = base_outputs(spec.outputs)

    async def _call(self, what: Awaitable[object]) -> None:
        try:
            await what
        except (TimeoutError, SimControlError, aiohttp.ClientError, OSError) as e:
            raise ActionError(f"sim {self.spec.name}: {type(e).__name__}: {e}") from None

    async def apply(self, faults: Faults) -> None:
        await self._call(self.control.set_faults(faults))
        self.faults = faults

    async def set_outputs(self, outputs: Outputs) -> None:
        await self._call(self.control.set_outputs(**outputs.to_dict()))
        self.outputs = outputs

    async def die(self) -> None:
        await self._call(self.control.die())

    async def revive(self) -> None:
        await self._call(self.control.revive())

    async def backend_requests(self) -> int:
        try:
            return _served(await self.control.stats())
        except (TimeoutError, SimControlError, aiohttp.ClientError, OSError):
            return -1  # unreachable now: the count is unknown, not zero


class NoisyNeighbour:
    """Another process on the machine that burns one CPU core, as a busy neighbour would.

    Started and stopped by the timeline; the runner stops it when the run ends, whatever
    happened. Its CPU is the gateway's lost CPU: on a machine with few cores, the
    gateway's own latency gets a noisy share in every answer.
    """

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    async def start(self) -> None:
        if self.running:
            return
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "while True: pass"
        )

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.kill()
        await process.wait()


@dataclass(frozen=True, slots=True)
class FaultContext:
    """What the actions may act on; the runner fills in what this run has."""

    scenario: ScenarioModel
    scenario_file: Path
    sims: Mapping[str, SimHandle]
    base: Mapping[str, Faults]
    reload: Callable[[Path], Awaitable[str]] | None = None
    redis_stop: Callable[[], Awaitable[None]] | None = None
    redis_start: Callable[[], Awaitable[None]] | None = None
    neighbour: NoisyNeighbour | None = None
    # the first replica's admin API, through the client `tailguard ctl` uses
    admin: AdminClient | None = None
    # moves generated inputs: (request or None for all, mean, stddev) -> requests changed
    shift_inputs: Callable[[str | None, float | None, float | None], Sequence[str]] | None = None

    def targets(self, action: ActionModel) -> list[SimHandle]:
        return [self.sims[s.name] for s in self.scenario.sims_for(action) if s.name in self.sims]


Action = Callable[[ActionModel, FaultContext], Awaitable[str]]
ACTIONS: dict[str, Action] = {}


def _action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn

    return register


async def _each(
    ctx: FaultContext, action: ActionModel, change: Callable[[SimHandle], Faults | None]
) -> list[str]:
    """Apply a fault change to every target sim at once; returns their names."""
    targets = ctx.targets(action)

    async def one(sim: SimHandle) -> None:
        try:
            new = change(sim)
        except ValueError as e:  # e.g. fault rates that add up to more than 100 %
            raise ActionError(f"sim {sim.spec.name}: {e}") from None
        if new is not None:
            await sim.apply(new)

    await asyncio.gather(*(one(s) for s in targets))
    return [s.spec.name for s in targets]


@_action("kill")
async def _kill(action: ActionModel, ctx: FaultContext) -> str:
    targets = ctx.targets(action)
    await asyncio.gather(*(s.die() for s in targets))
    return "killed " + ", ".join(s.spec.name for s in targets)


@_action("revive")
async def _revive(action: ActionModel, ctx: FaultContext) -> str:
    targets = ctx.targets(action)
    await asyncio.gather(*(s.revive() for s in targets))
    return "revived " + ", ".join(s.spec.name for s in targets)


@_action("latency")
async def _latency(action: ActionModel, ctx: FaultContext) -> str:
    assert action.latency is not None  # the model requires it for this action
    ms = action.latency * 1000.0
    share = action.share

    def change(sim: SimHandle) -> Faults:
        if share is None:
            return sim.faults.replace(latency=Latency(kind="fixed", ms=ms))
        # a tail: `share` of calls take `ms`, the rest keep the sim's base latency
        base = max(sim.spec.latency * 1000.0, 1.0)
        tail = Latency(kind="tail", ms=base, tail_rate=share, tail_factor=max(1.0, ms / base))
        return sim.faults.replace(latency=tail)

    names = await _each(ctx, action, change)
    what = f"{ms:g}ms" if share is None else f"{ms:g}ms for {share * 100:g}% of calls"
    return f"latency {what} on " + ", ".join(names)


@_action("errors")
async def _errors(action: ActionModel, ctx: FaultContext) -> str:
    rate, status = action.rate or 0.0, action.status or 503
    names = await _each(
        ctx, action, lambda s: s.faults.replace(error_rate=rate, error_status=status)
    )
    return f"{rate * 100:g}% {status} errors on " + ", ".join(names)


@_action("hang")
async def _hang(action: ActionModel, ctx: FaultContext) -> str:
    rate = 1.0 if action.rate is None else action.rate
    names = await _each(ctx, action, lambda s: s.faults.replace(hang_rate=rate))
    return f"{rate * 100:g}% of calls hang on " + ", ".join(names)


@_action("reset")
async def _reset(action: ActionModel, ctx: FaultContext) -> str:
    rate = action.rate or 0.0
    names = await _each(ctx, action, lambda s: s.faults.replace(reset_rate=rate))
    return f"{rate * 100:g}% of calls reset on " + ", ".join(names)


@_action("heal")
async def _heal(action: ActionModel, ctx: FaultContext) -> str:
    names = await _each(ctx, action, lambda s: ctx.base.get(s.spec.name, Faults()))
    return "faults cleared on " + ", ".join(names)


@_action("outputs")
async def _outputs(action: ActionModel, ctx: FaultContext) -> str:
    targets = ctx.targets(action)

    async def one(sim: SimHandle) -> None:
        o = sim.outputs
        bias = o.bias if action.bias is None else action.bias
        rate = o.disagree_rate if action.disagree is None else action.disagree
        try:
            new = Outputs(classes=o.classes, bias=bias, disagree_rate=rate)
        except ValueError as e:
            raise ActionError(f"sim {sim.spec.name}: {e}") from None
        await sim.set_outputs(new)

    await asyncio.gather(*(one(s) for s in targets))
    what = []
    if action.bias is not None:
        what.append("bias " + ", ".join(f"{b:g}" for b in action.bias))
    if action.disagree is not None:
        what.append(f"{action.disagree * 100:g}% disagreeing")
    return f"outputs {'; '.join(what)} on " + ", ".join(s.spec.name for s in targets)


@_action("shift-inputs")
async def _shift_inputs(action: ActionModel, ctx: FaultContext) -> str:
    if ctx.shift_inputs is None:
        raise ActionError("this run's traffic has no generated inputs")
    names = ctx.shift_inputs(action.request, action.mean, action.stddev)
    if not names:
        raise ActionError("no request with generated inputs matched")
    what = []
    if action.mean is not None:
        what.append(f"mean {action.mean:g}")
    if action.stddev is not None:
        what.append(f"stddev {action.stddev:g}")
    return f"inputs now {', '.join(what)} on " + ", ".join(names)


async def _admin(ctx: FaultContext, call: Callable[[AdminClient], dict[str, object]]) -> None:
    if ctx.admin is None:
        raise ActionError("this run did not start the gateway: no admin API to ask")
    client = ctx.admin
    try:
        # the ctl client blocks: keep it off the loop that sends the traffic
        await asyncio.to_thread(call, client)
    except (AdminRefused, AdminUnreachable) as e:
        raise ActionError(f"the gateway refused: {e}") from None


@_action("capture")
async def _capture(action: ActionModel, ctx: FaultContext) -> str:
    assert action.route is not None  # the model requires it for this action
    route, backend = action.route, action.backend
    duration = None if action.for_ is None else f"{action.for_:g}s"
    await _admin(ctx, lambda c: c.quality_capture(route, backend, duration))
    over = "the current window" if duration is None else f"the next {duration}"
    return f"drift reference of {route}{f'/{backend}' if backend else ''} from {over}"


@_action("switch")
async def _switch(action: ActionModel, ctx: FaultContext) -> str:
    assert action.route is not None and action.to is not None  # required for this action
    route, to = action.route, action.to
    await _admin(ctx, lambda c: c.switch_route(route, to))
    return f"route {route}: all traffic to {to}"


@_action("switch-back")
async def _switch_back(action: ActionModel, ctx: FaultContext) -> str:
    assert action.route is not None  # the model requires it for this action
    route = action.route
    await _admin(ctx, lambda c: c.switch_route(route, None))
    return f"route {route}: back to its split"


@_action("reload")
async def _reload(action: ActionModel, ctx: FaultContext) -> str:
    if ctx.reload is None:
        raise ActionError("this run did not start the gateway, so it cannot reload it")
    assert action.policy is not None  # the model requires it for this action
    return await ctx.reload(ctx.scenario.resolve(ctx.scenario_file, action.policy))


@_action("redis-stop")
async def _redis_stop(action: ActionModel, ctx: FaultContext) -> str:
    if ctx.redis_stop is None:
        raise ActionError("this run has no Redis of its own")
    await ctx.redis_stop()
    return "redis stopped"


@_action("redis-start")
async def _redis_start(action: ActionModel, ctx: FaultContext) -> str:
    if ctx.redis_start is None:
        raise ActionError("this run has no Redis of its own")
    await ctx.redis_start()
    return "redis started"


@_action("neighbour-start")
async def _neighbour_start(action: ActionModel, ctx: FaultContext) -> str:
    if ctx.neighbour is None:
        raise ActionError("this run has no noisy neighbour to start")
    await ctx.neighbour.start()
    return "a neighbour burns one CPU core"


@_action("neighbour-stop")
async def _neighbour_stop(action: ActionModel, ctx: FaultContext) -> str:
    if ctx.neighbour is None:
        raise ActionError("this run has no noisy neighbour to stop")
    await ctx.neighbour.stop()
    return "the neighbour stopped"


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """What one timeline entry did: planned and actual time (seconds from traffic start)."""

    at: float
    done_at: float
    label: str
    ok: bool
    detail: str


async def run_timeline(
    timeline: Sequence[ActionModel],
    ctx: FaultContext,
    start: float,
    on_done: Callable[[ActionRecord], None] = lambda _r: None,
) -> list[ActionRecord]:
    """Carry out each action at its time (loop time `start` + `at`), in order.

    Actions due at the same time run one after the other, in file order.
    """
    loop = asyncio.get_running_loop()
    records: list[ActionRecord] = []
    for action in sorted(timeline, key=lambda a: a.at):
        delay = start + action.at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            detail, ok = await ACTIONS[action.do](action, ctx), True
        except ActionError as e:
            detail, ok = str(e), False
            log.warning("%s at %gs failed: %s", action.label, action.at, e)
        record = ActionRecord(action.at, loop.time() - start, action.label, ok, detail)
        records.append(record)
        on_done(record)
    return records
