"""Sliding windows over recent calls: counters for breakers, latency samples for hedging.

All of them are pure: the caller passes `now` (monotonic seconds) with every call
and the window expires old data lazily from it. Nothing here reads a clock.

Time-based windows are rings of equal buckets. A call lands in the bucket of its
`now`; a bucket is dropped whole once the ring moves past it, so a call counts for
between `window - window/buckets` and `window` seconds. This is the same
granularity trade-off resilience4j makes (it uses one-second buckets). A `now`
earlier than the newest bucket already seen (two coroutines that read the clock
in one order and report in the other) is counted in the newest bucket: windows
never move backwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol

_NEVER = -(1 << 62)  # epoch of a ring that has seen nothing yet
_MASK64 = (1 << 64) - 1


class WindowTotals(NamedTuple):
    """Counts over a window: `calls` recorded, of which `failures` failed and `slow` were slow."""

    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """failures / calls, 0.0 for an empty window."""
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_rate(self) -> float:
        """slow / calls, 0.0 for an empty window."""
        return self.slow / self.calls if self.calls else 0.0


class CallWindow(Protocol):
    """What a breaker needs from a window; both counters below satisfy it."""

    def record(self, now: float, failed: bool, slow: bool) -> None: ...

    def totals(self, now: float) -> WindowTotals: ...

    def reset(self) -> None: ...


class TimeWindowCounter:
    """Calls, failures and slow calls over the last `window` seconds, in `buckets` slices.

    `record` and `totals` are amortised O(1): running totals are kept, and a bucket's
    counts are subtracted once, when the ring moves past it.
    """

    __slots__ = (
        "_calls",
        "_fails",
        "_head",
        "_n",
        "_slow",
        "_tc",
        "_tf",
        "_ts",
        "_width",
        "window",
    )

    def __init__(self, window: float, buckets: int = 10) -> None:
        if not window > 0 or math.isinf(window):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets!r}")
        self.window = float(window)
        self._n = buckets
        self._width = self.window / buckets
        self._calls = [0] * buckets
        self._fails = [0] * buckets
        self._slow = [0] * buckets
        self._head = _NEVER
        self._tc = self._tf = self._ts = 0

    def _advance(self, now: float) -> int:
        """Move the ring to `now`, dropping expired buckets; return the slot to record into."""
        epoch = int(now // self._width)
        head = self._head
        n = self._n
        if epoch > head:
            if epoch - head >= n:
                for i in range(n):
                    self._calls[i] = self._fails[i] = self._slow[i] = 0
                self._tc = self._tf = self._ts = 0
            else:
                calls, fails, slow = self._calls, self._fails, self._slow
                for k in range(head + 1, epoch + 1):
                    i = k % n
                    self._tc -= calls[i]
                    self._tf -= fails[i]
                    self._ts -= slow[i]
                    calls[i] = fails[i] = slow[i] = 0
            self._head = head = epoch
        return head % n

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Count one finished call at `now`."""
        i = self._advance(now)
        self._calls[i] += 1
        self._tc += 1
        if failed:
            self._fails[i] += 1
            self._tf += 1
        if slow:
            self._slow[i] += 1
            self._ts += 1

    def totals(self, now: float) -> WindowTotals:
        """Counts of the calls still inside the window at `now`."""
        self._advance(now)
        return WindowTotals(self._tc, self._tf, self._ts)

    def reset(self) -> None:
        """Forget everything (a breaker does this on every state change)."""
        for i in range(self._n):
            self._calls[i] = self._fails[i] = self._slow[i] = 0
        self._tc = self._tf = self._ts = 0
        self._head = _NEVER


_FAILED = 1
_SLOW = 2


