"""Load-test scenario files: YAML → frozen, validated `ScenarioModel`, errors as FILE:LINE:COL.

A scenario says which simulated backends to start, which policy the gateway runs (a
template in which `${sim.<name>}` becomes that sim's URL and `${redis.url}` the private
Redis) on how many `replicas`, what traffic to send, which faults and operator actions
happen when (`timeline`), and what must hold in each phase (`phases[].slo`).
docs/loadtests.md describes the language with examples. It goes through the same loader as policies, so every
problem in the file is reported in one pass, located at the node that caused it.

Paths in a scenario (`policy`, a reload's `policy`) are relative to the scenario file;
`resolve` turns them into paths the runner can open.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from gateway.errors import PolicyError, PolicyIssue
from gateway.policy.load import ModelLoader
from gateway.policy.model import (
    AT_KEY,
    FrozenMap,
    FrozenModel,
    HeaderName,
    Name,
    Problem,
    Text,
    UrlPath,
    checks_failed,
    did_you_mean,
)
from gateway.policy.units import (
    Duration,
    DurationOrZero,
    Percent,
    PositivePercent,
    Rate,
    parse_duration,
)

__all__ = [
    "ACTION_NAMES",
    "SCENARIO_LOADER",
    "ActionModel",
    "DriftExpectModel",
    "GeneratedInputModel",
    "PhaseModel",
    "RequestModel",
    "ScenarioModel",
    "ShareBound",
    "SimModel",
    "SimOutputsModel",
    "SloModel",
    "StepModel",
    "TrafficModel",
    "UserHeaderModel",
    "load_scenario",
    "load_scenario_text",
    "render_template",
    "template_names",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HEADER_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# `${sim.east-a}`, `${redis.url}`: the only placeholders a policy template may hold.
PLACEHOLDER = re.compile(r"\$\{(sim\.[A-Za-z0-9][A-Za-z0-9_.-]*|redis\.url)\}")

# What each timeline action takes besides `at`: (aims at a sim or region, parameters it
# requires, parameters it also accepts). The runner's registry (faults.py) implements
# exactly these names.
ACTION_NAMES: Mapping[str, tuple[bool, tuple[str, ...], tuple[str, ...]]] = {
    "kill": (True, (), ()),
    "revive": (True, (), ()),
    "latency": (True, ("latency",), ("share",)),
    "errors": (True, ("rate",), ("status",)),
    "hang": (True, (), ("rate",)),
    "reset": (True, ("rate",), ()),
    "heal": (True, (), ()),
    "outputs": (True, (), ("bias", "disagree")),
    "shift-inputs": (False, (), ("mean", "stddev", "request")),
    "reload": (False, ("policy",), ()),
    "capture": (False, ("route",), ("backend", "for")),
    "switch": (False, ("route", "to"), ()),
    "switch-back": (False, ("route",), ()),
    "redis-stop": (False, (), ()),
    "redis-start": (False, (), ()),
    "neighbour-start": (False, (), ()),
    "neighbour-stop": (False, (), ()),
}
# actions that go through the admin API of a gateway the run starts (as `tailguard ctl` does)
ADMIN_ACTIONS = frozenset({"capture", "switch", "switch-back"})
# actions that need at least one of their optional parameters
_ONE_OF: Mapping[str, tuple[str, ...]] = {
    "outputs": ("bias", "disagree"),
    "shift-inputs": ("mean", "stddev"),
}
# parameter -> attribute, where the written name is a Python keyword
_PARAMS = {
    "latency": "latency", "share": "share", "rate": "rate", "status": "status",
    "policy": "policy", "route": "route", "backend": "backend", "to": "to", "for": "for_",
    "mean": "mean", "stddev": "stddev", "request": "request", "bias": "bias",
    "disagree": "disagree",
}  # fmt: skip


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, "{message}", {"message": message})


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/?#\s]+", value.rstrip("/")):
        raise _error("url", "expected http://HOST:PORT, like http://127.0.0.1:8080")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]


class ShareBound(NamedTuple):
    """A bound on a share: `>= 90%` is ShareBound('>=', 0.9); `70% ± 5%` is
    ShareBound('±', 0.7, 0.05), any share from 65 % to 75 %."""

    op: Literal[">=", "<=", "±"]
    fraction: float
    tolerance: float = 0.0

    def holds(self, measured: float) -> bool:
        # a hair of slack so that 90% measured as 0.8999999 still meets ">= 90%"
        if self.op == ">=":
            return measured >= self.fraction - 1e-9
        if self.op == "<=":
            return measured <= self.fraction + 1e-9
        return abs(measured - self.fraction) <= self.tolerance + 1e-9

    def __str__(self) -> str:
        if self.op == "±":
            return f"{_pct_text(self.fraction)} ± {_pct_text(self.tolerance)}"
        return f"{self.op} {_pct_text(self.fraction)}"


def _pct_text(fraction: float) -> str:
    return f"{round(fraction * 100, 6):g}%"


_NUMBER = r"\s*(\d+(?:\.\d+)?)\s*%\s*"
_SHARE = re.compile(rf"\s*(>=|<=){_NUMBER}")
_AROUND = re.compile(rf"{_NUMBER}(?:±|\+-|\+/-){_NUMBER}")


def _share_bound(value: Any) -> ShareBound:
    text = value if isinstance(value, str) else ""
    m, around = _SHARE.fullmatch(text), _AROUND.fullmatch(text)
    if m is None and around is None:
        raise _error(
            "share",
            "expected a bound like '>= 90%', '<= 5%' or '70% ± 5%' (quote it in YAML)",
        )
    if around is not None:
        pct, tol = float(around.group(1)), float(around.group(2))
        if pct > 100 or tol > 100:
            raise _error("share", "must be between 0% and 100%")
        return ShareBound("±", pct / 100.0, tol / 100.0)
    assert m is not None
    pct = float(m.group(2))
    if pct > 100:
        raise _error("share", "must be between 0% and 100%")
    return ShareBound(">=" if m.group(1) == ">=" else "<=", pct / 100.0)


Share = Annotated[ShareBound, BeforeValidator(_share_bound)]


# --- backends ----------------------------------------------------------------------------------


class TailModel(FrozenModel):
    """A share of calls that take `factor` times the base latency (a GC pause, a cold cache)."""

    share: PositivePercent
    factor: Annotated[float, Strict(), Field(ge=1.0, le=10_000.0)]


Bias = Annotated[tuple[Annotated[float, Field(ge=-100, le=100)], ...], Field(max_length=1000)]


class SimOutputsModel(FrozenModel):
    """A classifier's answer besides OUTPUT0: a `PROBS` tensor of `classes` probabilities.

    Each row's probabilities are the softmax of its input values plus `bias` per class (a
    bias shifts which classes win: a model that answers differently); a `disagree` share of
    answers has its winner moved to the next class (a model that disagrees that often with
    another of the same settings). See gateway/sim/outputs.py.
    """

    classes: Annotated[int, Strict(), Field(ge=2, le=1000)]
    bias: Bias = ()
    disagree: Percent = 0.0

    @model_validator(mode="after")
    def _bias_fits(self) -> SimOutputsModel:
        if len(self.bias) > self.classes:
            raise checks_failed((("bias",), f"has {len(self.bias)} entries for "
                                             f"{self.classes} classes"))  # fmt: skip
        return self


class SimModel(FrozenModel):
    """One simulated backend. With `url`, it runs elsewhere and is driven by its control API."""

    name: Name
    region: Text = "local"
    models: Annotated[tuple[Text, ...], Field(min_length=1)] = ("classifier",)
    latency: DurationOrZero = 0.0
    tail: TailModel | None = None
    outputs: SimOutputsModel | None = None
    url: HttpUrl | None = None
    control_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _control_needs_url(self) -> SimModel:
        if self.control_url is not None and self.url is None:
            raise checks_failed((("control_url",), "only a sim with a url has a control_url"))
        if self.tail is not None and self.latency == 0:
            raise checks_failed((("tail",), "needs a base latency above 0 to multiply"))
        return self


# --- traffic -----------------------------------------------------------------------------------


class StepModel(FrozenModel):
    at: DurationOrZero
    rate: Rate


class UserHeaderModel(FrozenModel):
    """A header with a random user id (`user-17`) drawn from `users` ids, for sticky routing."""

    name: HeaderName
    users: PositiveInt = 1000


Finite = Annotated[float, Field(ge=-1e6, le=1e6)]


class GeneratedInputModel(FrozenModel):
    """A KServe v2 body made afresh for each request: one tensor of normal random values.

    `mean` and `stddev` are where the values start; the `shift-inputs` action moves them
    during the run, so the gateway's drift detection sees the inputs change.
    """

    name: Text = "INPUT0"
    shape: Annotated[tuple[PositiveInt, ...], Field(min_length=1, max_length=4)] = (1, 4)
    datatype: Literal["FP32", "FP64"] = "FP32"
    mean: Finite = 0.0
    stddev: Annotated[float, Field(ge=0, le=1e6)] = 1.0

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @model_validator(mode="after")
    def _small(self) -> GeneratedInputModel:
        if self.elements > 4096:
            raise checks_failed((("shape",), "at most 4096 values per request"))
        return self


class RequestModel(FrozenModel):
    method: Annotated[str, AfterValidator(lambda v: v.upper())] = "POST"
    path: UrlPath
    body: Any = None
    inputs: GeneratedInputModel | None = None
    headers: FrozenMap[HeaderName, str] = FrozenMap()
    user_header: UserHeaderModel | None = None
    weight: Annotated[float, Strict(), Field(gt=0, le=1_000_000)] = 1.0
    name: Name | None = None

    @model_validator(mode="after")
    def _one_body(self) -> RequestModel:
        if self.body is not None and self.inputs is not None:
            raise checks_failed((("inputs",), "give either body or inputs"))
        return self

    @model_validator(mode="before")
    @classmethod
    def _freeze_body(cls, data: Any) -> Any:
        # bodies are arbitrary JSON; they are serialized once, so keep them hashable as text
        if isinstance(data, Mapping) and "body" in data and not isinstance(data["body"], str):
            import json

            try:
                return {**data, "body": json.dumps(data["body"], separators=(",", ":"))}
            except (TypeError, ValueError):
                raise checks_failed((("body",), "must be JSON data")) from None
        return data


class TrafficModel(FrozenModel):
    """Open-loop traffic: `rate` throughout, or `steps` that change it at given times."""

    duration: Duration
    rate: Rate | None = None
    steps: tuple[StepModel, ...] = ()
    requests: Annotated[tuple[RequestModel, ...], Field(min_length=1)]
    concurrency: PositiveInt = 512
    timeout: Duration = 10.0
    connections: PositiveInt = 256

    @model_validator(mode="after")
    def _one_rate(self) -> TrafficModel:
        if (self.rate is None) == (not self.steps):
            raise checks_failed(((), "give either rate or steps"))
        problems: list[Problem] = []
        if self.steps and self.steps[0].at != 0:
            problems.append((("steps", 0, "at"), "the first step starts at 0s"))
        for k in range(1, len(self.steps)):
            if self.steps[k].at <= self.steps[k - 1].at:
                problems.append((("steps", k, "at"), "steps must be in increasing time order"))
        for k, step in enumerate(self.steps):
            if step.at >= self.duration:
                problems.append((("steps", k, "at"), "starts after the traffic has ended"))
        if problems:
            raise checks_failed(*problems)
        return self

    def rate_at(self, t: float) -> float:
        """Requests per second intended at `t` seconds into the traffic."""
        if self.rate is not None:
            return self.rate
        current = self.steps[0].rate
        for step in self.steps:
            if step.at <= t:
                current = step.rate
        return current


# --- faults ------------------------------------------------------------------------------------


class ActionModel(FrozenModel):
    """One timeline entry: at `at`, do `do` to a sim (`sim`), every sim of a `region`, the
    traffic or the gateway.

    Parameters by action: latency (`latency`, and `share` for a tail: only that share of
    calls is slow), errors (`rate`, `status`), reset (`rate`), hang (`rate`, default all
    calls), outputs (`bias`, `disagree`: the sim's classifier answers differently),
    shift-inputs (`mean`, `stddev` of generated inputs; `request` names one request, else
    all), reload (`policy`: the template to render over the served file), capture (`route`,
    `backend`, `for`: a drift reference, as `tailguard ctl quality capture`), switch
    (`route`, `to`) and switch-back (`route`), as `tailguard ctl route switch`.
    `neighbour-start` starts a noisy neighbour, a process that burns one CPU core until
    `neighbour-stop` or the end of the run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              populate_by_name=True)  # fmt: skip

    at: DurationOrZero
    do: str
    sim: Name | None = None
    region: Text | None = None
    latency: Duration | None = None
    share: PositivePercent | None = None
    rate: Percent | None = None
    status: Annotated[int, Strict(), Field(ge=400, le=599)] | None = None
    policy: Text | None = None
    route: Name | None = None
    backend: Name | None = None
    to: Name | None = None
    for_: Duration | None = Field(default=None, alias="for")
    mean: Finite | None = None
    stddev: Annotated[float, Field(ge=0, le=1e6)] | None = None
    request: Name | None = None
    bias: Bias | None = None
    disagree: Percent | None = None

    @model_validator(mode="after")
    def _fits_action(self) -> ActionModel:
        spec = ACTION_NAMES.get(self.do)
        if spec is None:
            hint = did_you_mean(self.do, ACTION_NAMES) or f" (one of: {', '.join(ACTION_NAMES)})"
            raise checks_failed((("do",), f"unknown action '{self.do}'{hint}"))
        targeted, required, optional = spec
        problems: list[Problem] = []
        if targeted and (self.sim is None) == (self.region is None):
            problems.append(((), f"'{self.do}' needs exactly one of sim or region"))
        if not targeted:
            for key in ("sim", "region"):
                if getattr(self, key) is not None:
                    problems.append(((key, AT_KEY), f"'{self.do}' takes no {key}"))
        allowed = {*required, *optional}
        for key, attr in _PARAMS.items():
            if getattr(self, attr) is None and key in required:
                problems.append(((), f"'{self.do}' needs {key}"))
            elif getattr(self, attr) is not None and key not in allowed:
                problems.append(((key, AT_KEY), f"'{self.do}' takes no {key}"))
        one_of = _ONE_OF.get(self.do, ())
        if one_of and all(getattr(self, _PARAMS[k]) is None for k in one_of):
            problems.append(((), f"'{self.do}' needs {' or '.join(one_of)}"))
        if problems:
            raise checks_failed(*problems)
        return self

    @property
    def label(self) -> str:
        """Short text for the report and the log: `kill region us-east`, `switch classify`."""
        target = f" {self.sim}" if self.sim else f" region {self.region}" if self.region else ""
        if self.route is not None:
            target = f" {self.route}" + (f" to {self.to}" if self.to else "")
        elif self.request is not None:
            target = f" {self.request}"
        return f"{self.do}{target}"


