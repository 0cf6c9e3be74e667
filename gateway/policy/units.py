"""Units written by operators, parsed once at load time.

Policies write durations (`250ms`), percentages (`20%`), sizes (`4MiB`) and listen
addresses (`127.0.0.1:8080`) the way people say them; the model holds plain numbers
(float seconds, float fractions, int bytes, `(host, port)`), so nothing after loading
ever parses a unit again.

Each unit is a pydantic `Annotated` type: a `BeforeValidator` parses the text and
raises a `PydanticCustomError` whose message is already the one an operator reads
(`expected a duration like 250ms or 2s`); a `PlainSerializer` writes the value back in
the same notation in JSON mode, so `model_dump(mode="json")` is again a valid policy
and the JSON Schema shows defaults as `30s` rather than `30.0`; `WithJsonSchema`
documents the unit as a string pattern for editors.

A bare number is refused for durations and percentages on purpose: `timeout: 5` could
mean seconds or milliseconds, `budget: 0.2` could mean 0.2 % or 20 %.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "DURATION_PATTERN",
    "HEDGE_DELAY_PATTERN",
    "HOSTPORT_PATTERN",
    "PERCENT_PATTERN",
    "RATE_PATTERN",
    "SIZE_PATTERN",
    "WINDOW_PATTERN",
    "Duration",
    "DurationOrZero",
    "HedgeDelay",
    "HedgeDelayValue",
    "HostPort",
    "Percent",
    "PercentBelowFull",
    "PositivePercent",
    "PositiveSize",
    "Rate",
    "Size",
    "Window",
    "format_duration",
    "format_hedge_delay",
    "format_hostport",
    "format_percent",
    "format_rate",
    "format_size",
    "format_window",
    "parse_duration",
    "parse_hedge_delay",
    "parse_hostport",
    "parse_percent",
    "parse_rate",
    "parse_size",
    "parse_window",
]

# --- patterns (also published in the JSON Schema) -----------------------------------------

DURATION_PATTERN = r"^\d+(\.\d+)?(us|ms|s|m|h)$"
PERCENT_PATTERN = r"^\d+(\.\d+)?%$"
SIZE_PATTERN = r"^\d+(\.\d+)?(B|KB|MB|GB|KiB|MiB|GiB)$"
HOSTPORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5}$"
HEDGE_DELAY_PATTERN = r"^(\d+(\.\d+)?(us|ms|s|m|h)|p\d{2}(\.\d+)?|adaptive)$"
RATE_PATTERN = r"^\d+(\.\d+)?/(s|m|h)$"
WINDOW_PATTERN = r"^\d+(\.\d+)?(s|m|h|d)$"

_NUMBER = r"([+-]?\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"{_NUMBER}\s*(us|ms|s|m|h)")
_DURATION_SCALE = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_WINDOW = re.compile(rf"{_NUMBER}\s*(s|m|h|d)")
_WINDOW_SCALE = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PERCENT = re.compile(rf"{_NUMBER}\s*%")
_SIZE = re.compile(rf"{_NUMBER}\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_SCALE = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}  # fmt: skip
_RATE = re.compile(rf"{_NUMBER}\s*/\s*(s|m|h)")
_RATE_SCALE = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")

DURATION_HINT = "expected a duration like 250ms or 2s"
PERCENT_HINT = "expected a percentage like 20%"
SIZE_HINT = "expected a size like 4MiB or 512KiB, or a number of bytes"
HOSTPORT_HINT = "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"
WINDOW_HINT = "expected a window like 30d, 7d or 12h"
RATE_HINT = "expected a rate like 100/s, 600/m or 1000/h"
HEDGE_DELAY_HINT = "expected adaptive, a duration like 50ms or a latency percentile like p95"

# `:8080` means every interface, as in Go and most servers.
ANY_HOST = "0.0.0.0"


def _error(kind: str, message: str) -> PydanticCustomError:
    # The template goes through str.format with the context, so the text travels in it.
    return PydanticCustomError(kind, "{message}", {"message": message})


# --- durations ------------------------------------------------------------------------------


def parse_duration(value: Any, *, allow_zero: bool = False) -> float:
    """`250ms`, `2s`, `1.5s`, `1m`, `1h`, `500us` → seconds; refuses bare numbers.

    The result must be > 0, or ≥ 0 with `allow_zero`.
    """
    m = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise _error("duration", DURATION_HINT)
    seconds = float(m.group(1)) * _DURATION_SCALE[m.group(2)]
    if not math.isfinite(seconds):
        raise _error("duration", "the duration is too large")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise _error("duration", "must be 0 or more" if allow_zero else "must be more than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds`: 0.25 → `250ms`, 90 → `90s`, 3600 → `1h`."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("h", 3600.0), ("m", 60.0)):
        v = seconds / scale
        if v >= 1 and abs(v - round(v)) < 1e-9:
            return f"{round(v)}{unit}"
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        v = seconds / scale
        if v >= 1:
            return f"{round(v, 6):.12g}{unit}"
    return f"{round(seconds / 1e-6, 6):.12g}us"


def parse_window(value: Any) -> float:
    """An SLO window, `30d`, `7d`, `12h`, `30m` → seconds (> 0); refuses bare numbers."""
    m = _WINDOW.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise _error("window", WINDOW_HINT)
    seconds = float(m.group(1)) * _WINDOW_SCALE[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise _error("window", "must be more than 0")
    return seconds


def format_window(seconds: float) -> str:
    """`2592000` → `30d`; below a whole day, as a duration."""
    days = seconds / 86400.0
    if days >= 1 and abs(days - round(days)) < 1e-9:
        return f"{round(days)}d"
    return format_duration(seconds)


# --- percentages ----------------------------------------------------------------------------


def parse_percent(value: Any, *, allow_zero: bool = True, allow_full: bool = True) -> float:
    """`5%`, `0.5%`, `100%` → fraction 0.05, 0.005, 1.0; refuses bare numbers.

    The result lies in [0, 1]; `allow_zero=False` excludes 0 %, `allow_full=False` 100 %.
    """
    m = _PERCENT.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise _error("percent", PERCENT_HINT)
    pct = float(m.group(1))
    if not allow_zero and not 0 < pct <= 100:
        raise _error("percent", "must be more than 0% and at most 100%")
    if not allow_full and not 0 <= pct < 100:
        raise _error("percent", "must be at least 0% and less than 100%")
    if not 0 <= pct <= 100:
        raise _error("percent", "must be between 0% and 100%")
    return pct / 100.0


def format_percent(fraction: float) -> str:
    return f"{round(fraction * 100, 6):.12g}%"


# --- sizes ----------------------------------------------------------------------------------


def parse_size(value: Any, *, allow_zero: bool = True) -> int:
    """`4MiB`, `512KiB`, `1GiB`, `1MB`, `100KB`, `10B`, or a plain int of bytes → bytes.

    The result must be ≥ 0, or ≥ 1 with `allow_zero=False`.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        n: float = value
    else:
        m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
        if m is None:
            raise _error("size", SIZE_HINT)
        n = float(m.group(1)) * _SIZE_SCALE[m.group(2)]
        if not math.isfinite(n):
            raise _error("size", "the size is too large")
    if n < 0 or (n < 1 and not allow_zero):
        raise _error("size", "must be 0 or more" if allow_zero else "must be at least 1 byte")
    return int(n)


