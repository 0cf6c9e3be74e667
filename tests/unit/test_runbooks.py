"""The situation runbooks say what to look at and what to type, and all of it exists.

Each names its symptoms, a dashboard that exists (title and uid as generated), commands
that the `tailguard` CLI accepts as written, metrics and labels the gateway exports, a
mitigation, and how to verify recovery.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.telemetry.dashboards import DASHBOARDS, catalog_series, unknown_references

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
SITUATIONS = ["region-loss", "redis-loss", "bad-policy-push", "canary-rollback", "overload"]
SECTIONS = ["## Symptoms", "## Dashboard", "## Commands", "## Mitigation", "## Verify recovery"]
BOARDS = {b()["title"]: b()["uid"] for b in DASHBOARDS.values()}


def text(name: str) -> str:
    return (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SITUATIONS)
def test_runbook_has_every_section_in_order(name: str) -> None:
    body = text(name)
    positions = [body.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), [
        s for s, p in zip(SECTIONS, positions, strict=True) if p < 0
    ]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", SITUATIONS)
def test_dashboards_named_exist(name: str) -> None:
    body = text(name)
    titles = re.findall(r"\*\*(Tailguard / [^*]+)\*\*", body)
    assert titles, "names at least one dashboard"
    for title in titles:
        assert title in BOARDS, title
    for uid in re.findall(r"`(tailguard-[a-z-]+)`", body):
        assert uid in BOARDS.values(), uid


def commands(body: str) -> list[str]:
    out = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            # the command word: at the start of a line, or after `--` (kubectl exec … --)
            m = re.search(r"(?:^\s*|--\s+)(tailguard\s.*)$", line)
            if m is None:
                continue
            command = m.group(1).split(" #")[0].split(" |")[0].split(";")[0].strip()
            out.append(command.rstrip('"'))
    return out


@pytest.mark.parametrize("name", SITUATIONS)
def test_every_tailguard_command_parses(name: str) -> None:
    found = commands(text(name))
    assert found, "gives at least one tailguard command"
    parser = build_parser()
    for command in found:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `{command}` is not a valid tailguard command")


@pytest.mark.parametrize("name", SITUATIONS)
def test_metrics_named_are_exported(name: str) -> None:
    series = catalog_series()
    spans = [s for s in re.findall(r"`([^`]+)`", text(name)) if "tailguard_" in s]
    assert spans, "points at metrics"
    for span in spans:
        assert unknown_references(span, series) == [], span


def test_a_wrong_command_would_be_caught() -> None:
    assert commands("```sh\ntailguard ctl canary classify rollback  # x\n```") == [
        "tailguard ctl canary classify rollback"
    ]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ctl", "canary", "classify", "revert"])
