"""Debian's `prometheus` package for tests: `promtool` and a real `prometheus` server.

Where a binary is missing the tests skip with a loud reason, except under CI (`CI=true`),
where it is a failure: `.ci/run` installs the package, and the suite must never pass there
by skipping what it was meant to prove.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(binary: str) -> str:
    """The path of `binary`; skips (or fails under CI) when it is not installed."""
    path = shutil.which(binary)
    if path is not None:
        return path
    reason = f"no `{binary}` on PATH (Debian: apt-get install prometheus)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{binary} is required in CI: {reason}")
    pytest.skip(f"NO {binary.upper()}, Prometheus rule tests not run: {reason}")
