"""One runbook per alert the rules generator can emit, and no runbook for an alert it cannot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.quality.rules import ALERT_NAMES as QUALITY_ALERTS
from gateway.slo.rules import ALERT_NAMES as SLO_ALERTS

ALERT_NAMES = (*SLO_ALERTS, *QUALITY_ALERTS)

RUNBOOKS = Path(__file__).resolve().parents[3] / "docs" / "runbooks"


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_every_alert_has_a_runbook(alert: str) -> None:
    path = RUNBOOKS / f"{alert}.md"
    assert path.is_file(), f"no runbook for {alert}: write {path}"
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# {alert} ")
    for section in ("## Symptoms", "## What to look at", "## Mitigation", "## Verify recovery"):
        assert section in text, f"{path.name} lacks {section}"
    assert "tailguard status" in text and "tailguard ctl" in text


# Runbooks for situations rather than alerts (see tests/unit/test_runbooks.py).
SITUATIONS = {"region-loss", "redis-loss", "bad-policy-push", "canary-rollback", "overload"}


def test_every_runbook_names_a_real_alert() -> None:
    files = sorted(p for p in RUNBOOKS.glob("*.md") if p.stem not in SITUATIONS)
    assert files
    for path in files:
        assert path.stem in ALERT_NAMES, f"{path.name} is not the runbook of any generated alert"
        title = path.read_text(encoding="utf-8").splitlines()[0]
        assert re.match(rf"# {re.escape(path.stem)} \((page|ticket)\)$", title), title
