"""`tailguard loadtest SCENARIO`: run a scenario, print a verdict per SLO, exit 0/1/2.

Exit codes: 0 every SLO held; 1 at least one SLO was missed; 2 the scenario (or its
policy template) is invalid, with FILE:LINE:COL errors, or the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["add_parser", "configure", "main"]

T = TypeVar("T")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `loadtest` command to the `tailguard` parser."""
    p = subparsers.add_parser(
        "loadtest",
        help="run a load-test scenario (sims, gateway, traffic, faults) and judge its SLOs",
        description="Run a load-test scenario from loadtests/ and judge its SLOs.",
    )
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario YAML file, like loadtests/region-failover.yaml")
    p.add_argument(
        "--out",
        help="directory for results.json, report.png and the gateway log "
        "(default: loadtest-results/<scenario name>)",
    )
    p.add_argument(
        "--target",
        help="URL of an already running gateway (no gateway or local sims are started)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the PNG report")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    """Run the `loadtest` command parsed by `add_parser`; returns the exit code."""
    from gateway.errors import PolicyError
    from gateway.loadtest.runner import RunError, format_verdicts, run_scenario
    from gateway.loadtest.scenario import load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except PolicyError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("loadtest-results") / scenario.name
    run = run_scenario(
        scenario,
        args.scenario,
        out,
        target=args.target,
        progress=None if args.quiet else sys.stderr,
        report=not args.no_report,
    )
    try:
        result = _run_loop(run)
    except PolicyError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        return 2
    except RunError as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    for line in format_verdicts(result, scenario):
        print(line)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"results: {result.out_dir / 'results.json'}")
    if result.report is not None:
        print(f"report:  {result.report}")
    return 0 if result.passed else 1


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result
