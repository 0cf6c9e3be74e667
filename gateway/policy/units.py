"""Units written by operators, parsed once at load time: durations, percentages, sizes, addresses."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)\s*$")
_DURATION_SCALE = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_SCALE = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}  # fmt: skip


def parse_duration(value: Any) -> float:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_SCALE[m.group(2)]
    raise ValueError("expected a duration like 250ms or 2s")


def parse_percent(value: Any) -> float:
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if m:
            v = float(m.group(1))
            if v > 100:
                raise ValueError("must be at most 100%")
            return v / 100.0
    raise ValueError("expected a percentage like 20%")


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_SCALE[m.group(2)]
    raise ValueError("expected a size like 4MiB, 512KiB or a number of bytes")


def parse_hostport(value: Any) -> tuple[str, int]:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and port.isdigit() and int(port) <= 65535:
            return host.strip("[]") or "127.0.0.1", int(port)
    raise ValueError("expected HOST:PORT, like 127.0.0.1:8080")


def _schema(pattern: str, example: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, "examples": [example]})


Duration = Annotated[
    float, BeforeValidator(parse_duration), _schema(r"^\d+(\.\d+)?(us|ms|s|m|h)$", "250ms")
]
Percent = Annotated[float, BeforeValidator(parse_percent), _schema(r"^\d+(\.\d+)?%$", "20%")]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer"},
                {"type": "string", "pattern": r"^\d+(B|KB|MB|GB|KiB|MiB|GiB)$"},
            ]
        }
    ),
]
HostPort = Annotated[
    tuple[str, int], BeforeValidator(parse_hostport), _schema(r"^.*:\d+$", ":8080")
]
