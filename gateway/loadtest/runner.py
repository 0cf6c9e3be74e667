"""Runs one scenario: sims, Redis and the gateway up; traffic and the timeline; verdicts out.

The order of a run: start a private Redis (`redis: true`), start each sim in this
process on a free port (sims with a `url` run elsewhere), render the policy template
into `<out>/policy.yaml`, start the gateway as a subprocess (so its CPU is apart from the
generator's; `replicas` of them, traffic spread round-robin) and wait for their
readiness, let health checks settle for `warmup`, then send the traffic while the
timeline acts, sim counters are read at every phase boundary, and, when the policy has
quality, shadow or canary sections, the first replica's admin API is read every second
(`gateway.loadtest.quality`). With a `target`, the gateway is one that already runs: nothing is started
but the sims the scenario owns.

Measuring and judging are pure (`measure`, `judge`, `per_second`): records in, numbers
and verdicts out. `run_scenario` writes `results.json` (and the report) to the output
directory and returns the `RunResult`; the CLI turns it into an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from gateway.ctl import AdminClient, AdminClientConfig
from gateway.errors import PolicyError, PolicyIssue
from gateway.loadtest.faults import (
    ActionError,
    ActionRecord,
    FaultContext,
    LocalSim,
    NoisyNeighbour,
    RemoteSim,
    SimHandle,
    base_faults,
    base_outputs,
    run_timeline,
)
from gateway.loadtest.quality import (
    QualitySample,
    judge_quality,
    quality_lines,
    quality_series,
    quality_summary,
    wants_quality,
)
from gateway.loadtest.scenario import (
    PhaseModel,
    ScenarioModel,
    render_template,
)
from gateway.loadtest.traffic import OpenLoop, RequestRecord
from gateway.policy.load import load_policy_text
from gateway.policy.units import format_duration, format_percent
from gateway.sim import SimControl, SimServer

__all__ = [
    "GatewayProcess",
    "Measure",
    "PrivateRedis",
    "RunError",
    "RunResult",
    "Verdict",
    "check_policy_template",
    "judge",
    "measure",
    "per_second",
    "percentile",
    "run_scenario",
]

GATEWAY_START_TIMEOUT = 20.0
READY_TIMEOUT = 15.0
RELOAD_TIMEOUT = 5.0
STOP_TIMEOUT = 15.0
_ROOT = Path(__file__).resolve().parents[2]  # where `python -m gateway` finds this package
_LISTENING = re.compile(r"listening on (\S+) \(admin (\S+)\)")


class RunError(Exception):
    """The run could not happen (the gateway did not start, Redis is missing, ...)."""


# --- measuring and judging (pure) ---------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


@dataclass(frozen=True, slots=True)
class Measure:
    """What the client saw over one time window (requests by their intended send time)."""

    requests: int  # sent (dropped ones excluded)
    ok: int
    dropped: int
    p50: float
    p95: float
    p99: float
    backend_requests: int | None  # model calls all sims served in the window; None: unknown
    shares: Mapping[str, Mapping[str, float]]  # kind (region, backend, sim) -> name -> share
    outcomes: Mapping[str, int]

    @property
    def success(self) -> float:
        return self.ok / self.requests if self.requests else math.nan

    @property
    def dropped_ratio(self) -> float:
        total = self.requests + self.dropped
        return self.dropped / total if total else 0.0

    @property
    def backend_per_request(self) -> float | None:
        if self.backend_requests is None or not self.requests:
            return None
        return self.backend_requests / self.requests

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "dropped": self.dropped,
            "success": _finite(self.success),
            "dropped_ratio": self.dropped_ratio,
            "p50_ms": _ms(self.p50),
            "p95_ms": _ms(self.p95),
            "p99_ms": _ms(self.p99),
            "backend_requests": self.backend_requests,
            "backend_requests_per_request": self.backend_per_request,
            "shares": {k: dict(v) for k, v in self.shares.items()},
            "outcomes": dict(self.outcomes),
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _ms(seconds: float) -> float | None:
    return round(seconds * 1000.0, 3) if math.isfinite(seconds) else None


def _shares(records: Iterable[RequestRecord]) -> dict[str, dict[str, float]]:
    counts: dict[str, Counter[str]] = {"region": Counter(), "backend": Counter(), "sim": Counter()}
    for r in records:
        if r.region is not None:
            counts["region"][r.region] += 1
        if r.backend is not None:
            counts["backend"][r.backend] += 1
        if r.sim is not None:
            counts["sim"][r.sim] += 1
    out: dict[str, dict[str, float]] = {}
    for kind, c in counts.items():
        total = sum(c.values())
        out[kind] = {k: v / total for k, v in sorted(c.items())} if total else {}
    return out


def measure(
    records: Iterable[RequestRecord], start: float, end: float, backend_requests: int | None
) -> Measure:
    """Measure the requests due in [start, end)."""
    window = [r for r in records if start <= r.intended < end]
    sent = [r for r in window if r.sent]
    latencies = sorted(r.latency for r in sent)
    return Measure(
        requests=len(sent),
        ok=sum(1 for r in sent if r.ok),
        dropped=len(window) - len(sent),
        p50=percentile(latencies, 0.50),
        p95=percentile(latencies, 0.95),
        p99=percentile(latencies, 0.99),
        backend_requests=backend_requests,
        shares=_shares(sent),
        outcomes=dict(Counter(r.outcome.value for r in window)),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """One SLO assertion of one phase: what was wanted, what was measured, whether it held."""

    phase: str
    slo: str
    wanted: str
    measured: str
    passed: bool

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"  {mark}  {self.slo:<36} {self.measured:>12}   (wanted {self.wanted})"

    def to_json(self) -> dict[str, Any]:
        return {
            "slo": self.slo,
            "wanted": self.wanted,
            "measured": self.measured,
            "passed": self.passed,
        }


def _dur(seconds: float) -> str:
    return "n/a" if not math.isfinite(seconds) else f"{seconds * 1000:.1f}ms"


def _pct(fraction: float) -> str:
    return "n/a" if not math.isfinite(fraction) else f"{fraction * 100:.2f}%"


def judge(phase: PhaseModel, m: Measure) -> list[Verdict]:
    """The verdict of each SLO the phase states; a value that cannot be measured fails."""
    slo = phase.slo
    out: list[Verdict] = []

    def add(name: str, wanted: str, measured: str, passed: bool) -> None:
        out.append(Verdict(phase.name, name, wanted, measured, passed))

    if slo.min_requests is not None:
        add("requests", f">= {slo.min_requests}", str(m.requests), m.requests >= slo.min_requests)
    if slo.success is not None:
        s = m.success
        add("success", f">= {format_percent(slo.success)}", _pct(s), s >= slo.success - 1e-12)
    for name, limit, value in (("p50", slo.p50, m.p50), ("p95", slo.p95, m.p95),
                               ("p99", slo.p99, m.p99)):  # fmt: skip
        if limit is not None:
            add(f"{name} latency", f"<= {format_duration(limit)}", _dur(value), value <= limit)
    if slo.max_backend_requests_per_request is not None:
        limit_r = slo.max_backend_requests_per_request
        ratio = m.backend_per_request
        add(
            "backend requests per request",
            f"<= {limit_r:g}",
            "unknown" if ratio is None else f"{ratio:.3f}",
            ratio is not None and ratio <= limit_r,
        )
    if slo.max_dropped is not None:
        d = m.dropped_ratio
        add("dropped by the generator", f"<= {format_percent(slo.max_dropped)}", _pct(d),
            d <= slo.max_dropped + 1e-12)  # fmt: skip
    for kind, bounds in slo.traffic.items():
        shares = m.shares.get(kind, {})
        for name, bound in bounds.items():
            share = shares.get(name, 0.0)
            add(f"{kind} {name} share", str(bound), _pct(share), bound.holds(share))
    return out


def per_second(records: Sequence[RequestRecord], duration: float) -> dict[str, Any]:
    """Series with one point per second of traffic, for results.json and the report."""
    n = max(1, math.ceil(duration - 1e-9))
    buckets: list[list[RequestRecord]] = [[] for _ in range(n)]
    for r in records:
        k = int(r.intended)
        if 0 <= k < n:
            buckets[k].append(r)
    out: dict[str, Any] = {
        "t": list(range(n)), "sent": [], "ok": [], "dropped": [], "success": [],
        "p50_ms": [], "p95_ms": [], "p99_ms": [],
    }  # fmt: skip
    by_kind: dict[str, dict[str, list[int]]] = {"region": {}, "backend": {}, "sim": {}}
    for k, bucket in enumerate(buckets):
        sent = [r for r in bucket if r.sent]
        lat = sorted(r.latency for r in sent)
        ok = sum(1 for r in sent if r.ok)
        out["sent"].append(len(sent))
        out["ok"].append(ok)
        out["dropped"].append(len(bucket) - len(sent))
        out["success"].append(ok / len(sent) if sent else None)
        for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            out[key].append(_ms(percentile(lat, q)))
        for kind in by_kind:
            for r in sent:
                name = getattr(r, kind)
                if name is not None:
                    series = by_kind[kind].setdefault(name, [0] * n)
                    series[k] += 1
    out.update({kind: dict(sorted(v.items())) for kind, v in by_kind.items()})
    return out


# --- what the run starts -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRedis:
    """A throwaway `redis-server` on a free port without persistence; stop and start keep the port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RunError("the scenario says 'redis: true' but redis-server is not on PATH")
        self.binary = binary
        self.port = _free_port()
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while not await self._ping():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RunError(f"redis-server did not start on port {self.port}")
            await asyncio.sleep(0.05)

    async def _ping(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.read(16), 1.0)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()  # a crash, as the scenario means it: no goodbye to the clients
            await proc.wait()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GatewayProcess:
    """`tailguard run` in a subprocess on free ports; `reload` rewrites its policy and SIGHUPs."""

    def __init__(self, policy_file: Path, log_file: Path) -> None:
        # replicas of one run share the policy file: a reload rewrites it for all of them
        self.policy_file = policy_file
        self.log_file = log_file
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.admin_url = ""
        self._log: TextIO | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def cpu_seconds(self) -> float | None:
        return None if self.proc is None else _cpu_seconds(self.proc.pid)

    async def start(self) -> None:
        root = str(_ROOT)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
        self._log = self.log_file.open("w", encoding="utf-8")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--policy", str(self.policy_file),
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--no-watch",
            "--log-level", "warning",
            stdout=asyncio.subprocess.PIPE, stderr=self._log, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._listening(self.proc.stdout), GATEWAY_START_TIMEOUT)
        except TimeoutError:
            line = None
        if line is None:
            await self.stop()
            tail = self.log_file.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RunError(f"the gateway did not start (log {self.log_file}):\n{tail}")
        self.url, self.admin_url = line
        self._drain = asyncio.ensure_future(self._copy(self.proc.stdout))

    async def _listening(self, stdout: asyncio.StreamReader) -> tuple[str, str] | None:
        while raw := await stdout.readline():
            m = _LISTENING.search(raw.decode(errors="replace"))
            if m is not None:
                return m.group(1), m.group(2)
        return None

    async def _copy(self, stdout: asyncio.StreamReader) -> None:
        while raw := await stdout.readline():
            if self._log is not None:
                self._log.write(raw.decode(errors="replace"))

    async def policy_id(self, session: aiohttp.ClientSession) -> str | None:
        """The policy the gateway serves (from its readiness answer), or None if it is not up."""
        try:
            async with session.get(self.admin_url + "/readyz") as r:
                data = await r.json(content_type=None)
                return str(data.get("policy")) if r.status == 200 else None
        except (aiohttp.ClientError, OSError, ValueError):
            return None

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while await self.policy_id(session) is None:
            if time.monotonic() > deadline:
                raise RunError(f"the gateway at {self.admin_url} did not become ready")
            await asyncio.sleep(0.1)

    async def reload(self, text: str, session: aiohttp.ClientSession) -> str:
        """Serve `text` from now on: write it over the policy file, SIGHUP, await the swap."""
        if self.proc is None or self.proc.returncode is not None:
            raise ActionError("the gateway is not running")
        before = await self.policy_id(session)
        tmp = self.policy_file.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.policy_file)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = await self.policy_id(session)
            if now is not None and now != before:
                return f"reloaded: policy {before} -> {now}"
        raise ActionError(f"the gateway kept policy {before} (see {self.log_file})")

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        if self._log is not None:
            self._log.close()
            self._log = None


