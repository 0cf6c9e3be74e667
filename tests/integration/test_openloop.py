"""The native open-loop generator the benchmark relies on: every scheduled request leaves,
every answer is counted by its status, and it reports how late it sent."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from gateway.sim.faults import Faults
from tests.integration.conftest import INFER_BODY, SimFactory

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="NO C COMPILER: loadtests/openloop.c is a benchmark tool built with cc",
)


async def generate(url: str, rate: int, seconds: float, body: Path) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "loadtests" / "openloop.py"), url, "--native",
        "--rate", str(rate), "--duration", str(seconds), "--connections", "8",
        "--body", str(body),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def test_every_scheduled_request_is_sent_and_answered(
    sims: SimFactory, tmp_path: Path
) -> None:
    sim = await sims()
    body = tmp_path / "body.json"
    body.write_text(json.dumps(INFER_BODY))
    url = f"{sim.url}/v2/models/classifier/infer"
    res = await generate(url, 300, 1.0, body)
    assert res["sent"] == 300 and res["ok"] == 300 and res["errors"] == 0, res
    assert sim.stats.by_kind["infer"] == 300
    assert 0 < res["p50_ms"] <= res["p90_ms"] <= res["p99_ms"]
    assert res["late_p99_ms"] >= 0

    sim.faults = Faults(error_rate=1.0, error_status=503)
    res = await generate(url, 100, 0.5, body)
    assert res["sent"] == 50 and res["ok"] == 0 and res["errors"] == 50, res
