"""Policy loading: every mistake reported at its line and column, in one pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import PolicyError
from gateway.policy.load import load_policy, load_policy_text

ROOT = Path(__file__).resolve().parents[3]

BAD = """\
version: 1
backends:
  a:
    endpoints: [{url: http://127.0.0.1:1}]
    circuit_breker: {}
routes:
  - name: r
    match: {path_prefix: /}
    split: [{backend: a, weight: 150}]
    timeout: 5
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_policy_text(text, "p.yaml")
    return [str(i) for i in e.value.issues]


def test_every_mistake_in_one_pass_with_line_and_column() -> None:
    assert issues(BAD) == [
        "p.yaml:5:5: backends.a.circuit_breker: unknown key 'circuit_breker' "
        "(did you mean 'circuit_breaker'?)",
        "p.yaml:9:34: routes[0].split[0].weight: must be at most 100",
        "p.yaml:10:14: routes[0].timeout: expected a duration like 250ms or 2s",
    ]


def test_cross_references_are_checked() -> None:
    text = BAD.replace("    circuit_breker: {}\n", "").replace("weight: 150", "weight: 50")
    text = text.replace("timeout: 5", "timeout: 5s").replace(
        "split: [{backend: a, weight: 50}]",
        "split: [{backend: a, weight: 50}, {backend: b, weight: 1}]",
    )
    assert issues(text) == [
        "p.yaml:8:49: routes[0].split[1].backend: backend 'b' is not defined in backends"
    ]


def test_duplicate_keys_and_syntax_errors() -> None:
    assert "p.yaml:2:1: version: duplicate key 'version'" in issues("version: 1\nversion: 1\n")
    assert issues("version: [1\n")[0].startswith("p.yaml:2:1: YAML syntax")


def test_yaml_on_key_stays_a_string() -> None:
    text = BAD.replace("    circuit_breker: {}\n", "").replace("weight: 150", "weight: 50")
    text = text.replace("timeout: 5", "timeout: 5s\n    retries: {on: [5xx, bogus]}")
    assert issues(text) == [
        "p.yaml:10:19: routes[0].retries.on: unknown condition 'bogus' "
        "(one of: connect-failure, reset, timeout, 5xx, 429)"
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_are_valid(path: Path) -> None:
    load_policy(path)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_raises_only_policy_error(text: str) -> None:
    try:
        load_policy_text(text)
    except PolicyError:
        pass


yamlish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(
            st.sampled_from(["version", "backends", "routes", "gateway", "split", "match", "x"]),
            kids,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(yamlish)
def test_any_structure_raises_only_policy_error(data: object) -> None:
    import yaml

    try:
        load_policy_text(yaml.safe_dump(data))
    except PolicyError:
        pass
