"""The request-path metric families expose exactly what prometheus_client's own would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.telemetry.hot import HotCounter, HotGauge, HotHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _lines(registry: CollectorRegistry) -> list[str]:
    # prometheus_client adds *_created samples; the hot families do not keep creation times
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_exposition_matches_the_library() -> None:
    lib, hot = CollectorRegistry(), CollectorRegistry()
    c1 = Counter("x_requests_total", "doc", ["route", "code"], registry=lib)
    c2 = HotCounter("x_requests_total", "doc", ["route", "code"], hot)
    h1 = Histogram("x_seconds", "doc", ["route"], buckets=BUCKETS, registry=lib)
    h2 = HotHistogram("x_seconds", "doc", ["route"], BUCKETS, hot)
    g1 = Gauge("x_in_flight", "doc", registry=lib)
    g2 = HotGauge("x_in_flight", "doc", hot)
    rnd = random.Random(7)
    for _ in range(500):
        route, code = rnd.choice("ab"), rnd.choice(["2xx", "5xx"])
        c1.labels(route, code).inc()
        c2.labels(route, code).inc()
        v = rnd.choice([*BUCKETS, rnd.random() * 20])  # bounds themselves included: le is inclusive
        h1.labels(route).observe(v)
        h2.labels(route).observe(v)
        g1.inc(2)
        g2.inc(2)
        g1.dec()
        g2.dec()
    assert _lines(hot) == _lines(lib)
    assert c2.labels("a", "2xx")._value.get() == c1.labels("a", "2xx")._value.get()


def test_label_count_is_checked() -> None:
    c = HotCounter("y_total", "doc", ["a", "b"], CollectorRegistry())
    try:
        c.labels("only-one")
    except ValueError as e:
        assert "takes labels" in str(e)
    else:
        raise AssertionError("a wrong label count must be refused")


def test_traced_observations_become_exemplars_in_openmetrics_only() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    hot = CollectorRegistry()
    h = HotHistogram("x_seconds", "doc", ["route"], BUCKETS, hot)
    cell = h.labels("a")
    cell.observe(0.005)
    cell.observe_traced(0.05, "a" * 32)
    cell.observe_traced(0.07, "b" * 32)  # the same bucket: the latest wins
    cell.observe_traced(5.0, "c" * 32)
    assert "trace_id" not in generate_latest(hot).decode()
    family = next(text_string_to_metric_families(openmetrics(hot).decode()))
    kept = {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for s in family.samples
        if s.exemplar is not None
    }
    assert kept == {"0.1": ("b" * 32, 0.07), "10.0": ("c" * 32, 5.0)}
    counts = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert counts["0.01"] == 1 and counts["0.1"] == 3 and counts["+Inf"] == 4