class CountWindowCounter:
    """Calls, failures and slow calls over the last `size` calls, whatever their age.

    `now` is accepted for interface parity with `TimeWindowCounter` and ignored.
    """

    __slots__ = ("_filled", "_pos", "_ring", "_tf", "_ts", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1 call, got {size!r}")
        self.size = size
        self._ring = bytearray(size)
        self._pos = 0
        self._filled = 0
        self._tf = self._ts = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Count one finished call, pushing the oldest out once `size` calls are held."""
        pos = self._pos
        if self._filled == self.size:
            old = self._ring[pos]
            if old & _FAILED:
                self._tf -= 1
            if old & _SLOW:
                self._ts -= 1
        else:
            self._filled += 1
        flags = 0
        if failed:
            flags |= _FAILED
            self._tf += 1
        if slow:
            flags |= _SLOW
            self._ts += 1
        self._ring[pos] = flags
        pos += 1
        self._pos = 0 if pos == self.size else pos

    def totals(self, now: float) -> WindowTotals:
        """Counts over the calls held (at most `size`)."""
        return WindowTotals(self._filled, self._tf, self._ts)

    def reset(self) -> None:
        """Forget everything."""
        self._ring = bytearray(self.size)
        self._pos = self._filled = 0
        self._tf = self._ts = 0


class LatencyWindow:
    """Recent latencies, for adaptive hedge delays (p95 of recent attempts) and the admin view.

    A ring of `buckets` time slices over `window` seconds. Each slice keeps at most
    `max_samples_per_bucket` samples by reservoir sampling (a deterministic internal
    generator, so tests are exact and no global random is touched), plus the true
    number of calls it saw; percentiles weight each slice's samples by that number,
    so a busy slice is not under-represented. `record` is O(1); `percentile` sorts at
    most `buckets * max_samples_per_bucket` samples, so callers should cache its
    result for a few milliseconds rather than call it per request.
    """

    __slots__ = ("_counts", "_head", "_max", "_n", "_rng", "_samples", "_width", "window")

    def __init__(
        self, window: float = 30.0, buckets: int = 6, max_samples_per_bucket: int = 512
    ) -> None:
        if not window > 0 or math.isinf(window):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets!r}")
        if max_samples_per_bucket < 1:
            raise ValueError(
                f"max_samples_per_bucket must be at least 1, got {max_samples_per_bucket!r}"
            )
        self.window = float(window)
        self._n = buckets
        self._width = self.window / buckets
        self._max = max_samples_per_bucket
        self._samples: list[list[float]] = [[] for _ in range(buckets)]
        self._counts = [0] * buckets
        self._head = _NEVER
        self._rng = 0x2545F4914F6CDD1D

    def _advance(self, now: float) -> int:
        epoch = int(now // self._width)
        head = self._head
        if epoch > head:
            n = self._n
            for k in range(head + 1, epoch + 1) if epoch - head < n else range(n):
                i = k % n
                self._samples[i] = []
                self._counts[i] = 0
            self._head = head = epoch
        return head % self._n

    def record(self, now: float, seconds: float) -> None:
        """Add one latency sample (seconds; negative values count as 0)."""
        i = self._advance(now)
        count = self._counts[i] + 1
        self._counts[i] = count
        value = seconds if seconds > 0.0 else 0.0
        bucket = self._samples[i]
        if count <= self._max:
            bucket.append(value)
            return
        # reservoir sampling (algorithm R): keep each of the `count` samples with equal odds
        self._rng = x = (self._rng * 6364136223846793005 + 1442695040888963407) & _MASK64
        j = (x >> 17) % count
        if j < self._max:
            bucket[j] = value

    def count(self, now: float) -> int:
        """Calls recorded inside the window (all of them, not only the retained samples)."""
        self._advance(now)
        return sum(self._counts)

    def percentile(self, q: float, now: float, min_samples: int = 20) -> float | None:
        """The `q` quantile (a fraction: 0.95 is p95) of recent latencies, nearest-rank.

        None when fewer than `min_samples` calls are in the window: the caller falls
        back to its fixed setting rather than trust a handful of samples.
        """
        result = self.percentiles((q,), now, min_samples)
        return None if result is None else result[0]

    def percentiles(
        self, qs: Sequence[float], now: float, min_samples: int = 20
    ) -> list[float] | None:
        """Several quantiles with one sort (for the admin view); None as in `percentile`."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be a fraction in [0, 1] (0.95 for p95), got {q!r}")
        self._advance(now)
        total = sum(self._counts)
        if total == 0 or total < min_samples:
            return None
        weighted = any(c > self._max for c in self._counts)
        if not weighted:
            values = sorted(v for bucket in self._samples for v in bucket)
            n = len(values)
            return [values[max(0, math.ceil(q * n) - 1)] for q in qs]
        pairs = sorted(
            (v, c / len(bucket))
            for bucket, c in zip(self._samples, self._counts, strict=True)
            if bucket
            for v in bucket
        )
        out: list[float] = []
        for q in qs:
            target = q * total
            acc = 0.0
            chosen = pairs[-1][0]
            for v, w in pairs:
                acc += w
                if acc >= target - 1e-9:
                    chosen = v
                    break
            out.append(chosen)
        return out

    def reset(self) -> None:
        """Forget every sample."""
        self._samples = [[] for _ in range(self._n)]
        self._counts = [0] * self._n
        self._head = _NEVER


