"""Error budgets and multi-window burn rates of one SLO, counted in fixed time buckets.

An SLO says what share of events must be good over a compliance window (`99.9%` over
`30d`). The error budget is the share that may be bad (0.1 %); the burn rate over a window
is the error ratio seen in it divided by that budget (1x spends the budget exactly over the
compliance window, 14.4x spends 2 % of a 30-day budget in one hour). The alerting windows
(5m, 30m, 1h, 2h, 6h, 1d, 3d) are the SRE Workbook's for a 30-day window and scale with the
SLO's window: a 7-day SLO's "1h" window lasts 14 minutes, so the same burn factors still
mean the same share of the budget.

Events go into two rings of buckets whose width follows the window: a fine ring (10 s
buckets at 30 days) covering the 6h window, and a coarse ring (1 h buckets at 30 days)
covering the whole compliance window. Memory is fixed (about 2,900 buckets per SLO) and
`record` is O(1); `status` walks each ring once. A window's sum covers the buckets it
spans, the current (partial) bucket included, so it may read up to one bucket short.

Replicas share their counts through the state store by bucket, each replica writing its
own absolute counts (never increments): an upload whose reply was lost is simply sent again,
and a store that took it twice holds the same numbers. `take_changed` hands the controller
this process's own counts of the buckets that changed since it last asked, `stored` records
what the store holds for this replica once an upload succeeded, `changed_again` marks the
buckets of a failed upload for the next try, and `adopt` takes a bucket's totals across
replicas back (plus what was counted here since the store last heard from this replica).
`now` must then be wall time, the same on every replica, so that bucket numbers agree.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

NOMINAL_WINDOW = 30 * 86400.0  # the compliance window the alerting windows are stated for
FINE_BUCKETS = 2160  # 10 s buckets over 6 h at 30 days
COARSE_BUCKETS = 720  # 1 h buckets over 30 days


class SliKind(enum.StrEnum):
    """What an event being good means."""

    AVAILABILITY = "availability"  # answered without a gateway or backend error
    LATENCY = "latency"  # a successful answer within the threshold


class Severity(enum.StrEnum):
    PAGE = "page"
    TICKET = "ticket"


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """An alerting window by its name at a 30-day compliance window (`1h`), and its length."""

    name: str
    nominal: float  # seconds at NOMINAL_WINDOW


BURN_WINDOWS: tuple[BurnWindow, ...] = tuple(
    BurnWindow(n, s)
    for n, s in (
        ("5m", 300.0), ("30m", 1800.0), ("1h", 3600.0), ("2h", 7200.0), ("6h", 21600.0),
        ("1d", 86400.0), ("3d", 259200.0),
    )
)  # fmt: skip
_NOMINAL = {w.name: w.nominal for w in BURN_WINDOWS}
_FINE_SPAN = FINE_BUCKETS * NOMINAL_WINDOW / 259200.0  # 6 h at 30 days


@dataclass(frozen=True, slots=True)
class BurnAlert:
    """Burn faster than `factor` over both `long` and `short` windows (SRE Workbook ch. 5).

    The long window says the burn is real and big enough to matter; the short one says it
    is still going on, so the alert resolves minutes after the burn stops.
    """

    severity: Severity
    long: str
    short: str
    factor: float


BURN_ALERTS: tuple[BurnAlert, ...] = (
    BurnAlert(Severity.PAGE, "1h", "5m", 14.4),  # 2 % of the budget in 1 h
    BurnAlert(Severity.PAGE, "6h", "30m", 6.0),  # 5 % in 6 h
    BurnAlert(Severity.TICKET, "1d", "2h", 3.0),  # 10 % in 1 d
    BurnAlert(Severity.TICKET, "3d", "6h", 1.0),  # 10 % in 3 d
)
FAST_BURN = BURN_ALERTS[0]


@dataclass(frozen=True, slots=True)
class FastBurnConfig:
    """What the gateway does while the fast-burn condition (`FAST_BURN`) holds.

    freeze_canary: hold a canary on the SLO's routes where it is (no step up).
    rollback_canary: roll the canary back when it carries at least `blame_share` of the
        bad events in the short window, and at least twice its share of the traffic.
    min_bad_events: bad events the short window must hold before anything is done (a
        ratio of 2 bad in 3 requests is no evidence).
    shed_priority: while burning, refuse requests of this priority value and below (0 is
        `sheddable`); None sheds nothing.
    """

    freeze_canary: bool = True
    rollback_canary: bool = True
    blame_share: float = 0.5
    min_bad_events: int = 10
    shed_priority: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.blame_share <= 1.0:
            raise ValueError(f"blame_share must be a fraction in (0, 1], got {self.blame_share!r}")
        if self.min_bad_events < 1:
            raise ValueError(f"min_bad_events must be at least 1, got {self.min_bad_events!r}")


@dataclass(frozen=True, slots=True)
class SloConfig:
    """One SLO: which routes, what is good, the objective and its compliance window.

    objective: fraction in (0, 1), 0.999 for 99.9 %.
    window: compliance window in seconds (the alerting windows scale with it).
    latency_threshold: seconds; required for a LATENCY SLO, None otherwise.
    fallback_good: an answer a fallback gave counts as good (else as bad).
    """

    name: str
    routes: tuple[str, ...]
    kind: SliKind
    objective: float
    window: float = NOMINAL_WINDOW
    latency_threshold: float | None = None
    fallback_good: bool = False
    fast_burn: FastBurnConfig = field(default_factory=FastBurnConfig)

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError(f"SLO {self.name!r} must name at least one route")
        if not 0.0 < self.objective < 1.0:
            raise ValueError(
                f"SLO objective must be a fraction in (0, 1) (0.999 for 99.9%), got {self.objective!r}"
            )
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(
                f"SLO window must be a positive number of seconds, got {self.window!r}"
            )
        if (self.kind is SliKind.LATENCY) != (self.latency_threshold is not None):
            raise ValueError(
                "a latency SLO needs latency_threshold, and only a latency SLO has one"
            )
        if self.latency_threshold is not None and not self.latency_threshold > 0:
            raise ValueError(
                f"latency_threshold must be > 0 seconds, got {self.latency_threshold!r}"
            )

    @property
    def error_budget(self) -> float:
        """The share of events that may be bad: 1 - objective."""
        return 1.0 - self.objective

    @property
    def scale(self) -> float:
        """This SLO's window over the 30 days the alerting windows are stated for."""
        return self.window / NOMINAL_WINDOW

    def seconds(self, window: str) -> float:
        """How long the alerting window `window` (`1h`) lasts for this SLO."""
        return _NOMINAL[window] * self.scale

    @property
    def fine_width(self) -> float:
        return self.window / 259200.0

    @property
    def coarse_width(self) -> float:
        return self.window / COARSE_BUCKETS


