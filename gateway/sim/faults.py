"""What a simulated server does wrong, and the pure decision of what goes wrong for one request.

`Faults` is an immutable value: the server holds one and swaps it whole when told
to (from Python, the control API or the command line), so a request in flight
keeps the faults it started with. `Faults.draw(rng)` decides the fate of one
model call from a `random.Random` the caller owns; it never sleeps and never
touches a socket, so the fault mix is unit-tested exactly and a seeded server
replays the same sequence of fates.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LATENCY_KINDS = ("none", "fixed", "uniform", "lognormal", "tail")
_LATENCY_KEYS = ("kind", "ms", "max_ms", "sigma", "tail_rate", "tail_factor")
_FAULT_KEYS = (
    "latency",
    "error_rate",
    "error_status",
    "reset_rate",
    "hang_rate",
    "truncate_rate",
    "stream_delay_ms",
    "unready_models",
    "ready",
    "retry_after",
)


class FaultKind(enum.Enum):
    """The fate of one model call, after its latency has been served."""

    NONE = "none"  # answer normally
    ERROR = "error"  # answer `error_status` with a JSON error body
    RESET = "reset"  # abort the connection without answering (TCP RST)
    HANG = "hang"  # never answer, until the client leaves or the server stops
    TRUNCATE = "truncate"  # start the answer and close before its end


@dataclass(frozen=True, slots=True)
class FaultDraw:
    """One request's fate: sleep `delay_s`, then do `kind`."""

    kind: FaultKind
    delay_s: float


NO_FAULT = FaultDraw(FaultKind.NONE, 0.0)


def _number(where: str, value: object) -> float:
    # bool is an int to Python, but `error_rate: true` is a mistake, not 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return number


