"""docs/observability.md names every metric family of the catalog, and only those."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.telemetry.dashboards import catalog_series

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_every_catalog_family_is_documented_and_every_documented_one_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    series = catalog_series()
    families = {_family(n) for n in series if n.startswith("tailguard_")}
    table = text.split("## The metric catalog", 1)[1]
    in_table = set(re.findall(r"^\| `(tailguard_[a-z0-9_]+)`", table, re.M))
    assert families - in_table == set(), "catalog families missing from the doc's table"
    assert in_table - families == set(), "the doc's table names families the catalog lacks"
    # and the prose names nothing the gateway does not export
    named = {_family(n) for n in re.findall(r"\btailguard_[a-z0-9_]+", text)}
    assert named - families == set()


def test_each_documented_family_has_the_catalogs_labels() -> None:
    table = DOC.read_text(encoding="utf-8").split("## The metric catalog", 1)[1]
    series = catalog_series()
    for name, labels in re.findall(
        r"^\| `(tailguard_[a-z0-9_]+)` \| \w+ \| ([^|]*) \|", table, re.M
    ):
        documented = set(re.findall(r"`(\w+)`", labels))
        exported = set(series.get(name, ())) or set(series.get(name + "_bucket", ())) - {"le"}
        assert documented == exported, name