@dataclass(frozen=True, slots=True)
class WindowStatus:
    """Counts over one alerting window; ratio and burn rate are None without events."""

    name: str
    seconds: float
    total: int
    bad: int
    error_ratio: float | None
    burn_rate: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "window": self.name,
            "seconds": self.seconds,
            "total": self.total,
            "bad": self.bad,
            "error_ratio": self.error_ratio,
            "burn_rate": self.burn_rate,
        }


@dataclass(frozen=True, slots=True)
class SloStatus:
    """One SLO at one instant: every window, the budget left, and which burn alerts hold.

    `budget_remaining` is the share of the window's error budget not yet spent, over the
    events this process has counted (or been told of) in the compliance window: 1.0 when
    nothing bad happened, 0 when exactly spent, negative when overspent. `short_bad` and
    `short_blame` are the bad events in the fast-burn short window, and how many of them the
    route's canary served.
    """

    name: str
    kind: SliKind
    objective: float
    window: float
    at: float
    windows: tuple[WindowStatus, ...]
    total: int
    bad: int
    budget_remaining: float
    burning: tuple[BurnAlert, ...]
    short_bad: int
    short_blame: int

    @property
    def fast_burn(self) -> bool:
        return FAST_BURN in self.burning

    def window_status(self, name: str) -> WindowStatus:
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(name)

    @property
    def severity(self) -> Severity | None:
        """The most urgent burn alert that holds, or None."""
        if any(a.severity is Severity.PAGE for a in self.burning):
            return Severity.PAGE
        return Severity.TICKET if self.burning else None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "objective": self.objective,
            "window_s": self.window,
            "total": self.total,
            "bad": self.bad,
            "budget_remaining": self.budget_remaining,
            "fast_burn": self.fast_burn,
            "severity": None if self.severity is None else self.severity.value,
            "burning": [
                {"severity": a.severity.value, "long": a.long, "short": a.short, "factor": a.factor}
                for a in self.burning
            ],
            "windows": [w.to_dict() for w in self.windows],
            "short_bad": self.short_bad,
            "short_blame": self.short_blame,
        }


