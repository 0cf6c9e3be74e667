"""JSON Schema of the policy language, for editors (`tailguard schema`).

Units are documented as they are written: durations, percentages, sizes and addresses are
strings with a `pattern` (sizes may also be integers), each marked with an
`x-tailguard-unit` keyword that editors ignore. Defaults are shown in the same notation
(`30s`, `20%`, `4MiB`, `127.0.0.1:8080`), never as the parsed numbers.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.model import PolicyModel
from gateway.policy.units import (
    HedgeDelayValue,
    format_duration,
    format_hedge_delay,
    format_hostport,
    format_percent,
    format_size,
)

SCHEMA_ID = "https://tailguard.dev/schema/policy-v1.json"


def _format_default(unit: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if unit == "duration" and isinstance(value, int | float):
        return format_duration(float(value))
    if unit == "percent" and isinstance(value, int | float):
        return format_percent(float(value))
    if unit == "size" and isinstance(value, int):
        return format_size(value)
    if unit == "hostport" and isinstance(value, list | tuple) and len(value) == 2:
        return format_hostport((str(value[0]), int(value[1])))
    if unit == "duration-or-percentile" and isinstance(value, list | tuple) and len(value) == 2:
        return format_hedge_delay(HedgeDelayValue(*value))
    return value


def _unit_defaults(node: Any) -> None:
    """Rewrite parsed defaults (10.0, [host, port]) into the notation the unit is written in."""
    if isinstance(node, dict):
        unit = node.get("x-tailguard-unit")
        if isinstance(unit, str) and "default" in node:
            node["default"] = _format_default(unit, node["default"])
        for value in node.values():
            _unit_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _unit_defaults(value)


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy file, keys as written in YAML."""
    schema = PolicyModel.model_json_schema(mode="validation", by_alias=True)
    _unit_defaults(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "Tailguard policy (version 1)",
        "description": (
            "Routes, backends and resilience settings of a Tailguard gateway. "
            "Durations: 500us, 250ms, 2s, 1m, 1h. Percentages: 20%. Sizes: 4MiB or bytes."
        ),
    }