# --- templates ---------------------------------------------------------------------------------


def check_policy_template(scenario: ScenarioModel, path: Path) -> str:
    """Render the template with stand-in URLs and compile-check it; returns the template text.

    Raises `PolicyError` (FILE:LINE:COL) for an unreadable file, an unknown placeholder or
    a policy that would not load, before anything is started.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(
            [PolicyIssue(str(path), 1, 1, "", f"cannot read: {e.strerror}")]
        ) from None
    values = {f"sim.{s.name}": s.url or f"http://127.0.0.1:{10000 + i}"
              for i, s in enumerate(scenario.sims)}  # fmt: skip
    if scenario.redis:
        values["redis.url"] = "redis://127.0.0.1:6379/0"
    load_policy_text(render_template(text, values, str(path)), str(path))
    return text


# --- progress ----------------------------------------------------------------------------------


class Progress:
    """One self-rewriting line on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = enabled and out.isatty()
        self._last_plain = -math.inf

    def update(self, t: float, duration: float, loop: OpenLoop, note: str) -> None:
        if not self.enabled:
            return
        done = [r for r in loop.records[-2000:] if r.sent]
        ok = sum(1 for r in done if r.ok) / len(done) * 100 if done else 100.0
        frac = min(1.0, max(0.0, t / duration))
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        text = (f"[{bar}] {t:5.1f}/{duration:g}s sent {loop.sent} ok {ok:5.1f}% "
                f"in-flight {loop.in_flight} dropped {loop.dropped} {note}")  # fmt: skip
        if self.tty:
            self.out.write("\r\x1b[2K" + text[: shutil.get_terminal_size().columns - 1])
            self.out.flush()
        elif t - self._last_plain >= 5.0:
            self._last_plain = t
            print(text, file=self.out, flush=True)

    def event(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.out.write("\r\x1b[2K")
        print(text, file=self.out, flush=True)

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
            self.out.flush()


# --- the run -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """A finished run: the verdicts, and where results.json and the report went."""

    results: dict[str, Any]
    verdicts: list[Verdict]
    out_dir: Path
    report: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


async def _start_sims(
    scenario: ScenarioModel,
    session: aiohttp.ClientSession,
    servers: list[SimServer],
    *,
    local: bool,
) -> dict[str, SimHandle]:
    handles: dict[str, SimHandle] = {}
    for i, spec in enumerate(scenario.sims):
        if spec.url is not None:
            control = SimControl(spec.control_url or spec.url, session)
            handles[spec.name] = RemoteSim(spec, control)
        elif local:
            server = SimServer(
                models=spec.models, region=spec.region, name=spec.name,
                control_port=0, seed=scenario.seed * 1000 + i, faults=base_faults(spec),
                outputs=base_outputs(spec.outputs),
            )  # fmt: skip
            await server.start()
            servers.append(server)
            handles[spec.name] = LocalSim(spec, server)
    return handles


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ActionError(f"cannot read {path}: {e.strerror}") from None


def _make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _url_of(sim: SimHandle) -> str:
    if isinstance(sim, LocalSim):
        return sim.server.url
    assert sim.spec.url is not None  # a sim this run does not serve has a url
    return sim.spec.url


def _cpu_total(replicas: Sequence[GatewayProcess]) -> float | None:
    """CPU seconds of every replica so far; None when one cannot be read (or none runs)."""
    seconds = [g.cpu_seconds() for g in replicas]
    if not seconds or any(x is None for x in seconds):
        return None
    return sum(x for x in seconds if x is not None)


async def _count_backend(sims: Mapping[str, SimHandle]) -> int | None:
    counts = await asyncio.gather(*(s.backend_requests() for s in sims.values()))
    return None if any(c < 0 for c in counts) else sum(counts)


# --- SLOs: the gateway's own counters --------------------------------------------------------

SloCounts = dict[str, tuple[float, float]]  # SLO name -> (good, bad) so far


@dataclass(frozen=True, slots=True)
class SloBudgetSpec:
    """What a phase's `error_budget` verdict needs of a policy SLO."""

    error_budget: float  # 1 - objective
    window: float  # the compliance window, seconds


def slo_specs(policy_text: str, source: str) -> dict[str, SloBudgetSpec]:
    """The SLOs of a rendered policy, by name."""
    model = load_policy_text(policy_text, source)
    out = {}
    for name, slo in model.slos.items():
        target = slo.availability or slo.latency
        assert target is not None  # the model requires one of them
        out[name] = SloBudgetSpec(1.0 - target.objective, slo.window)
    return out


def policy_wants_quality(policy_text: str, source: str) -> bool:
    """Whether the rendered policy has anything for the quality sampler to read."""
    return wants_quality(load_policy_text(policy_text, source).routes)


async def quality_sample(session: aiohttp.ClientSession, admin_url: str) -> QualitySample | None:
    """The first replica's `/admin/quality` and `/admin/status`, or None if it did not answer."""
    answers: list[Any] = []
    for path in ("/admin/quality", "/admin/status"):
        try:
            async with session.get(admin_url + path) as r:
                answers.append(await r.json(content_type=None) if r.status == 200 else None)
        except (aiohttp.ClientError, OSError, ValueError):
            answers.append(None)
    quality, status = answers
    if not isinstance(quality, dict):
        return None
    return QualitySample.from_answers(quality, status if isinstance(status, dict) else None)


_SLO_SAMPLE = re.compile(
    r'^tailguard_slo_events_total\{(?=[^}]*slo="([^"]*)")(?=[^}]*result="([^"]*)")[^}]*\}\s+(\S+)',
    re.MULTILINE,
)


async def slo_counts(
    session: aiohttp.ClientSession, admin_urls: str | Sequence[str]
) -> SloCounts | None:
    """`tailguard_slo_events_total` summed by SLO and result, from the gateways' /metrics
    (every replica's, summed; None when one of them did not answer).

    Only those lines are read (a regular expression, not a full parse): this runs in the
    load generator's event loop every second, where a slow parse would delay requests.
    """
    texts = []
    for admin_url in [admin_urls] if isinstance(admin_urls, str) else admin_urls:
        try:
            async with session.get(admin_url + "/metrics") as r:
                if r.status != 200:
                    return None
                texts.append(await r.text())
        except (aiohttp.ClientError, OSError):
            return None
    out: dict[str, list[float]] = {}
    for slo, result, value in _SLO_SAMPLE.findall("\n".join(texts)):
        pair = out.setdefault(slo, [0.0, 0.0])
        try:
            pair[0 if result == "good" else 1] += float(value)
        except ValueError:
            continue
    return {k: (v[0], v[1]) for k, v in out.items()}


def budget_spent(
    spec: SloBudgetSpec,
    before: SloCounts | None,
    after: SloCounts | None,
    name: str,
    seconds: float,
) -> float | None:
    """Share of the SLO's compliance-window budget the phase spent; None when unknown.

    The window's budget is `error_budget` x the requests the window would see at the phase's
    rate, so the share is the phase's mean burn rate x its length / the window.
    """  # fmt: skip
    if before is None or after is None or name not in after:
        return None
    g0, b0 = before.get(name, (0.0, 0.0))
    g1, b1 = after[name]
    bad, total = b1 - b0, (g1 - g0) + (b1 - b0)
    if total <= 0:
        return None
    return (bad / total) / spec.error_budget * seconds / spec.window


def burn_series(
    spec: SloBudgetSpec, samples: Mapping[float, SloCounts | None], name: str, seconds: int
) -> list[float | None]:
    """The burn rate of each second of traffic (error ratio / budget), None without events."""
    out: list[float | None] = []
    for k in range(seconds):
        a, b = samples.get(float(k)), samples.get(float(k + 1))
        if a is None or b is None or name not in b:
            out.append(None)
            continue
        g0, b0 = a.get(name, (0.0, 0.0))
        g1, b1 = b[name]
        total = (g1 - g0) + (b1 - b0)
        out.append(None if total <= 0 else (b1 - b0) / total / spec.error_budget)
    return out


async def run_scenario(
    scenario: ScenarioModel,
    scenario_file: str | Path,
    out_dir: str | Path,
    *,
    target: str | None = None,
    progress: TextIO | None = sys.stderr,
    report: bool = True,
) -> RunResult:
    """Run the scenario and write `results.json` (and `report.png`) into `out_dir`.

    `target` overrides the scenario's: use that running gateway and start only the sims
    the scenario runs elsewhere. Raises `PolicyError` for a bad policy template and
    `RunError` when the run cannot happen.
    """
    scenario_file = Path(scenario_file)
    out = _make_dir(Path(out_dir))
    target = (target or scenario.target or "").rstrip("/") or None
    template = None
    slos: dict[str, SloBudgetSpec] = {}
    if target is None:
        assert scenario.policy is not None  # the model requires policy without a target
        template_path = scenario.resolve(scenario_file, scenario.policy)
        template = check_policy_template(scenario, template_path)
        for action in scenario.timeline:
            if action.do == "reload" and action.policy is not None:
                check_policy_template(scenario, scenario.resolve(scenario_file, action.policy))
    show = Progress(progress or sys.stderr, progress is not None)
    servers: list[SimServer] = []
    redis: PrivateRedis | None = None
    gateway: GatewayProcess | None = None
    replicas: list[GatewayProcess] = []
    sample_quality = False
    neighbour = NoisyNeighbour()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=scenario.traffic.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            if scenario.redis and target is None:
                redis = PrivateRedis(out / "redis")
                await redis.start()
            sims = await _start_sims(scenario, session, servers, local=target is None)
            values = {f"sim.{name}": _url_of(s) for name, s in sims.items()}
            if redis is not None:
                values["redis.url"] = redis.url
            if template is not None:
                policy_file = out / "policy.yaml"
                rendered = render_template(template, values, str(policy_file))
                policy_file.write_text(rendered)
                slos = slo_specs(rendered, str(policy_file))
                sample_quality = policy_wants_quality(rendered, str(policy_file))
                for k in range(scenario.replicas):
                    log_name = "gateway.log" if k == 0 else f"gateway-{k + 1}.log"
                    replicas.append(GatewayProcess(policy_file, out / log_name))
                # started side by side; one that fails is stopped with the rest below
                started = await asyncio.gather(*(g.start() for g in replicas),
                                               return_exceptions=True)  # fmt: skip
                for failure in started:
                    if isinstance(failure, BaseException):
                        raise failure
                gateway = replicas[0]
                await asyncio.gather(*(g.wait_ready(session, READY_TIMEOUT) for g in replicas))
                base_urls = [g.url for g in replicas]
            else:
                assert target is not None
                base_urls = [target]
            base_url = base_urls[0]
            show.event(f"{scenario.name}: gateway {', '.join(base_urls)}, {len(sims)} sims; "
                       f"warming up for {format_duration(scenario.warmup)}")  # fmt: skip
            await asyncio.sleep(scenario.warmup)

            async def reload(path: Path) -> str:
                if not replicas:
                    raise ActionError("this run did not start the gateway")
                text = render_template(_read(path), values, str(path))
                done = [await g.reload(text, session) for g in replicas]
                return done[0] if len(done) == 1 else "; ".join(done)

            ctx = FaultContext(
                scenario=scenario,
                scenario_file=scenario_file,
                sims=sims,
                base={name: base_faults(s.spec) for name, s in sims.items()},
                reload=reload if gateway is not None else None,
                redis_stop=redis.stop if redis is not None else None,
                redis_start=redis.start if redis is not None else None,
                neighbour=neighbour,
                admin=(
                    AdminClient(AdminClientConfig(gateway.admin_url, timeout=RELOAD_TIMEOUT))
                    if gateway is not None else None
                ),
            )  # fmt: skip
            endpoint_sims = {
                values[f"sim.{name}"].rstrip("/"): (name, s.spec.region) for name, s in sims.items()
            }
            traffic = OpenLoop(
                scenario.traffic, base_urls, random.Random(scenario.seed),
                sim_of=lambda url: endpoint_sims.get(url.rstrip("/")),
            )  # fmt: skip
            ctx = dataclasses.replace(ctx, shift_inputs=traffic.mix.shift_inputs)
            bounds = sorted({p.from_ for p in scenario.phases} | {p.to for p in scenario.phases}
                            | {0.0, scenario.traffic.duration})  # fmt: skip
            counts: dict[float, int | None] = {}
            slo_samples: dict[float, SloCounts | None] = {}
            quality_samples: dict[float, QualitySample | None] = {}
            cpu_start = _cpu_total(replicas)
            start = loop.time() + 0.05
            admins = [g.admin_url for g in replicas] if slos else []
            # the SLO counters every second (for the burn plot) and at every phase bound
            every_second = sorted(
                set(bounds) | {float(k) for k in range(math.ceil(scenario.traffic.duration) + 1)}
            )
            slo_times = every_second if admins else []
            quality_times = every_second if sample_quality and gateway is not None else []

            async def sample() -> None:
                for b in bounds:
                    delay = start + b - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    counts[b] = await _count_backend(sims) if sims else None

            async def sample_slos() -> None:
                for b in slo_times:
                    delay = start + b - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    slo_samples[b] = await slo_counts(session, admins)

            async def sample_quality_state() -> None:
                for b in quality_times:
                    delay = start + b - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    assert gateway is not None
                    quality_samples[b] = await quality_sample(session, gateway.admin_url)

            def on_action(record: ActionRecord) -> None:
                status = "" if record.ok else " FAILED"
                show.event(f"  {record.done_at:6.2f}s  {record.label}{status}: {record.detail}")

            async def tick() -> None:
                while True:
                    show.update(loop.time() - start, scenario.traffic.duration, traffic, "")
                    await asyncio.sleep(0.25 if show.tty else 1.0)

            ticker = asyncio.ensure_future(tick())
            try:
                _, actions, _, _, _ = await asyncio.gather(
                    traffic.run(session, start),
                    run_timeline(scenario.timeline, ctx, start, on_action),
                    sample(),
                    sample_slos(),
                    sample_quality_state(),
                )
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                show.done()
            cpu_end = _cpu_total(replicas)
        finally:
            await neighbour.stop()
            await asyncio.gather(*(g.stop() for g in replicas))
            for server in servers:
                await server.stop()
            if redis is not None:
                await redis.stop()

    records = traffic.records
    verdicts: list[Verdict] = []
    phases = []
    for phase in scenario.phases:
        a, b = counts.get(phase.from_), counts.get(phase.to)
        backend = None if a is None or b is None else b - a
        m = measure(records, phase.from_, phase.to, backend)
        v = judge(phase, m)
        spent: dict[str, float | None] = {}
        for name, bound in phase.slo.error_budget.items():
            spec = slos.get(name)
            value = (
                None if spec is None else budget_spent(
                    spec, slo_samples.get(phase.from_), slo_samples.get(phase.to), name,
                    phase.to - phase.from_,
                )
            )  # fmt: skip
            spent[name] = value
            measured = (
                ("no such SLO in the policy" if spec is None else "unknown")
                if value is None else f"{value * 100:.4g}%"
            )  # fmt: skip
            v.append(Verdict(phase.name, f"{name} budget spent", str(bound), measured,
                             value is not None and bound.holds(value)))  # fmt: skip
        v.extend(Verdict(phase.name, *q) for q in judge_quality(phase, quality_samples))
        verdicts.extend(v)
        phases.append({
            "name": phase.name, "from": phase.from_, "to": phase.to,
            "passed": all(x.passed for x in v),
            "measured": m.to_json(), "verdicts": [x.to_json() for x in v],
            "error_budget_spent": spent,
        })  # fmt: skip
    first, last = counts.get(0.0), counts.get(scenario.traffic.duration)
    total = measure(records, 0.0, math.inf, None if first is None or last is None else last - first)
    cpu = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
    results: dict[str, Any] = {
        "scenario": _summary(scenario, scenario_file, target),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "passed": all(v.passed for v in verdicts),
        "gateway": {
            "url": base_url,
            "replicas": base_urls,
            "started_by_run": gateway is not None,
            "cpu_seconds": cpu,
            "cpu_us_per_request": cpu / total.requests * 1e6 if cpu and total.requests else None,
        },
        "totals": total.to_json(),
        "phases": phases,
        "timeline": [
            {
                "at": r.at,
                "done_at": round(r.done_at, 4),
                "label": r.label,
                "ok": r.ok,
                "detail": r.detail,
            }
            for r in actions
        ],
        "series": per_second(records, scenario.traffic.duration),
    }
    if slo_samples:
        seconds = max(1, math.ceil(scenario.traffic.duration - 1e-9))
        results["series"]["slo"] = {
            name: {"burn": burn_series(spec, slo_samples, name, seconds),
                   "error_budget": spec.error_budget, "window_s": spec.window}
            for name, spec in slos.items()
        }  # fmt: skip
    if quality_samples:
        results["series"]["quality"] = quality_series(quality_samples, scenario.traffic.duration)
        results["quality"] = quality_summary(quality_samples, scenario.traffic.duration)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    result = RunResult(results, verdicts, out)
    if report:
        from gateway.loadtest.report import write_report

        result.report, note = write_report(results, out / "report.png")
        if note:
            result.notes.append(note)
    return result


def _summary(scenario: ScenarioModel, scenario_file: Path, target: str | None) -> dict[str, Any]:
    t = scenario.traffic
    text = scenario.model_dump_json(by_alias=True)
    return {
        "name": scenario.name,
        "description": scenario.description.strip(),
        "file": str(scenario_file),
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:12],
        "seed": scenario.seed,
        "policy": scenario.policy if target is None else None,
        "target": target,
        "duration": t.duration,
        "replicas": scenario.replicas,
        "rate": t.rate,
        "steps": [{"at": s.at, "rate": s.rate} for s in t.steps],
        "concurrency": t.concurrency,
        "requests": [r.name or f"{r.method} {r.path}" for r in t.requests],
        "sims": [
            {
                "name": s.name,
                "region": s.region,
                "latency_ms": s.latency * 1000,
                "external": s.url is not None,
            }
            for s in scenario.sims
        ],
    }


