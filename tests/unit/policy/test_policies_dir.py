"""Every policy shipped in `policies/` loads and compiles; the reference shows every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from gateway.app import compile_file
from gateway.policy.load import _unwrap, load_policy, read_yaml
from gateway.policy.model import FrozenMap, PolicyModel

ROOT = Path(__file__).resolve().parents[3]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


def test_the_reference_and_the_minimal_policy_are_there() -> None:
    assert {"reference.yaml", "minimal.yaml"} <= {p.name for p in POLICIES}


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_loads_and_compiles(path: Path) -> None:
    # with the rule files, secrets files and keys it names
    snapshot = compile_file(path)
    assert snapshot.routes


def _all_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key the language has, as `routes.retries.backoff.base` style names."""
    out: set[str] = set()
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        out.add(key)
        tp, _ = _unwrap(info.annotation)
        while get_origin(tp) in (tuple, dict, FrozenMap):
            tp, _ = _unwrap(get_args(tp)[-1 if get_origin(tp) is not tuple else 0])
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out |= _all_keys(tp, f"{key}.")
    return out


def _used_keys(node: Any, model: type[BaseModel] = PolicyModel, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if not isinstance(node, dict):
        return out
    for key, value in node.items():
        info = next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)
        if info is None:
            continue
        name = f"{prefix}{key}"
        out.add(name)
        tp, _ = _unwrap(info.annotation)
        values = [value]
        while get_origin(tp) in (tuple, dict, FrozenMap):
            if get_origin(tp) is tuple:
                values = [v for x in values if isinstance(x, list) for v in x]
                tp, _ = _unwrap(get_args(tp)[0])
            else:
                values = [v for x in values if isinstance(x, dict) for v in x.values()]
                tp, _ = _unwrap(get_args(tp)[1])
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            for v in values:
                out |= _used_keys(v, tp, f"{name}.")
    return out


def test_the_reference_uses_every_key() -> None:
    doc, problems = read_yaml((ROOT / "policies" / "reference.yaml").read_text(), "reference")
    assert doc is not None and not problems
    missing = _all_keys(PolicyModel) - _used_keys(doc.data)
    assert not missing, f"policies/reference.yaml does not show: {sorted(missing)}"


def test_the_reference_comments_every_key() -> None:
    text = (ROOT / "policies" / "reference.yaml").read_text()
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            assert "#" in line, f"reference.yaml:{n}: a line without a comment: {line.strip()}"


def test_the_minimal_policy_is_minimal() -> None:
    policy = load_policy(ROOT / "policies" / "minimal.yaml")
    assert len(policy.backends) == 1
    assert len(policy.routes) == 1