# --- buckets -----------------------------------------------------------------------------------

FINE = "f"
COARSE = "c"


class _Ring:
    """`size` buckets of `width` seconds: bucket number n lives in slot n % size.

    Every slot holds a bucket of the last `size` up to `newest` (the buckets skipped when
    time jumps ahead are emptied then), so a window's sum is a sum of list slices, in C,
    rather than a Python loop over thousands of buckets every tick.
    """

    __slots__ = ("bad", "blame", "good", "index", "newest", "size", "width")

    def __init__(self, width: float, size: int) -> None:
        self.width = width
        self.size = size
        self.index = [-1] * size  # the bucket number each slot holds now
        self.good = [0] * size
        self.bad = [0] * size
        self.blame = [0] * size
        self.newest = -1  # the latest bucket number seen; -1 before the first

    def slot(self, n: int) -> int | None:
        """The slot of bucket `n`, emptied if it held an older bucket; None if `n` is too old."""
        size = self.size
        newest = self.newest
        if n > newest:
            if newest >= 0:
                # the buckets between hold counts a whole ring old: empty them
                for m in range(max(newest + 1, n - size + 1), n):
                    t = m % size
                    self.index[t] = m
                    self.good[t] = self.bad[t] = self.blame[t] = 0
            self.newest = n
        elif n <= newest - size:
            return None
        s = n % size
        if self.index[s] != n:
            if self.index[s] > n:
                return None
            self.index[s] = n
            self.good[s] = self.bad[s] = self.blame[s] = 0
        return s

    def get(self, n: int) -> tuple[int, int, int]:
        s = n % self.size
        if self.index[s] != n:
            return (0, 0, 0)
        return (self.good[s], self.bad[s], self.blame[s])

    def sums(self, now_n: int, lengths: Sequence[int]) -> list[tuple[int, int, int]]:
        """(good, bad, blame) over the last `lengths[i]` buckets up to `now_n`."""
        out: list[tuple[int, int, int]] = []
        size, newest = self.size, self.newest
        hi = min(now_n, newest)
        for length in lengths:
            lo = max(now_n - length + 1, newest - size + 1)
            if newest < 0 or lo > hi:
                out.append((0, 0, 0))
                continue
            a, b = lo % size, hi % size
            parts = [slice(a, b + 1)] if a <= b else [slice(a, size), slice(0, b + 1)]
            out.append(
                (
                    sum(sum(self.good[p]) for p in parts),
                    sum(sum(self.bad[p]) for p in parts),
                    sum(sum(self.blame[p]) for p in parts),
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class BucketCounts:
    """One bucket's counts: `ring` FINE or COARSE, `n` its number (time // width)."""

    ring: str
    n: int
    good: int
    bad: int
    blame: int


class SloBudget:
    """One SLO's counts and the questions asked of them; see the module docstring."""

    __slots__ = (
        "_changed", "_cn", "_coarse", "_cs", "_fine", "_fn", "_fs", "_hi", "_lo", "_own",
        "_stored", "_windows", "config", "sharing",
    )  # fmt: skip

    def __init__(self, config: SloConfig, *, sharing: bool = False) -> None:
        self.config = config
        # the current buckets (numbers and slots) and the time span they share
        self._fn = self._fs = self._cn = self._cs = 0
        self._lo = self._hi = 0.0
        self.sharing = sharing
        self._fine = _Ring(config.fine_width, FINE_BUCKETS + 1)
        self._coarse = _Ring(config.coarse_width, COARSE_BUCKETS + 1)
        # (ring, bucket) -> [good, bad, blame] counted by this replica, while sharing; what the
        # store holds of them; and the buckets counted in since the last upload
        self._own: dict[tuple[str, int], list[int]] = {}
        self._stored: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._changed: set[tuple[str, int]] = set()
        fine: list[tuple[str, int]] = []
        coarse: list[tuple[str, int]] = []
        for w in BURN_WINDOWS:
            if w.nominal <= _FINE_SPAN:
                fine.append((w.name, max(1, round(w.nominal / 10.0))))
            else:
                coarse.append((w.name, max(1, round(w.nominal / 3600.0))))
        coarse.append(("", COARSE_BUCKETS))
        self._windows = (fine, coarse)

    def _ring(self, name: str) -> _Ring:
        return self._fine if name == FINE else self._coarse

    # --- the request path ------------------------------------------------------------------

    def record(self, now: float, bad: bool, blame: bool = False) -> None:
        """Count one event at `now`; `blame` marks a bad event the route's canary served.

        The slots of the current buckets are kept between calls, so an event in them (nearly
        every event) costs a comparison and two additions.
        """
        fine, coarse = self._fine, self._coarse
        fs, cs = self._fs, self._cs
        if not (self._lo <= now < self._hi and fine.index[fs] == self._fn
                and coarse.index[cs] == self._cn):  # fmt: skip
            if not self._advance(now):
                self._record_old(now, bad, blame)
                return
            fs, cs = self._fs, self._cs
        if bad:
            fine.bad[fs] += 1
            coarse.bad[cs] += 1
            if blame:
                fine.blame[fs] += 1
                coarse.blame[cs] += 1
        else:
            fine.good[fs] += 1
            coarse.good[cs] += 1
        if self.sharing:
            self._add_own((FINE, self._fn), bad, blame)
            self._add_own((COARSE, self._cn), bad, blame)

    def _advance(self, now: float) -> bool:
        """Make the buckets of `now` current; False for an event older than the current ones."""
        fine, coarse = self._fine, self._coarse
        fn, cn = int(now // fine.width), int(now // coarse.width)
        if fn < fine.newest or cn < coarse.newest:
            return False
        fs, cs = fine.slot(fn), coarse.slot(cn)
        assert fs is not None and cs is not None  # the newest buckets always have a slot
        self._fn, self._fs, self._cn, self._cs = fn, fs, cn, cs
        self._lo = max(fn * fine.width, cn * coarse.width)
        self._hi = min((fn + 1) * fine.width, (cn + 1) * coarse.width)
        return True

    def _record_old(self, now: float, bad: bool, blame: bool) -> None:
        """An event timed before the current buckets (it finished late): its own buckets."""
        g, b, c = (0, 1, 1 if blame else 0) if bad else (1, 0, 0)
        for name, ring in ((FINE, self._fine), (COARSE, self._coarse)):
            n = int(now // ring.width)
            s = ring.slot(n)
            if s is None:
                continue
            ring.good[s] += g
            ring.bad[s] += b
            ring.blame[s] += c
            if self.sharing:
                self._add_own((name, n), bad, blame)

    def _add_own(self, key: tuple[str, int], bad: bool, blame: bool) -> None:
        p = self._own.get(key)
        if p is None:
            p = self._own[key] = [0, 0, 0]
        self._changed.add(key)
        if bad:
            p[1] += 1
            if blame:
                p[2] += 1
        else:
            p[0] += 1

    # --- questions -------------------------------------------------------------------------

    def status(self, now: float) -> SloStatus:
        cfg = self.config
        budget = cfg.error_budget
        fine_names, coarse_names = self._windows
        counts: dict[str, tuple[int, int, int]] = {}
        for ring, names in ((self._fine, fine_names), (self._coarse, coarse_names)):
            sums = ring.sums(int(now // ring.width), [length for _, length in names])
            counts.update({name: s for (name, _), s in zip(names, sums, strict=True)})
        windows = []
        for w in BURN_WINDOWS:
            g, b, _ = counts[w.name]
            total = g + b
            ratio = b / total if total else None
            windows.append(
                WindowStatus(
                    name=w.name,
                    seconds=cfg.seconds(w.name),
                    total=total,
                    bad=b,
                    error_ratio=ratio,
                    burn_rate=None if ratio is None else ratio / budget,
                )
            )
        by_name = {w.name: w for w in windows}
        burning = tuple(
            a
            for a in BURN_ALERTS
            if _above(by_name[a.long], a.factor) and _above(by_name[a.short], a.factor)
        )
        g, b, _ = counts[""]
        total = g + b
        remaining = 1.0 - (b / (budget * total)) if total else 1.0
        _, short_bad, short_blame = counts[FAST_BURN.short]
        return SloStatus(
            name=cfg.name,
            kind=cfg.kind,
            objective=cfg.objective,
            window=cfg.window,
            at=now,
            windows=tuple(windows),
            total=total,
            bad=b,
            budget_remaining=remaining,
            burning=burning,
            short_bad=short_bad,
            short_blame=short_blame,
        )

    # --- sharing between replicas ----------------------------------------------------------

    def take_changed(self) -> list[BucketCounts]:
        """This replica's own counts of each bucket counted in since the last call.

        Absolute counts, not increments: the caller writes them as this replica's share of
        each bucket, then reports back with `stored` (written) or `changed_again` (failed or
        unknown). Buckets their ring no longer spans are forgotten here, which keeps memory
        bounded through a long outage of the store.
        """
        self._forget_old()
        own = self._own
        out = [BucketCounts(r, n, *own[r, n]) for r, n in self._changed if (r, n) in own]
        self._changed = set()
        return out

    def changed_again(self, items: Iterable[BucketCounts]) -> None:
        """Buckets whose upload failed, or may have: they go with the next `take_changed`."""
        for item in items:
            if (item.ring, item.n) in self._own:
                self._changed.add((item.ring, item.n))

    def stored(self, item: BucketCounts) -> None:
        """The store now holds `item` as this replica's share of its bucket."""
        self._stored[item.ring, item.n] = (item.good, item.bad, item.blame)

    def adopt(self, item: BucketCounts) -> None:
        """Take a bucket's totals across replicas (this one's stored share included).

        Counts made here since the store last took this replica's share are added on top.
        A count never goes down: a store that lost its data (a Redis restarted without
        persistence) does not make this replica forget what it counted. A bucket older than
        its ring's span is ignored.
        """
        ring = self._ring(item.ring)
        s = ring.slot(item.n)
        if s is None:
            return
        key = (item.ring, item.n)
        own = self._own.get(key) or (0, 0, 0)
        sent = self._stored.get(key) or (0, 0, 0)
        ring.good[s] = max(ring.good[s], item.good - sent[0] + own[0])
        ring.bad[s] = max(ring.bad[s], item.bad - sent[1] + own[1])
        ring.blame[s] = max(ring.blame[s], item.blame - sent[2] + own[2])

    def _forget_old(self) -> None:
        for key in list(self._own):
            ring = self._ring(key[0])
            if key[1] <= ring.newest - ring.size:
                del self._own[key]
                self._stored.pop(key, None)
                self._changed.discard(key)

    def recent_buckets(self, now: float, span: float) -> list[tuple[str, int]]:
        """(ring, bucket) pairs covering the last `span` seconds (at least two per ring)."""
        out: list[tuple[str, int]] = []
        for name, ring in ((FINE, self._fine), (COARSE, self._coarse)):
            n = int(now // ring.width)
            count = min(ring.size, max(2, math.ceil(span / ring.width) + 1))
            out.extend((name, n - k) for k in range(count))
        return out

    def all_buckets(self, now: float) -> list[tuple[str, int]]:
        """Every (ring, bucket) pair the windows read, for a full refresh from the store."""
        out: list[tuple[str, int]] = []
        for name, ring in ((FINE, self._fine), (COARSE, self._coarse)):
            n = int(now // ring.width)
            out.extend((name, n - k) for k in range(ring.size))
        return out

    def width(self, ring: str) -> float:
        return self._ring(ring).width

    def size(self, ring: str) -> int:
        """Buckets the ring holds (its span is size x width)."""
        return self._ring(ring).size


def _above(w: WindowStatus, factor: float) -> bool:
    # strictly above, as the generated alert rules compare
    return w.burn_rate is not None and w.burn_rate > factor


__all__ = [
    "BURN_ALERTS",
    "BURN_WINDOWS",
    "COARSE",
    "FAST_BURN",
    "FINE",
    "NOMINAL_WINDOW",
    "BucketCounts",
    "BurnAlert",
    "BurnWindow",
    "FastBurnConfig",
    "Severity",
    "SliKind",
    "SloBudget",
    "SloConfig",
    "SloStatus",
    "WindowStatus",
]