def format_verdicts(result: RunResult, scenario: ScenarioModel) -> list[str]:
    """The verdict block the CLI prints: one line per assertion, grouped by phase."""
    lines: list[str] = []
    by_phase: dict[str, list[Verdict]] = defaultdict(list)
    for v in result.verdicts:
        by_phase[v.phase].append(v)
    for phase, data in zip(scenario.phases, result.results["phases"], strict=True):
        m = data["measured"]
        lines.append(
            f"phase {phase.name} ({format_duration(phase.from_) if phase.from_ else '0s'}"
            f"-{format_duration(phase.to)}): {m['requests']} requests"
        )
        lines.extend(v.line() for v in by_phase.get(phase.name, []))
        if not by_phase.get(phase.name):
            lines.append("  (no SLO stated)")
    if "quality" in result.results:
        shifts = [
            (a["done_at"], f"{a['label']}: {a['detail']}") for a in result.results["timeline"]
        ]
        lines.extend(quality_lines(result.results["quality"], shifts))
    cpu = result.results["gateway"]["cpu_us_per_request"]
    if cpu is not None:
        lines.append(f"gateway CPU: {cpu:.0f} us per request")
    failed = sum(1 for v in result.verdicts if not v.passed)
    verdict = "PASS" if result.passed else f"FAIL ({failed} of {len(result.verdicts)} SLOs missed)"
    lines.append(f"{scenario.name}: {verdict}")
    return lines
