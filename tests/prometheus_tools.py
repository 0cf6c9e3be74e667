"""Debian's `prometheus` package for tests: `promtool` and a real `prometheus` server.

Where a binary is missing the tests skip with a loud reason, except under CI (`CI=true`),
where it is a failure: `.ci/run` installs the package, and the suite must never pass there
by skipping what it was meant to prove.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.redis_server import free_port


def require(binary: str) -> str:
    """The path of `binary`; skips (or fails under CI) when it is not installed."""
    path = shutil.which(binary)
    if path is not None:
        return path
    reason = f"no `{binary}` on PATH (Debian: apt-get install prometheus)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{binary} is required in CI: {reason}")
    pytest.skip(f"NO {binary.upper()}, Prometheus rule tests not run: {reason}")


class Prometheus:
    """A real Prometheus scraping one target every `scrape` seconds; `stop()` it after.

    `rules` is a rule file to evaluate; `flags` are extra command-line arguments (feature
    flags such as `--enable-feature=exemplar-storage`).
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        target: str,
        *,
        rules: Path | None = None,
        scrape: float = 0.5,
        flags: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            textwrap.dedent(
                f"""\
                global: {{scrape_interval: {round(scrape * 1000)}ms, evaluation_interval: {round(scrape * 1000)}ms}}
                rule_files: [{f'"{rules}"' if rules is not None else ""}]
                scrape_configs:
                  - job_name: tailguard
                    static_configs: [{{targets: ["{target}"]}}]
                """
            )
        )
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                *flags,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with http.get(self.url + path, params=params) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["data"]

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(200):
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/-/ready") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise AssertionError("prometheus did not become ready")

    async def alert_state(self, http: aiohttp.ClientSession, name: str) -> str | None:
        data = await self.get(http, "/api/v1/alerts")
        states = [a["state"] for a in data["alerts"] if a["labels"].get("alertname") == name]
        return "firing" if "firing" in states else (states[0] if states else None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
