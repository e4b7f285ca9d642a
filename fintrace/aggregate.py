"""Add up connections into the summary the report is built from.

:class:`Aggregator` takes each :class:`~fintrace.model.Connection` once, as it
is finished, and keeps only compact aggregates: counters, and for the
TIME_WAIT and CLOSE_WAIT figures one 8-byte float per connection that held
TIME_WAIT or completed a close (in ``array('d')``), so memory stays small on
captures of millions of connections.

What it adds up (``../shared/TEARDOWN.md``, "What the report adds up"):

* connections by ``close_type``; active closers by role;
* stuck CLOSE_WAIT by service (the passive endpoint ``ip:port``): count,
  oldest; for completed closes the spread of ``close_wait_s`` per service;
* TIME_WAIT holders per host, and the peak held at once assuming each lasts
  2×MSL; per (client ip, server ip, server port) the peak number of 4-tuples
  in TIME_WAIT against the ephemeral port range; new SYNs on a 4-tuple less
  than 2×MSL after its previous connection;
* resets by sender and phase, and RSTs that left the peer's data
  unacknowledged, with the bytes lost.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from fintrace.model import CloseType, Connection, Role, State

#: Example streams kept per finding (for Wireshark filters).
MAX_EXAMPLES = 50


@dataclass(frozen=True, slots=True)
class AggregateOptions:
    msl: float = 30.0
    ephemeral_ports: int = 28232
    stuck_after: float = 60.0


class _Examples:
    """Up to MAX_EXAMPLES (capture, stream) pairs, in the order seen."""

    __slots__ = ("items", "total")

    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []
        self.total = 0

    def add(self, capture: str, stream: int) -> None:
        self.total += 1
        if len(self.items) < MAX_EXAMPLES:
            self.items.append((capture, stream))

    def as_dict(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for cap, stream in self.items:
            out.setdefault(cap, []).append(stream)
        return out


@dataclass(slots=True)
class _Service:
    stuck: int = 0
    oldest_s: float = 0.0
    stuck_examples: _Examples = field(default_factory=_Examples)
    waits: array[float] = field(default_factory=lambda: array("d"))
    slowest: _Examples = field(default_factory=_Examples)


def percentile(sorted_values: list[float] | array[float], q: float) -> float:
    """Nearest-rank percentile of values already sorted."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def peak_overlap(starts: list[float] | array[float], length: float) -> tuple[int, float]:
    """Most intervals ``[s, s + length)`` open at once, and when that was."""
    if not starts:
        return 0, 0.0
    ordered = sorted(starts)
    best, when, lo = 0, ordered[0], 0
    for hi, s in enumerate(ordered):
        while ordered[lo] + length <= s:
            lo += 1
        if hi - lo + 1 > best:
            best, when = hi - lo + 1, s
    return best, when


