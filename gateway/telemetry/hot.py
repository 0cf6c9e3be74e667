"""Metric families for the request path: plain numbers updated in place, rendered at scrape time.

`prometheus_client` guards every update with a lock and looks children up by label tuple;
on a single event loop neither is needed, and together they cost a few microseconds per
request (measured with py-spy on the bare-proxy benchmark). These families keep the same
names, types and exposition as the library's (they are collectors in the same registry),
but an update is one attribute add. Use them only for metrics updated on every request;
everything else stays a regular `prometheus_client` metric.

Not thread-safe by design: every update happens on the event loop's thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gateway.telemetry.config import EXEMPLAR_LABEL


class CounterCell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def get(self) -> float:
        return self.value

    @property
    def _value(self) -> CounterCell:
        # the same read path as prometheus_client children (`child._value.get()`)
        return self


class HistogramCell:
    __slots__ = ("_bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        # per bucket, the latest traced observation: (trace id, value); made on the first one
        self.exemplars: list[tuple[str, float] | None] | None = None

    def observe(self, value: float) -> None:
        # `le` buckets are inclusive: a value equal to a bound belongs to that bucket
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def observe_traced(self, value: float, trace_id: str) -> None:
        """`observe`, keeping `trace_id` as the bucket's exemplar (the latest one wins).

        The caller passes only sampled traces: an exemplar must name a trace the tracing
        backend has, or the link from the slow bucket leads nowhere.
        """
        i = bisect_left(self._bounds, value)
        self.counts[i] += 1
        self.sum += value
        exemplars = self.exemplars
        if exemplars is None:
            exemplars = self.exemplars = [None] * len(self.counts)
        exemplars[i] = (trace_id, value)

    @property
    def count(self) -> int:
        return sum(self.counts)


class HotCounter:
    """A labelled counter family; `labels(...)` returns a cell with `inc()`."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._cells: dict[tuple[str, ...], CounterCell] = {}
        registry.register(self)

    def labels(self, *values: str) -> CounterCell:
        cell = self._cells.get(values)
        if cell is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            cell = self._cells[values] = CounterCell()
        return cell

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, cell in list(self._cells.items()):
            family.add_metric(list(values), cell.value)
        yield family


class HotHistogram:
    """A labelled histogram family; `labels(...)` returns a cell with `observe()`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets)
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError("histogram buckets must be strictly increasing")
        self._cells: dict[tuple[str, ...], HistogramCell] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramCell:
        cell = self._cells.get(values)
        if cell is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            cell = self._cells[values] = HistogramCell(self.buckets)
        return cell

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, cell in list(self._cells.items()):
            running = 0
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            for bound, n in zip(self.buckets, cell.counts, strict=False):
                running += n
                buckets.append((_le(bound), running))
            running += cell.counts[-1]
            buckets.append(("+Inf", running))
            exemplars = cell.exemplars
            if exemplars is not None:
                # only the OpenMetrics exposition shows them; the classic text one drops them
                for i, kept in enumerate(exemplars):
                    if kept is not None:
                        le, count = buckets[i][0], buckets[i][1]
                        buckets[i] = (le, count, Exemplar({EXEMPLAR_LABEL: kept[0]}, kept[1]))
            family.add_metric(list(values), buckets, cell.sum)
        yield family


class HotGauge:
    """An unlabelled gauge with `inc()`/`dec()`/`set()`."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


def _le(bound: float) -> str:
    return repr(bound) if bound != int(bound) else f"{bound:.1f}"


__all__ = ["CounterCell", "HistogramCell", "HotCounter", "HotGauge", "HotHistogram"]
