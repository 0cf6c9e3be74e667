"""Units: parsed once at load time, refused with a message an operator can act on."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from gateway.policy.units import (
    Duration,
    DurationOrZero,
    HedgeDelay,
    HedgeDelayValue,
    HostPort,
    Percent,
    PercentBelowFull,
    PositivePercent,
    PositiveSize,
    Size,
    format_duration,
    format_hedge_delay,
    format_hostport,
    format_percent,
    format_size,
    parse_duration,
    parse_hedge_delay,
    parse_hostport,
    parse_percent,
    parse_size,
)


def refused(parse: Any, value: Any, **kw: Any) -> str:
    with pytest.raises(PydanticCustomError) as e:
        parse(value, **kw)
    return e.value.message()


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("500us", 0.0005),
        (" 10 s ", 10.0),
        ("0.5ms", 0.0005),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [5, 2.5, "5", "5 sec", "ms", "1d", "1e3s", "", None, True, [1]])
def test_durations_need_a_unit(value: Any) -> None:
    assert refused(parse_duration, value) == "expected a duration like 250ms or 2s"


def test_durations_must_be_positive_unless_zero_is_allowed() -> None:
    assert refused(parse_duration, "0s") == "must be more than 0"
    assert refused(parse_duration, "-1s") == "must be more than 0"
    assert parse_duration("0ms", allow_zero=True) == 0.0
    assert refused(parse_duration, "-1ms", allow_zero=True) == "must be 0 or more"
    assert refused(parse_duration, "9" * 400 + "h") == "the duration is too large"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (30.0, "30s"), (90.0, "90s"), (60.0, "1m"), (7200.0, "2h"),
     (0.0005, "500us"), (1.5, "1.5s"), (0.0, "0s"), (0.005, "5ms")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=10**9))
def test_format_duration_round_trips(micros: int) -> None:
    seconds = micros / 1e6
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9)


# --- percentages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fraction"),
    [("5%", 0.05), ("0.5%", 0.005), ("100%", 1.0), ("0%", 0.0), (" 20 %", 0.2)],
)
def test_percentages(text: str, fraction: float) -> None:
    assert parse_percent(text) == pytest.approx(fraction)


@pytest.mark.parametrize("value", [0.2, 20, "20", "20 percent", "%", None, False])
def test_percentages_need_the_sign(value: Any) -> None:
    assert refused(parse_percent, value) == "expected a percentage like 20%"


def test_percentage_ranges() -> None:
    assert refused(parse_percent, "101%") == "must be between 0% and 100%"
    assert refused(parse_percent, "-1%") == "must be between 0% and 100%"
    assert refused(parse_percent, "0%", allow_zero=False) == (
        "must be more than 0% and at most 100%"
    )
    assert refused(parse_percent, "100%", allow_full=False) == (
        "must be at least 0% and less than 100%"
    )
    assert parse_percent("99.9%", allow_full=False) == pytest.approx(0.999)
    assert format_percent(0.2) == "20%"
    assert format_percent(0.005) == "0.5%"


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "n"),
    [("4MiB", 4 << 20), ("512KiB", 512 << 10), ("1GiB", 1 << 30), ("1MB", 10**6),
     ("100KB", 10**5), ("10B", 10), (1024, 1024), ("2048", 2048), ("1.5KiB", 1536), (0, 0)],
)  # fmt: skip
def test_sizes(value: Any, n: int) -> None:
    assert parse_size(value) == n


@pytest.mark.parametrize("value", ["4 mebibytes", "4mib", "MiB", 1.5, None, True, "4TiB"])
def test_sizes_refused(value: Any) -> None:
    assert refused(parse_size, value) == (
        "expected a size like 4MiB or 512KiB, or a number of bytes"
    )


def test_size_ranges_and_format() -> None:
    assert refused(parse_size, -1) == "must be 0 or more"
    assert refused(parse_size, 0, allow_zero=False) == "must be at least 1 byte"
    assert refused(parse_size, "9" * 400 + "GiB") == "the size is too large"
    assert format_size(4 << 20) == "4MiB"
    assert format_size(1536) == 1536
    assert format_size(3 << 30) == "3GiB"


# --- listen addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":8080", ("0.0.0.0", 8080)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:0", ("localhost", 0)),
        ("gw.internal:65535", ("gw.internal", 65535)),
    ],
)
def test_hostports(text: str, pair: tuple[str, int]) -> None:
    assert parse_hostport(text) == pair


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (8080, "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
        ("8080", "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
        ("host:", "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
        ("host:http", "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
        ("a b:80", "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
        ("host:²", "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
        ("::1:8080", "write IPv6 addresses in brackets, like [::1]:8080"),
        ("[]:80", "'' is not an IPv6 address"),
        ("[host]:80", "'host' is not an IPv6 address"),
        ("host:65536", "the port must be between 0 and 65535"),
        ("host:000000080", "the port must be between 0 and 65535"),
    ],
)
def test_hostports_refused(value: Any, message: str) -> None:
    assert refused(parse_hostport, value) == message


def test_format_hostport() -> None:
    assert format_hostport(("::1", 80)) == "[::1]:80"
    assert format_hostport(("127.0.0.1", 80)) == "127.0.0.1:80"


# --- hedge delays -----------------------------------------------------------------------------


def test_hedge_delays() -> None:
    assert parse_hedge_delay("50ms") == HedgeDelayValue(0.05, None)
    assert parse_hedge_delay("0ms") == HedgeDelayValue(0.0, None)
    assert parse_hedge_delay("p95") == HedgeDelayValue(None, 0.95)
    assert parse_hedge_delay("p50") == HedgeDelayValue(None, 0.5)
    p = parse_hedge_delay("p99.9").percentile
    assert p == pytest.approx(0.999)
    hint = "expected adaptive, a duration like 50ms or a latency percentile like p95"
    for bad in ("95", 95, "p", "P95", "q95", None):
        assert refused(parse_hedge_delay, bad) == hint
    for bad in ("p49", "p100", "p5"):
        assert refused(parse_hedge_delay, bad) == (
            "must be a percentile from p50 to below p100, like p95 or p99.9"
        )
    assert format_hedge_delay(HedgeDelayValue(None, 0.999)) == "p99.9"
    assert format_hedge_delay(HedgeDelayValue(0.05, None)) == "50ms"


# --- the Annotated types in a model -----------------------------------------------------------


class Units(BaseModel):
    d: Duration = 1.0
    dz: DurationOrZero = 1.0
    p: Percent = 0.5
    pp: PositivePercent = 0.5
    pb: PercentBelowFull = 0.5
    s: Size = 0
    ps: PositiveSize = 1
    hp: HostPort = ("127.0.0.1", 1)
    hd: HedgeDelay = HedgeDelayValue(0.05, None)


def test_annotated_types_read_as_numbers_and_dump_as_written() -> None:
    u = Units.model_validate(
        {"d": "250ms", "dz": "0s", "p": "5%", "pp": "100%", "pb": "0%", "s": "4MiB",
         "ps": 1, "hp": ":80", "hd": "p99"}
    )  # fmt: skip
    assert (u.d, u.dz, u.p, u.pp, u.pb, u.s, u.ps) == (0.25, 0.0, 0.05, 1.0, 0.0, 4 << 20, 1)
    assert u.hp == ("0.0.0.0", 80)
    assert u.hd == HedgeDelayValue(None, 0.99)
    dumped = u.model_dump(mode="json")
    assert dumped == {"d": "250ms", "dz": "0s", "p": "5%", "pp": "100%", "pb": "0%",
                      "s": "4MiB", "ps": 1, "hp": "0.0.0.0:80", "hd": "p99"}  # fmt: skip
    assert Units.model_validate(dumped) == u
    assert u.model_dump()["d"] == 0.25  # python mode keeps the numbers


def test_annotated_types_report_their_messages() -> None:
    with pytest.raises(ValidationError) as e:
        Units.model_validate({"d": 5, "pp": "0%", "ps": 0, "hp": 80})
    assert [(x["loc"], x["msg"]) for x in e.value.errors()] == [
        (("d",), "expected a duration like 250ms or 2s"),
        (("pp",), "must be more than 0% and at most 100%"),
        (("ps",), "must be at least 1 byte"),
        (("hp",), "expected HOST:PORT like 127.0.0.1:8080, :8080 or [::1]:8080"),
    ]


def test_json_schema_shows_units_as_string_patterns() -> None:
    props = Units.model_json_schema()["properties"]
    assert props["d"]["type"] == "string"
    assert props["d"]["pattern"] == r"^\d+(\.\d+)?(us|ms|s|m|h)$"
    assert props["p"]["pattern"] == r"^\d+(\.\d+)?%$"
    assert {"type": "integer", "minimum": 0} in props["s"]["oneOf"]
    assert props["hp"]["type"] == "string"
    assert props["hd"]["x-tailguard-unit"] == "duration-or-percentile"