def _rate(where: str, value: object) -> float:
    rate = _number(where, value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{where} must be between 0 and 1, got {value!r}")
    return rate


def _non_negative(where: str, value: object) -> float:
    number = _number(where, value)
    if number < 0:
        raise ValueError(f"{where} must be >= 0, got {value!r}")
    return number


def _check_keys(where: str, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(
            f"unknown {where} field(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )


@dataclass(frozen=True, slots=True)
class Latency:
    """How long a model call takes before its fate (answer, error, reset…) happens.

    kinds: `none`; `fixed` (always `ms`); `uniform` (between `ms` and `max_ms`);
    `lognormal` (median `ms`, spread `sigma`); `tail` (`ms`, except a `tail_rate`
    share of requests that take `tail_factor` x `ms`: a GC pause, a cold cache). A
    `tail` with `max_ms` has a jittering fast mode, uniform between `ms` and `max_ms`.
    """

    kind: str = "none"
    ms: float = 0.0
    max_ms: float | None = None
    sigma: float = 0.5
    tail_rate: float = 0.05
    tail_factor: float = 20.0

    def __post_init__(self) -> None:
        if self.kind not in LATENCY_KINDS:
            raise ValueError(
                f"latency.kind must be one of {', '.join(LATENCY_KINDS)}, got {self.kind!r}"
            )
        _non_negative("latency.ms", self.ms)
        if self.max_ms is not None:
            _non_negative("latency.max_ms", self.max_ms)
        if self.kind == "tail" and self.max_ms is not None and self.max_ms < self.ms:
            raise ValueError(f"latency.max_ms ({self.max_ms}) must be >= latency.ms ({self.ms})")
        if self.kind == "uniform":
            if self.max_ms is None:
                raise ValueError("latency.max_ms is required for kind 'uniform'")
            if self.max_ms < self.ms:
                raise ValueError(
                    f"latency.max_ms ({self.max_ms}) must be >= latency.ms ({self.ms})"
                )
        _non_negative("latency.sigma", self.sigma)
        _rate("latency.tail_rate", self.tail_rate)
        if _number("latency.tail_factor", self.tail_factor) < 1.0:
            raise ValueError(f"latency.tail_factor must be >= 1, got {self.tail_factor!r}")

    def draw(self, rng: random.Random) -> float:
        """Seconds this request waits; draws from `rng` only for the random kinds."""
        kind = self.kind
        if kind == "none":
            return 0.0
        if kind == "fixed":
            return self.ms / 1000.0
        if kind == "uniform":
            assert self.max_ms is not None  # checked at construction
            return rng.uniform(self.ms, self.max_ms) / 1000.0
        if kind == "lognormal":
            return self.ms * rng.lognormvariate(0.0, self.sigma) / 1000.0
        # tail
        if rng.random() < self.tail_rate:
            return self.ms * self.tail_factor / 1000.0
        if self.max_ms is not None:
            return rng.uniform(self.ms, self.max_ms) / 1000.0
        return self.ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ms": self.ms,
            "max_ms": self.max_ms,
            "sigma": self.sigma,
            "tail_rate": self.tail_rate,
            "tail_factor": self.tail_factor,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Latency:
        """Build from JSON/YAML; a missing `kind` means `fixed` when `ms` is given, else `none`.

        Raises ValueError naming the field on any bad input.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"latency must be an object, got {data!r}")
        _check_keys("latency", data, _LATENCY_KEYS)
        kw: dict[str, Any] = {}
        if "kind" in data:
            if not isinstance(data["kind"], str):
                raise ValueError(f"latency.kind must be a string, got {data['kind']!r}")
            kw["kind"] = data["kind"]
        for key in ("ms", "sigma", "tail_rate", "tail_factor"):
            if key in data:
                kw[key] = _number(f"latency.{key}", data[key])
        if data.get("max_ms") is not None:
            kw["max_ms"] = _number("latency.max_ms", data["max_ms"])
        if "kind" not in kw:
            kw["kind"] = "fixed" if kw.get("ms", 0.0) > 0 else "none"
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class Faults:
    """Everything a simulated server does wrong. The default is a healthy server.

    `error_rate`, `reset_rate`, `hang_rate` and `truncate_rate` are exclusive
    shares of model calls (their sum is at most 1). `latency` applies to every
    model call before its fate. `unready_models` (and `ready: false` for all
    models) make readiness probes and calls to those models answer 400, like
    Triton. `retry_after` (whole seconds) is sent as Retry-After on injected
    errors. `stream_delay_ms` is the pause between streamed (SSE) events.
    Faults never apply to health routes (except readiness) or to `/_sim/`.
    """

    latency: Latency = Latency()
    error_rate: float = 0.0
    error_status: int = 503
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    truncate_rate: float = 0.0
    stream_delay_ms: float = 0.0
    unready_models: frozenset[str] = frozenset()
    ready: bool = True
    retry_after: int | None = None
    # Precomputed by __post_init__ so draw() does the least per request.
    _thresholds: tuple[float, float, float, float] = field(
        default=(0.0, 0.0, 0.0, 0.0), init=False, repr=False, compare=False
    )
    _quiet: bool = field(default=True, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.latency, Latency):
            raise ValueError(f"latency must be a Latency, got {self.latency!r}")
        rates = [
            _rate(name, getattr(self, name))
            for name in ("error_rate", "reset_rate", "hang_rate", "truncate_rate")
        ]
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError(
                "error_rate + reset_rate + hang_rate + truncate_rate must be <= 1 "
                f"(each is an exclusive share of requests), got {sum(rates):g}"
            )
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"error_status must be an HTTP error status 400-599, got {status!r}")
        _non_negative("stream_delay_ms", self.stream_delay_ms)
        if not isinstance(self.ready, bool):
            raise ValueError(f"ready must be true or false, got {self.ready!r}")
        retry_after = self.retry_after
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0
        ):
            raise ValueError(
                "retry_after must be a whole number of seconds >= 0 "
                f"(HTTP Retry-After is delay-seconds), got {retry_after!r}"
            )
        models: object = self.unready_models
        if isinstance(models, str) or not isinstance(models, Iterable):
            raise ValueError(f"unready_models must be a list of model names, got {models!r}")
        names = frozenset(models)
        if not all(isinstance(m, str) for m in names):
            raise ValueError(f"unready_models must be a list of model names, got {models!r}")
        object.__setattr__(self, "unready_models", names)
        cumulative: list[float] = []
        total = 0.0
        for rate in rates:
            total += rate
            cumulative.append(total)
        object.__setattr__(self, "_thresholds", tuple(cumulative))
        object.__setattr__(self, "_quiet", total == 0.0 and self.latency.kind == "none")

    def draw(self, rng: random.Random) -> FaultDraw:
        """Decide one model call's fate. Pure: same Faults and rng state, same answer.

        A healthy server (no latency, no rates) draws nothing from `rng` and
        returns the shared `NO_FAULT`. Otherwise the latency is drawn first, then
        one uniform number picks the fate by the cumulative rates.
        """
        if self._quiet:
            return NO_FAULT
        delay = self.latency.draw(rng)
        error, reset, hang, truncate = self._thresholds
        if truncate == 0.0:
            return FaultDraw(FaultKind.NONE, delay)
        u = rng.random()
        if u < error:
            kind = FaultKind.ERROR
        elif u < reset:
            kind = FaultKind.RESET
        elif u < hang:
            kind = FaultKind.HANG
        elif u < truncate:
            kind = FaultKind.TRUNCATE
        else:
            kind = FaultKind.NONE
        return FaultDraw(kind, delay)

    def is_ready(self, model: str) -> bool:
        """Whether `model` answers its readiness probe and accepts calls."""
        return self.ready and model not in self.unready_models

    # --- conversions -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `Faults.from_dict(f.to_dict()) == f`."""
        return {
            "latency": self.latency.to_dict(),
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "reset_rate": self.reset_rate,
            "hang_rate": self.hang_rate,
            "truncate_rate": self.truncate_rate,
            "stream_delay_ms": self.stream_delay_ms,
            "unready_models": sorted(self.unready_models),
            "ready": self.ready,
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Faults:
        """Build from JSON/YAML (missing fields take their defaults).

        Raises ValueError with the field and the reason, so a control API or a
        command line can hand the message straight to whoever typed it.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"faults must be an object, got {data!r}")
        _check_keys("faults", data, _FAULT_KEYS)
        kw: dict[str, Any] = {}
        if "latency" in data:
            latency = data["latency"]
            kw["latency"] = latency if isinstance(latency, Latency) else Latency.from_dict(latency)
        for key in ("error_rate", "reset_rate", "hang_rate", "truncate_rate", "stream_delay_ms"):
            if key in data:
                kw[key] = _number(key, data[key])
        if "error_status" in data:
            kw["error_status"] = data["error_status"]
        if "ready" in data:
            kw["ready"] = data["ready"]
        if "retry_after" in data:
            kw["retry_after"] = _whole(data["retry_after"])
        if "unready_models" in data:
            models = data["unready_models"]
            if models is None:
                models = ()
            if isinstance(models, str) or not isinstance(models, Iterable):
                raise ValueError(f"unready_models must be a list of model names, got {models!r}")
            kw["unready_models"] = frozenset(models)
        return cls(**kw)

    def merge(self, patch: Mapping[str, Any]) -> Faults:
        """These faults with `patch` laid over them (the control API's PATCH).

        `latency` merges field by field: `{"latency": {"ms": 50}}` keeps the
        other latency fields, and turns `none` into `fixed`.
        """
        if not isinstance(patch, Mapping):
            raise ValueError(f"faults must be an object, got {patch!r}")
        merged = self.to_dict()
        for key, value in patch.items():
            if key == "latency" and isinstance(value, Mapping):
                latency = dict(merged["latency"])
                if "kind" not in value and latency["kind"] == "none":
                    del latency["kind"]  # let from_dict infer the kind from `ms`
                latency.update(value)
                merged["latency"] = latency
            else:
                merged[key] = value
        return Faults.from_dict(merged)

    def replace(self, **changes: Any) -> Faults:
        """A copy with some fields replaced; `latency` may be a Latency or a mapping.

        Same validation as construction: raises ValueError on a bad value.
        """
        if isinstance(changes.get("latency"), Mapping):
            changes["latency"] = Latency.from_dict(changes["latency"])
        if "unready_models" in changes and not isinstance(changes["unready_models"], frozenset):
            models = changes["unready_models"]
            if isinstance(models, str) or not isinstance(models, Iterable):
                raise ValueError(f"unready_models must be a list of model names, got {models!r}")
            changes["unready_models"] = frozenset(models)
        _check_keys("faults", changes, _FAULT_KEYS)
        return dataclasses.replace(self, **changes)


def _whole(value: object) -> int | None:
    """JSON has one number type: accept 3.0 as 3 seconds, reject 0.5 with a reason."""
    if value is None:
        return None
    number = _number("retry_after", value)
    if number != int(number) or number < 0:
        raise ValueError(
            "retry_after must be a whole number of seconds >= 0 "
            f"(HTTP Retry-After is delay-seconds), got {value!r}"
        )
    return int(number)