# --- SLOs --------------------------------------------------------------------------------------


class DriftExpectModel(FrozenModel):
    """Whether the gateway judged a feature drifted (any statistic over its threshold) at
    any moment of the phase: `detected: true`; or judged it and never found it drifted:
    `detected: false` (a phase in which the feature was never scored fails either way)."""

    route: Name
    backend: Name
    feature: Text
    detected: Annotated[bool, Strict()]


class SloModel(FrozenModel):
    """What must hold over a phase; every field is optional, each is its own verdict."""

    success: Percent | None = None
    p50: Duration | None = None
    p95: Duration | None = None
    p99: Duration | None = None
    max_backend_requests_per_request: Annotated[float, Strict(), Field(gt=0)] | None = None
    max_dropped: Percent | None = None
    min_requests: PositiveInt | None = None
    traffic: FrozenMap[Literal["region", "backend", "sim"], FrozenMap[Text, Share]] = FrozenMap()
    # the share of a policy SLO's error budget (over its whole compliance window) that the
    # phase spent, from the gateway's own SLO counters: `{classify-availability: "<= 0.1%"}`
    error_budget: FrozenMap[Name, Share] = FrozenMap()
    # quality, from the gateway's admin API (the first replica's): drift verdicts, the share
    # of shadow answers that agreed with the primary over the phase, a canary's phase at
    # the phase's end (progressing, paused, promoted, rolled-back)
    drift: tuple[DriftExpectModel, ...] = ()
    shadow_agreement: FrozenMap[Name, Share] = FrozenMap()
    canary: FrozenMap[Name, Literal["progressing", "paused", "promoted", "rolled-back"]] = (
        FrozenMap()
    )


