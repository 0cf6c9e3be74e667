"""Fuzzing the loader: whatever the input, it returns a model or raises `PolicyError`.

And a model it returns compiles: the model's rules are at least as strict as the
runtime objects' own checks, so a policy that validates can never fail at reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import compile_text
from gateway.errors import PolicyError
from gateway.policy.load import load_policy_text as load
from gateway.policy.load import read_yaml
from gateway.policy.model import PolicyModel

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = (ROOT / "policies" / "reference.yaml").read_text(encoding="utf-8")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> PolicyModel | None:
    """Load `text`; on failure, check the issues are well-formed. Nothing else may escape."""
    lines = text.count("\n") + 2
    try:
        policy = load(text, "f.yaml")
    except PolicyError as e:
        assert e.issues, "a PolicyError always says what is wrong"
        keys = [(i.line, i.column, i.path, i.message) for i in e.issues]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        for issue in e.issues:
            assert issue.file == "f.yaml"
            assert 1 <= issue.line <= lines, issue
            assert issue.column >= 1
            assert issue.message
        return None
    try:
        # the whole build: rule files, secrets and keys it names, relative to policies/
        compile_text(text, "f.yaml", base_dir=ROOT / "policies")
    except PolicyError as e:
        assert e.issues and all(i.message for i in e.issues)
    return policy


@FUZZ
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


YAML_CHARS = st.sampled_from(
    [*list(":-?[]{},&*!|>'\"%@`#\n\n  \t"), "version", "routes", "backends", "1", "a", "<<"]
)


@FUZZ
@given(st.lists(YAML_CHARS, max_size=80).map("".join))
def test_yaml_looking_text(text: str) -> None:
    check(text)


KEYS = ["version", "gateway", "state", "backends", "routes", "endpoints", "url", "split",
        "backend", "weight", "match", "name", "retries", "hedging", "delay", "on", "x"]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["1s", "0ms", "250ms", "p95", "20%", "150%", "4MiB", ":8080", "/",
                       "http://h:1", "redis", "kserve-v2", "5xx", "a"])
)  # fmt: skip
STRUCTURES = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(KEYS), kids, max_size=5)
    ),
    max_leaves=25,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), STRUCTURES, max_size=6))
def test_any_structure(data: dict[str, Any]) -> None:
    check(yaml.safe_dump(data, allow_unicode=True))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _reference_data() -> Any:
    doc, problems = read_yaml(REFERENCE, "reference.yaml")
    assert doc is not None and not problems
    return doc.data


REFERENCE_DATA = _reference_data()
REFERENCE_PATHS = _paths(REFERENCE_DATA)[1:]


def _mutate(data: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    import copy

    data = copy.deepcopy(data)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(REFERENCE_PATHS), STRUCTURES, st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_reference_policy(mutations: list[tuple[tuple[Any, ...], Any, bool]]) -> None:
    data = REFERENCE_DATA
    for path, value, delete in mutations:
        try:
            data = _mutate(data, path, value, delete)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    check(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