class PeakEwma:
    """One endpoint's recent latency, quick to rise and slow to forget (Finagle's PeakEWMA).

    Why peak-sensitive: a balancer that averages would keep sending traffic to an
    endpoint whose answers just turned slow until the average caught up. Here a sample
    above the estimate replaces it at once; a sample below pulls it down with the weight
    `1 - exp(-dt / decay)`, dt being the time since the last update, so the estimate
    forgets a peak over about `decay` seconds of *time* whatever the request rate.
    Between samples it decays toward 0 (read with `value`): an endpoint nobody has asked
    lately looks cheap again and gets a request that measures it afresh.

    `observe_at_least` takes a lower bound: an attempt cancelled or timed out after `t`
    seconds took at least `t`. It can raise the estimate, never lower it, so a slow
    endpoint whose slow answers are always overtaken by hedges still looks slow.

    The estimate is 0.0 until the first sample (`observed` says whether there was one).
    """

    __slots__ = ("_cost", "_stamp", "decay", "observed")

    def __init__(self, decay: float = 10.0) -> None:
        if not decay > 0 or math.isinf(decay):
            raise ValueError(f"decay must be a positive number of seconds, got {decay!r}")
        self.decay = float(decay)
        self._cost = 0.0
        self._stamp = 0.0
        self.observed = False

    def value(self, now: float) -> float:
        """The estimate at `now`, seconds (decayed toward 0 since the last sample)."""
        dt = now - self._stamp
        if dt <= 0.0 or self._cost == 0.0:
            return self._cost
        return self._cost * math.exp(-dt / self.decay)

    def observe(self, now: float, seconds: float) -> None:
        """One answer that took `seconds`."""
        value = seconds if seconds > 0.0 else 0.0
        if value >= self._cost or not self.observed:
            self._cost = value
        else:
            dt = now - self._stamp
            w = math.exp(-dt / self.decay) if dt > 0.0 else 1.0
            # a convex mix of the last estimate and this sample: below the last estimate, at or
            # above its decayed value (an idle endpoint's estimate rises back toward the sample)
            self._cost = self._cost * w + value * (1.0 - w)
        if now > self._stamp:
            self._stamp = now
        self.observed = True

    def observe_at_least(self, now: float, seconds: float) -> None:
        """An attempt abandoned after `seconds` (cancelled, timed out): it took at least that."""
        current = self.value(now)
        if seconds > current:
            self._cost = seconds
            if now > self._stamp:
                self._stamp = now
            self.observed = True

    def reset(self) -> None:
        self._cost = 0.0
        self._stamp = 0.0
        self.observed = False