class PhaseModel(FrozenModel):
    name: Name
    from_: DurationOrZero = Field(alias="from")
    to: Duration
    slo: SloModel = SloModel()

    @model_validator(mode="after")
    def _order(self) -> PhaseModel:
        if self.to <= self.from_:
            raise checks_failed((("to",), "must be after from"))
        return self


# --- the scenario ------------------------------------------------------------------------------


class ScenarioModel(FrozenModel):
    name: Name
    description: str = ""
    seed: Annotated[int, Strict()] = 1
    sims: tuple[SimModel, ...] = ()
    policy: Text | None = None
    target: HttpUrl | None = None
    redis: Annotated[bool, Strict()] = False
    # gateway processes the run starts, all on the same policy; traffic goes round-robin
    replicas: Annotated[int, Strict(), Field(ge=1, le=8)] = 1
    warmup: DurationOrZero = 1.0
    traffic: TrafficModel
    timeline: tuple[ActionModel, ...] = ()
    phases: Annotated[tuple[PhaseModel, ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _cross_checks(self) -> ScenarioModel:
        problems = scenario_cross_checks(self.model_dump(by_alias=True))
        if problems:
            raise checks_failed(*problems)
        return self

    def sims_for(self, action: ActionModel) -> tuple[SimModel, ...]:
        """The sims an action applies to (empty for actions without a target)."""
        if action.sim is not None:
            return tuple(s for s in self.sims if s.name == action.sim)
        if action.region is not None:
            return tuple(s for s in self.sims if s.region == action.region)
        return ()

    def resolve(self, scenario_file: str | Path, relative: str) -> Path:
        """A path written in the scenario, relative to the scenario file's directory."""
        p = Path(relative)
        return p if p.is_absolute() else Path(scenario_file).resolve().parent / p


def _seconds(value: Any) -> float | None:
    """A duration from plain data: seconds in a model dump, text as written in the file."""
    if isinstance(value, float):
        return value
    try:
        return parse_duration(value, allow_zero=True)
    except PydanticCustomError:
        return None


def _items(value: Any) -> Iterable[tuple[int, Any]]:
    return enumerate(value) if isinstance(value, list | tuple) else ()


def scenario_cross_checks(data: Any) -> list[Problem]:
    """Checks across the file, on plain data, so they run even when other parts are invalid."""
    if not isinstance(data, Mapping):
        return []
    problems: list[Problem] = []
    sims: dict[str, Mapping[str, Any]] = {}
    for i, sim in _items(data.get("sims")):
        if isinstance(sim, Mapping) and isinstance(sim.get("name"), str):
            if sim["name"] in sims:
                problems.append((("sims", i, "name"), f"sim '{sim['name']}' is defined twice"))
            sims.setdefault(sim["name"], sim)
    regions = {s.get("region", "local") for s in sims.values()}
    target = data.get("target")
    if (data.get("policy") is None) == (target is None):
        problems.append(((), "give either policy (start a gateway) or target (use a running one)"))
    if target is not None:
        for i, sim in _items(data.get("sims")):
            if isinstance(sim, Mapping) and sim.get("url") is None:
                problems.append((("sims", i), "with target, sims run elsewhere: give each its url"))
    if target is not None and data.get("replicas", 1) != 1:
        problems.append((("replicas",), "replicas are started by the run: not with target"))
    traffic = data.get("traffic")
    duration = _seconds(traffic.get("duration")) if isinstance(traffic, Mapping) else None
    requests = traffic.get("requests") if isinstance(traffic, Mapping) else None
    generated = {
        r.get("name") for _, r in _items(requests) if isinstance(r, Mapping) and r.get("inputs")
    }
    for i, action in _items(data.get("timeline")):
        if not isinstance(action, Mapping):
            continue
        name, region, do = action.get("sim"), action.get("region"), action.get("do")
        if isinstance(name, str) and name not in sims:
            hint = did_you_mean(name, sims)
            problems.append((("timeline", i, "sim"), f"no sim named '{name}'{hint}"))
        if isinstance(region, str) and region not in regions:
            hint = did_you_mean(region, (str(r) for r in regions))
            problems.append((("timeline", i, "region"), f"no sim is in region '{region}'{hint}"))
        if (do == "reload" or do in ADMIN_ACTIONS) and target is not None:
            problems.append((("timeline", i, "do"), f"{do} needs a gateway this run starts"))
        if do == "outputs":
            for sim_name, sim in sims.items():
                aimed = sim_name == name or (region is not None and sim.get("region") == region)
                if aimed and not sim.get("outputs"):
                    problems.append((("timeline", i, "do"),
                                     f"sim '{sim_name}' has no outputs to change"))  # fmt: skip
        if do == "shift-inputs":
            wanted = action.get("request")
            if not generated:
                problems.append((("timeline", i, "do"), "no request has generated inputs"))
            elif wanted is not None and wanted not in generated:
                hint = did_you_mean(str(wanted), (str(n) for n in generated if n))
                problems.append((("timeline", i, "request"),
                                 f"no request named '{wanted}' has generated inputs{hint}"))  # fmt: skip
        if do in ("redis-stop", "redis-start") and data.get("redis") is not True:
            problems.append((("timeline", i, "do"), f"{do} needs 'redis: true'"))
        at = _seconds(action.get("at"))
        if duration is not None and at is not None and at >= duration:
            problems.append((("timeline", i, "at"), "happens after the traffic has ended"))
    names: set[str] = set()
    for i, phase in _items(data.get("phases")):
        if not isinstance(phase, Mapping):
            continue
        name = phase.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append((("phases", i, "name"), f"phase '{name}' is defined twice"))
            names.add(name)
        to = _seconds(phase.get("to"))
        if duration is not None and to is not None and to > duration:
            problems.append((("phases", i, "to"), "ends after the traffic has ended"))
        slo = phase.get("slo")
        if target is not None and isinstance(slo, Mapping):
            for key in ("drift", "shadow_agreement", "canary"):
                if slo.get(key):
                    problems.append((("phases", i, "slo", key),
                                     "read from the admin API of a gateway this run starts"))  # fmt: skip
        traffic_slo = slo.get("traffic") if isinstance(slo, Mapping) else None
        for kind, bounds in (traffic_slo or {}).items() if isinstance(traffic_slo, Mapping) else ():
            known = regions if kind == "region" else set(sims) if kind == "sim" else None
            if known is None or not isinstance(bounds, Mapping):
                continue
            for key in bounds:
                if key not in known:
                    problems.append(
                        (("phases", i, "slo", "traffic", kind, key, AT_KEY),
                         f"no sim is {'in region' if kind == 'region' else 'named'} '{key}'")
                    )  # fmt: skip
    return problems


def _checks(data: Any, model: ScenarioModel | None) -> list[Problem]:
    return scenario_cross_checks(data) if model is None else []


SCENARIO_LOADER: ModelLoader[ScenarioModel] = ModelLoader(ScenarioModel, _checks)


def load_scenario_text(text: str, filename: str = "<scenario>") -> ScenarioModel:
    """Load a scenario from text; raises `PolicyError` listing every problem."""
    return SCENARIO_LOADER.load_text(text, filename)


def load_scenario(path: str | Path) -> ScenarioModel:
    """Load a scenario file; raises `PolicyError` listing every problem (also if unreadable)."""
    return SCENARIO_LOADER.load(path)


# --- policy templates --------------------------------------------------------------------------


def template_names(text: str) -> set[str]:
    """The placeholders a template uses, like {'sim.east-a', 'redis.url'}."""
    return {m.group(1) for m in PLACEHOLDER.finditer(text)}


def render_template(text: str, values: Mapping[str, str], filename: str = "<policy>") -> str:
    """Substitute `${sim.<name>}` and `${redis.url}`; a placeholder without a value is a
    `PolicyError` at its line and column, so the operator fixes the template, not the run."""
    issues: list[PolicyIssue] = []

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in values:
            return values[key]
        line = text.count("\n", 0, m.start()) + 1
        col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        known = [k.removeprefix("sim.") for k in values if k.startswith("sim.")]
        hint = did_you_mean(key.removeprefix("sim."), known) if key.startswith("sim.") else ""
        what = "no Redis is started (set 'redis: true')" if key == "redis.url" else "no such sim"
        issues.append(PolicyIssue(filename, line, col, "", f"'${{{key}}}': {what}{hint}"))
        return m.group(0)

    out = PLACEHOLDER.sub(sub, text)
    if issues:
        raise PolicyError(issues)
    return out
