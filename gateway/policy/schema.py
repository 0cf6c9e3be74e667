"""JSON Schema of the policy language, for editors (`tailguard schema`)."""

from __future__ import annotations

from typing import Any

from gateway.policy.model import PolicyModel


def policy_json_schema() -> dict[str, Any]:
    schema = PolicyModel.model_json_schema(mode="validation")
    schema["title"] = "Tailguard policy"
    return schema