class Aggregator:
    """Adds up finished connections; :meth:`summary` gives the result."""

    def __init__(self, options: AggregateOptions) -> None:
        self.options = options
        self.total = 0
        self.close_types: Counter[str] = Counter()
        self.active: Counter[str] = Counter()
        self.tw_holders: Counter[str] = Counter()
        self.tw_by_host: defaultdict[str, array[float]] = defaultdict(lambda: array("d"))
        self.tw_by_triple: defaultdict[tuple[str, str, int], array[float]] = defaultdict(
            lambda: array("d")
        )
        self.services: defaultdict[str, _Service] = defaultdict(_Service)
        self.fin_wait_2: Counter[str] = Counter()
        self.resets: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.reset_examples = _Examples()
        self.lost = _Examples()
        self.lost_bytes = 0
        self.reused = _Examples()
        self.reuse_gaps = array("d")
        self.anomalies: Counter[str] = Counter()
        self.first_ts = math.inf
        self.last_ts = -math.inf

    def add(self, c: Connection) -> None:
        self.total += 1
        self.first_ts = min(self.first_ts, c.first_ts)
        self.last_ts = max(self.last_ts, c.last_ts)
        kind = c.close_type
        self.close_types[kind] += 1
        self.active[c.active_closer or "none"] += 1
        for a in c.anomalies:
            self.anomalies[a] += 1
        if c.time_wait is not None:
            self.tw_holders[c.time_wait] += 1
            self._time_wait(c)
        if c.reused_tuple is not None and c.reused_tuple.gap_s < 2 * self.options.msl:
            self.reused.add(c.capture, c.stream)
            self.reuse_gaps.append(c.reused_tuple.gap_s)
        if c.close_type in (CloseType.RESET, CloseType.REFUSED) and c.reset_by is not None:
            phase = c.reset_phase or ("refused" if kind == CloseType.REFUSED else "unknown")
            self.resets[c.reset_by][phase] += 1
            if kind == CloseType.RESET:
                self.reset_examples.add(c.capture, c.stream)
            if c.rst_lost_bytes > 0:
                self.lost.add(c.capture, c.stream)
                self.lost_bytes += c.rst_lost_bytes
        if c.close_wait_s is not None and c.active_closer in (Role.CLIENT, Role.SERVER):
            passive = c.server if c.active_closer == Role.CLIENT else c.client
            svc = self.services[f"{_host(passive.ip)}:{passive.port}"]
            if kind == CloseType.CLOSE_WAIT:
                closer = c.client if c.active_closer == Role.CLIENT else c.server
                self.fin_wait_2[f"{_host(closer.ip)}"] += 1
                if c.stuck:
                    svc.stuck += 1
                    svc.stuck_examples.add(c.capture, c.stream)
                    svc.oldest_s = max(svc.oldest_s, c.close_wait_s)
            else:
                svc.waits.append(c.close_wait_s)
                if c.close_wait_s >= self.options.stuck_after:
                    svc.slowest.add(c.capture, c.stream)

    def _time_wait(self, c: Connection) -> None:
        for t in c.transitions:
            if t.state is State.TIME_WAIT:
                holder = c.client if t.side is Role.CLIENT else c.server
                self.tw_by_host[holder.ip].append(t.ts)
        # The 4-tuple is blocked from its first side's TIME_WAIT on.
        start = min(t.ts for t in c.transitions if t.state is State.TIME_WAIT)
        self.tw_by_triple[(c.client.ip, c.server.ip, c.server.port)].append(start)

    def summary(self) -> dict[str, Any]:
        o = self.options
        window = 2 * o.msl
        total = self.total
        close_types = {
            k.value: {
                "count": self.close_types.get(k, 0),
                "share": (self.close_types.get(k, 0) / total) if total else 0.0,
            }
            for k in CloseType
        }
        by_host: list[dict[str, Any]] = []
        for host, starts in self.tw_by_host.items():
            peak, when = peak_overlap(starts, window)
            by_host.append(
                {"host": host, "connections": len(starts), "peak": peak, "peak_ts": when}
            )
        by_host.sort(key=lambda d: (-d["peak"], -d["connections"], d["host"]))
        triples: list[dict[str, Any]] = []
        for (cip, sip, sport), starts in self.tw_by_triple.items():
            peak, when = peak_overlap(starts, window)
            triples.append(
                {
                    "client_ip": cip,
                    "server_ip": sip,
                    "server_port": sport,
                    "peak": peak,
                    "peak_ts": when,
                    "share_of_ephemeral": peak / o.ephemeral_ports,
                }
            )
        triples.sort(key=lambda d: (-d["peak"], d["client_ip"], d["server_ip"], d["server_port"]))
        stuck: list[dict[str, Any]] = []
        spread: list[dict[str, Any]] = []
        for name, svc in self.services.items():
            if svc.stuck:
                stuck.append(
                    {
                        "service": name,
                        "count": svc.stuck,
                        "oldest_s": svc.oldest_s,
                        "streams": svc.stuck_examples.as_dict(),
                    }
                )
            if svc.waits:
                w = sorted(svc.waits)
                spread.append(
                    {
                        "service": name,
                        "count": len(w),
                        "p50_s": percentile(w, 50),
                        "p95_s": percentile(w, 95),
                        "max_s": w[-1],
                        "slow_streams": svc.slowest.as_dict(),
                    }
                )
        stuck.sort(key=lambda d: (-d["count"], -d["oldest_s"], d["service"]))
        spread.sort(key=lambda d: (-d["p95_s"], d["service"]))
        return {
            "connections": total,
            "first_ts": self.first_ts if total else None,
            "last_ts": self.last_ts if total else None,
            "close_types": close_types,
            "active_closer": {
                r: self.active.get(r, 0) for r in ("client", "server", "both", "none")
            },
            "time_wait": {
                "holders": {r: self.tw_holders.get(r, 0) for r in ("client", "server", "both")},
                "msl_s": o.msl,
                "ephemeral_ports": o.ephemeral_ports,
                "by_host": by_host,
                "by_tuple": triples,
                "reused_within_2msl": {
                    "count": self.reused.total,
                    "min_gap_s": min(self.reuse_gaps) if self.reuse_gaps else None,
                    "streams": self.reused.as_dict(),
                },
            },
            "close_wait": {
                "stuck_after_s": o.stuck_after,
                "stuck_by_service": stuck,
                "by_service": spread,
                "fin_wait_2_by_host": dict(self.fin_wait_2.most_common()),
            },
            "resets": {
                "by_sender": {who: dict(phases) for who, phases in sorted(self.resets.items())},
                "streams": self.reset_examples.as_dict(),
                "lost_data": {
                    "count": self.lost.total,
                    "bytes": self.lost_bytes,
                    "streams": self.lost.as_dict(),
                },
            },
            "anomalies": dict(self.anomalies.most_common()),
        }


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