def format_size(n: int) -> str | int:
    """`4194304` → `4MiB`; sizes that are no whole multiple of a unit stay plain bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return n


# --- listen addresses -----------------------------------------------------------------------


def parse_hostport(value: Any) -> tuple[str, int]:
    """`host:port`, `:port` (every interface: 0.0.0.0) or `[v6]:port` → `(host, port)`.

    IPv6 hosts are returned without brackets. Port 0 asks the OS for a free port.
    """
    if not isinstance(value, str):
        raise _error("hostport", HOSTPORT_HINT)
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise _error("hostport", HOSTPORT_HINT)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise _error("hostport", f"'{host}' is not an IPv6 address")
    elif ":" in host:
        raise _error("hostport", "write IPv6 addresses in brackets, like [::1]:8080")
    elif any(c.isspace() or c in "[]/@" for c in host):
        raise _error("hostport", HOSTPORT_HINT)
    if len(port) > 5 or int(port) > 65535:
        raise _error("hostport", "the port must be between 0 and 65535")
    return host or ANY_HOST, int(port)


def format_hostport(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- hedge delays: a duration or a latency percentile ----------------------------------------


class HedgeDelayValue(NamedTuple):
    """At most one of `seconds` (fixed delay) and `percentile` (fraction, e.g. 0.95) is set;
    neither means `adaptive` (the delay follows a hedge-rate target)."""

    seconds: float | None
    percentile: float | None

    @property
    def adaptive(self) -> bool:
        return self.seconds is None and self.percentile is None


def parse_hedge_delay(value: Any) -> HedgeDelayValue:
    """`50ms` → fixed 0.05 s (0 allowed); `p95` → percentile 0.95 (p50 .. p99.9...);
    `adaptive` → neither (the delay follows the hedge-rate target)."""
    if isinstance(value, HedgeDelayValue):
        return value
    if isinstance(value, str) and value.strip() == "adaptive":
        return HedgeDelayValue(None, None)
    if isinstance(value, str):
        m = _PERCENTILE.fullmatch(value.strip())
        if m is not None:
            p = float(m.group(1))
            if not 50 <= p < 100:
                raise _error(
                    "hedge_delay", "must be a percentile from p50 to below p100, like p95 or p99.9"
                )
            return HedgeDelayValue(None, p / 100.0)
        if _DURATION.fullmatch(value.strip()) is not None:
            return HedgeDelayValue(parse_duration(value, allow_zero=True), None)
    raise _error("hedge_delay", HEDGE_DELAY_HINT)


def format_hedge_delay(value: HedgeDelayValue) -> str:
    if value.adaptive:
        return "adaptive"
    if value.percentile is not None:
        return f"p{round(value.percentile * 100, 6):.12g}"
    return format_duration(value.seconds or 0.0)


def parse_rate(value: Any) -> float:
    """`100/s`, `600/m`, `1000/h` → events per second (> 0)."""
    if not isinstance(value, str):
        raise _error("rate", RATE_HINT)
    m = _RATE.fullmatch(value.strip())
    if m is None:
        raise _error("rate", RATE_HINT)
    rate = float(m.group(1)) / _RATE_SCALE[m.group(2)]
    if not (rate > 0 and math.isfinite(rate)):
        raise _error("rate", "must be more than 0")
    return rate


def format_rate(per_second: float) -> str:
    """Per-second rate back as text, in the largest unit that keeps it whole."""
    for unit in ("s", "m", "h"):
        n = per_second * _RATE_SCALE[unit]
        if abs(n - round(n)) < 1e-9:
            return f"{round(n)}/{unit}"
    return f"{per_second:g}/s"


# --- the Annotated types the models use ------------------------------------------------------


def _string(pattern: str, example: str, unit: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "pattern": pattern, "examples": [example], "x-tailguard-unit": unit}
    )


def _positive_duration(value: Any) -> float:
    return parse_duration(value)


def _nonnegative_duration(value: Any) -> float:
    return parse_duration(value, allow_zero=True)


def _percent(value: Any) -> float:
    return parse_percent(value)


def _positive_percent(value: Any) -> float:
    return parse_percent(value, allow_zero=False)


def _percent_below_full(value: Any) -> float:
    return parse_percent(value, allow_full=False)


def _positive_size(value: Any) -> int:
    return parse_size(value, allow_zero=False)


def _size_schema(minimum: int) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": minimum},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
            "examples": ["4MiB", "512KiB", 1048576],
            "x-tailguard-unit": "size",
        }
    )


_DURATION_OUT = PlainSerializer(format_duration, return_type=str, when_used="json")
_PERCENT_OUT = PlainSerializer(format_percent, return_type=str, when_used="json")
_SIZE_OUT = PlainSerializer(format_size, when_used="json")

Duration = Annotated[
    float,
    BeforeValidator(_positive_duration),
    _DURATION_OUT,
    _string(DURATION_PATTERN, "250ms", "duration"),
]
"""Seconds, > 0, written `500us`, `250ms`, `2s`, `1.5s`, `1m`, `1h`."""

DurationOrZero = Annotated[
    float,
    BeforeValidator(_nonnegative_duration),
    _DURATION_OUT,
    _string(DURATION_PATTERN, "0ms", "duration"),
]
"""Seconds, ≥ 0 (`0s` allowed)."""

Percent = Annotated[
    float, BeforeValidator(_percent), _PERCENT_OUT, _string(PERCENT_PATTERN, "20%", "percent")
]
"""Fraction in [0, 1], written `0%` .. `100%`."""

PositivePercent = Annotated[
    float,
    BeforeValidator(_positive_percent),
    _PERCENT_OUT,
    _string(PERCENT_PATTERN, "50%", "percent"),
]
"""Fraction in (0, 1], written `0.1%` .. `100%`."""

PercentBelowFull = Annotated[
    float,
    BeforeValidator(_percent_below_full),
    _PERCENT_OUT,
    _string(PERCENT_PATTERN, "10%", "percent"),
]
"""Fraction in [0, 1), written `0%` .. `99.9%`."""

Size = Annotated[int, BeforeValidator(parse_size), _SIZE_OUT, _size_schema(0)]
"""Bytes ≥ 0, written `4MiB`, `512KiB`, `1GiB`, `1MB`, `100KB`, `10B` or a plain integer."""

PositiveSize = Annotated[int, BeforeValidator(_positive_size), _SIZE_OUT, _size_schema(1)]
"""Bytes ≥ 1."""

HostPort = Annotated[
    tuple[str, int],
    BeforeValidator(parse_hostport),
    PlainSerializer(format_hostport, return_type=str, when_used="json"),
    _string(HOSTPORT_PATTERN, "127.0.0.1:8080", "hostport"),
]
"""`(host, port)`, written `host:port`, `:port` (all interfaces) or `[::1]:port`."""

Window = Annotated[
    float,
    BeforeValidator(parse_window),
    PlainSerializer(format_window, return_type=str, when_used="json"),
    _string(WINDOW_PATTERN, "30d", "window"),
]
"""Seconds, > 0, written `30d`, `7d`, `12h` (an SLO's compliance window)."""

HedgeDelay = Annotated[
    HedgeDelayValue,
    BeforeValidator(parse_hedge_delay),
    PlainSerializer(format_hedge_delay, return_type=str, when_used="json"),
    _string(HEDGE_DELAY_PATTERN, "p95", "duration-or-percentile"),
]
"""A fixed delay (`50ms`), a percentile of recent latency (`p95`, `p99.9`), or `adaptive`."""

Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    PlainSerializer(format_rate, return_type=str, when_used="json"),
    _string(RATE_PATTERN, "100/s", "rate"),
]
"""Events per second, > 0, written `100/s`, `600/m` or `1000/h`."""
