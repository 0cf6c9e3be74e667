"""The YAML examples in the README and docs/ are valid: policies compile, rules files load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.app import compile_text
from gateway.fallback.rules import load_rules_text

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for n, block in enumerate(BLOCK.findall(doc.read_text(encoding="utf-8"))):
            if block.lstrip().startswith("version: 1"):
                out.append((f"{doc.name}#{n}", block))
    return out


def test_the_docs_have_examples() -> None:
    assert len(examples()) >= 3


@pytest.mark.parametrize(("name", "text"), examples(), ids=[n for n, _ in examples()])
def test_example_is_valid(name: str, text: str) -> None:
    if "\nroutes:" in text:
        # as if it were a file in policies/ (relative paths such as ../fallbacks/ resolve)
        snapshot = compile_text(text, name, base_dir=ROOT / "policies")
        assert snapshot.routes
    else:
        assert "\nrules:" in text, f"{name}: neither a policy nor a rules file"
        ruleset = load_rules_text(text, name, base_dir=ROOT / "fallbacks")
        assert ruleset.names


def scenario_examples() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for n, block in enumerate(BLOCK.findall(doc.read_text(encoding="utf-8"))):
            if block.lstrip().startswith("name:") and "\ntraffic:" in block:
                out.append((f"{doc.name}#{n}", block))
    return out


def test_the_load_test_docs_have_scenario_examples() -> None:
    assert len([n for n, _ in scenario_examples() if n.startswith("loadtests.md")]) >= 3


@pytest.mark.parametrize(
    ("name", "text"), scenario_examples(), ids=[n for n, _ in scenario_examples()]
)
def test_scenario_example_is_valid(name: str, text: str) -> None:
    from gateway.loadtest.runner import check_policy_template
    from gateway.loadtest.scenario import load_scenario_text

    # as if it were a file in loadtests/ (its policy template resolves there)
    scenario = load_scenario_text(text, name)
    here = ROOT / "loadtests" / "example.yaml"
    assert scenario.policy is not None
    check_policy_template(scenario, scenario.resolve(here, scenario.policy))
