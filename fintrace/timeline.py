"""Time series of a run: connection ends, TIME_WAIT held per host, resets.

:class:`Timeline` takes each :class:`~fintrace.model.Connection` once, as the
aggregator does, and keeps bucketed counts only. Connections arrive in the
order they finish, not in time order, and the capture's last timestamp is
unknown until the end, so the bucket grid cannot be fixed up front. Buckets
are instead aligned to whole multiples of a width on the epoch clock, in
integer microseconds: when the span seen outgrows :data:`MAX_BUCKETS`, the
width steps up a ladder in which each width divides the next, and every
bucket index ``k`` becomes ``k // factor``, which is exactly the bucket the
event would have had at the new width. Memory is therefore
``MAX_BUCKETS`` counters per series whatever the number of connections; the
series are the ten close types, the reset (sender, phase) pairs and at most
:data:`MAX_HOSTS` TIME_WAIT-holding hosts (the busiest: when a new host comes
and the table is full, the one with the fewest TIME_WAITs gives its place).

TIME_WAIT is counted at entry and at expiry (entry + 2×MSL) in two sparse
bucket maps per host; the number held at the end of a bucket is then exact:
entries before that instant minus expiries before it. The expiry buckets of
entries in ``[lo, hi]`` lie in ``[lo + k, hi + k + 1]`` (``k`` = 2×MSL in
buckets), so they too stay within ``MAX_BUCKETS + 1`` keys.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fintrace.model import CloseType, Connection, Role, State

if TYPE_CHECKING:
    from collections.abc import Iterator


#: Upper bound on buckets over the run's span; the width is raised to stay under it.
MAX_BUCKETS = 200
#: Hosts whose TIME_WAIT is followed over time; past that, the host with the
#: fewest TIME_WAITs is given up for a new one (and only counted).
MAX_HOSTS = 256

#: Bucket widths in microseconds; each divides the next, so re-bucketing is exact.
_LADDER_US = (
    1_000,
    2_000,
    10_000,
    20_000,
    100_000,
    200_000,
    1_000_000,
    2_000_000,
    10_000_000,
    20_000_000,
    60_000_000,
    120_000_000,
    600_000_000,
    1_200_000_000,
    3_600_000_000,
    7_200_000_000,
    21_600_000_000,
    43_200_000_000,
    86_400_000_000,
)

#: The order reset phases are listed in; ``refused`` and ``unknown`` as the aggregator names them.
RESET_PHASES = ("handshake", "established", "closing", "closed", "refused", "unknown")

_Buckets = defaultdict[int, int]


def _widths() -> Iterator[int]:
    yield from _LADDER_US
    w = _LADDER_US[-1]
    while True:
        w *= 2
        yield w


def _us(ts: float) -> int:
    return round(ts * 1_000_000)


@dataclass(frozen=True, slots=True)
class Series:
    """The time series of a run, over ``buckets`` buckets of ``width_s`` from ``start``.

    Bucket ``i`` covers ``[start + i * width_s, start + (i + 1) * width_s)``.
    """

    start: float
    width_s: float
    buckets: int
    #: close type -> connections whose last packet fell in each bucket
    ends: dict[str, tuple[int, ...]]
    #: ``"sender/phase"`` -> RSTs that ended a connection, per bucket
    resets: dict[str, tuple[int, ...]]
    #: host -> TIME_WAIT held at the end of each bucket (each lasting 2×MSL)
    time_wait: dict[str, tuple[int, ...]]
    #: TIME_WAIT entries of hosts given up to stay within MAX_HOSTS, not in ``time_wait``
    time_wait_untracked: int


class Timeline:
    """Adds up finished connections into bucketed time series; :meth:`series` gives them."""

    def __init__(self, *, msl: float = 30.0, max_buckets: int = MAX_BUCKETS) -> None:
        if max_buckets < 2:
            raise ValueError("a timeline needs at least two buckets")
        self.max_buckets = max_buckets
        self.window_us = _us(2 * msl)
        self._widths = _widths()
        self.width = next(self._widths)
        self.min_us: int | None = None
        self.max_us = 0
        self.ends: defaultdict[str, _Buckets] = defaultdict(lambda: defaultdict(int))
        self.resets: defaultdict[str, _Buckets] = defaultdict(lambda: defaultdict(int))
        self.tw_in: dict[str, _Buckets] = {}
        self.tw_out: dict[str, _Buckets] = {}
        self.tw_untracked = 0
        # Least-frequently-used bookkeeping of the hosts followed: entries per
        # host, and hosts per number of entries, least recently counted first.
        self._tw_count: dict[str, int] = {}
        self._tw_by_count: defaultdict[int, dict[str, None]] = defaultdict(dict)
        self._tw_min = 0

    def add(self, c: Connection) -> None:
        self._extend(_us(c.first_ts), _us(c.last_ts))
        w = self.width
        self.ends[c.close_type][_us(c.last_ts) // w] += 1
        if c.reset_by is not None and c.close_type in (CloseType.RESET, CloseType.REFUSED):
            phase = c.reset_phase or ("refused" if c.close_type is CloseType.REFUSED else "unknown")
            when = next((t.ts for t in c.transitions if t.state is State.RESET), c.last_ts)
            self.resets[f"{c.reset_by}/{phase}"][_us(when) // w] += 1
        if c.time_wait is not None:
            for t in c.transitions:
                if t.state is State.TIME_WAIT:
                    host = (c.client if t.side is Role.CLIENT else c.server).ip
                    self._time_wait(host, _us(t.ts))

    def _time_wait(self, host: str, entry_us: int) -> None:
        n = self._tw_count.get(host, 0)
        if n:
            self._uncount(host, n)
        else:
            if len(self._tw_count) >= MAX_HOSTS:
                self._evict()
            self.tw_in[host] = defaultdict(int)
            self.tw_out[host] = defaultdict(int)
            self._tw_min = 1
        self._tw_count[host] = n + 1
        self._tw_by_count[n + 1][host] = None
        self.tw_in[host][entry_us // self.width] += 1
        self.tw_out[host][(entry_us + self.window_us) // self.width] += 1

    def _uncount(self, host: str, n: int) -> None:
        hosts = self._tw_by_count[n]
        del hosts[host]
        if not hosts:
            del self._tw_by_count[n]
            if self._tw_min == n:
                self._tw_min = n + 1

    def _evict(self) -> None:
        """Give up the host with the fewest TIME_WAITs (of those, the one counted
        longest ago): a host that piles them up keeps its place however many
        hosts hold one or two, and a new host has no past to lose."""
        host = next(iter(self._tw_by_count[self._tw_min]))
        n = self._tw_count.pop(host)
        self._uncount(host, n)
        del self.tw_in[host], self.tw_out[host]
        self.tw_untracked += n

    def _extend(self, lo_us: int, hi_us: int) -> None:
        if self.min_us is None:
            self.min_us, self.max_us = lo_us, hi_us
        else:
            self.min_us = min(self.min_us, lo_us)
            self.max_us = max(self.max_us, hi_us)
        width = self.width
        while self.max_us // width - self.min_us // width >= self.max_buckets:
            width = next(self._widths)
        if width != self.width:
            self._rebucket(width // self.width)
            self.width = width

    def _rebucket(self, factor: int) -> None:
        for group in (self.ends, self.resets, self.tw_in, self.tw_out):
            for key, buckets in group.items():
                merged: _Buckets = defaultdict(int)
                for k, n in buckets.items():
                    merged[k // factor] += n
                group[key] = merged

    def series(self) -> Series:
        """The series over the span of the connections added (empty if none were)."""
        if self.min_us is None:
            return Series(0.0, self.width / 1e6, 0, {}, {}, {}, self.tw_untracked)
        w = self.width
        lo = self.min_us // w
        n = self.max_us // w - lo + 1

        def dense(buckets: _Buckets) -> tuple[int, ...]:
            return tuple(buckets.get(lo + i, 0) for i in range(n))

        ends = {k.value: dense(self.ends[k]) for k in CloseType if k in self.ends}
        order = {p: i for i, p in enumerate(RESET_PHASES)}
        keys = sorted(self.resets, key=lambda k: (k.split("/")[0], order[k.split("/")[1]]))
        resets = {k: dense(self.resets[k]) for k in keys}
        held: dict[str, tuple[int, ...]] = {}
        for host, entries in self.tw_in.items():
            exits = self.tw_out[host]
            now = 0
            values = []
            for i in range(n):
                now += entries.get(lo + i, 0) - exits.get(lo + i, 0)
                values.append(now)
            held[host] = tuple(values)
        return Series(lo * w / 1e6, w / 1e6, n, ends, resets, held, self.tw_untracked)
