"""The live status page in a real headless Chromium, against a real gateway and backends."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import INFER_BODY, GatewayFactory, SimFactory

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI", "").lower() != "true":
    pytest.skip(
        "no Chromium (Debian's `chromium` package); .ci/run installs it and CI requires it",
        allow_module_level=True,
    )

# what the notes found works headless on these machines, with no network beyond loopback
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--no-first-run",
]

POLICY = """
version: 1
backends:
  clf:
    protocol: kserve-v2
    endpoints: [{{url: "{a}", region: east}}, {{url: "{b}", region: west}}]
    health: {{interval: 200ms, idle_interval: 200ms, unhealthy_threshold: 1, timeout: 200ms}}
routes:
  - name: classify
    match: {{model: classifier}}
    split: [{{backend: clf, weight: 100}}]
"""


async def test_the_page_shows_a_region_dying_and_coming_back(
    sims: SimFactory, gateway: GatewayFactory, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert CHROMIUM is not None, "CI=true requires Chromium (.ci/run installs it)"
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(POLICY.format(a=a.url, b=b.url))
    assert gw.listening is not None
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(f"{gw.listening.admin_url}/ui")
            for sim in (a, b):
                await page.wait_for_selector(
                    f'tr[data-endpoint="{sim.url}"][data-state="up"]', timeout=10_000
                )
            # traffic shows as a rate on the route's row
            async with aiohttp.ClientSession() as http:
                for _ in range(20):
                    async with http.post(
                        f"{gw.listening.url}/v2/models/classifier/infer", json=INFER_BODY
                    ) as r:
                        assert r.status == 200
            await page.wait_for_function(
                """() => {
                    const cell = document.querySelector('tr[data-route="classify"] td:nth-child(4)');
                    return cell && Number(cell.textContent) > 0;
                }""",
                timeout=10_000,
            )
            await b.die()
            await page.wait_for_selector(
                f'tr[data-endpoint="{b.url}"][data-state="down"]', timeout=5_000
            )
            assert await page.get_attribute(f'tr[data-endpoint="{a.url}"]', "data-state") == "up"
            region = await page.text_content(f'tr[data-endpoint="{b.url}"] td:nth-child(3)')
            assert region == "west"
            # the region's death is in the recent changes, naming the endpoint and its region
            went = f'#changes li[data-kind="health"][data-endpoint="{b.url}"]'
            await page.wait_for_selector(f'{went}[data-state="unhealthy"]', timeout=5_000)
            text = await page.text_content(f'{went}[data-state="unhealthy"]')
            assert text is not None and "west" in text and "unhealthy" in text
            await page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
            # and so is its return
            await b.revive()
            await page.wait_for_selector(
                f'tr[data-endpoint="{b.url}"][data-state="up"]', timeout=10_000
            )
            await page.wait_for_selector(f'{went}[data-state="healthy"]', timeout=5_000)
            # newest first: the return is listed above the death
            states = await page.eval_on_selector_all(
                went, "items => items.map((li) => li.dataset.state)"
            )
            assert states[:2] == ["healthy", "unhealthy"]
            await page.screenshot(path=str(tmp_path / "status-page-back.png"), full_page=True)
        finally:
            await browser.close()
    assert (tmp_path / "status-page.png").stat().st_size > 1000
    assert problems == []


async def test_the_page_shell_is_served_and_its_data_needs_admin_credentials(
    sims: SimFactory, gateway: GatewayFactory
) -> None:
    a = await sims(models=["classifier"], name="a")
    b = await sims(models=["classifier"], name="b")
    gw = await gateway(POLICY.format(a=a.url, b=b.url))
    assert gw.listening is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.listening.admin_url}/ui") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "/ui/app.js" in await r.text()
        async with http.get(f"{gw.listening.admin_url}/ui/app.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
        async with http.get(f"{gw.listening.admin_url}/ui/../server.py") as r:
            assert r.status == 404
        # from loopback with no tokens configured, the admin API answers the page
        async with http.get(f"{gw.listening.admin_url}/admin/status") as r:
            status = await r.json()
            assert "recent_changes" in status
