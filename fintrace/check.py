"""Evaluate ``fintrace check`` rules over a run's connections: pure, no I/O.

:class:`Checker` takes each finished connection once (it has the renderer
interface, so the command drives it like any output) and keeps, per rule and
capture file, only what that rule needs: a counter and up to
:data:`MAX_EVIDENCE` stream numbers, the slowest close, or for the TIME_WAIT
rules one float and one stream number per connection that held TIME_WAIT.
:meth:`Checker.results` then gives one :class:`RuleResult` per (rule,
capture), with the streams that show why.

The figures are the report's (``fintrace/aggregate.py``), computed over the
connections of one capture file that the rule's service matches:

* ``max_close_wait``: connections whose close type is ``close_wait``;
* ``max_stuck``: those among them that are ``stuck``;
* ``max_reset_ratio``: connections closed by ``reset``, over all connections;
* ``forbid``: connections whose close type is one of those listed;
* ``max_close_wait_s``: the largest ``close_wait_s`` (the passive side's time
  from acknowledging the FIN to sending its own, or to the capture's end);
* ``max_time_wait_peak``: the most TIME_WAIT one host held at once, each
  lasting 2×MSL;
* ``max_port_exhaustion``: the most 4-tuples of one (client ip, server ip,
  server port) in TIME_WAIT at once, as a share of the ephemeral port range.
"""

from __future__ import annotations

import ipaddress
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from fintrace.aggregate import peak_overlap
from fintrace.findings import stream_filter
from fintrace.model import CloseType, Role, State

if TYPE_CHECKING:
    from fintrace.model import Connection
    from fintrace.pipeline import Run
    from fintrace.policy import Policy, Rule, Scope

#: Stream numbers kept as evidence per rule and capture.
MAX_EVIDENCE = 20

_TW_RULES = ("max_time_wait_peak", "max_port_exhaustion")


@lru_cache(maxsize=65536)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(ip)


def in_scope(scope: Scope | None, c: Connection) -> bool:
    """One of the connection's endpoints is the service."""
    if scope is None:
        return True
    for end in (c.client, c.server):
        if scope.port is not None and end.port != scope.port:
            continue
        if scope.host is None:
            return True
        addr = _address(end.ip)
        if addr.version == scope.host.version and addr in scope.host:
            return True
    return False


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule on one capture file."""

    rule: Rule
    capture: str
    passed: bool
    #: the figure compared with the limit
    observed: float
    #: one line: what was found, against the limit
    message: str
    #: tcp.stream numbers that show it (at most MAX_EVIDENCE)
    streams: tuple[int, ...] = ()
    #: how many connections count towards the figure
    total: int = 0

    @property
    def wireshark_filter(self) -> str | None:
        """The display filter the findings use, so the same streams read the same."""
        if not self.streams:
            return None
        return stream_filter(self.streams)


@dataclass(slots=True)
class _Tally:
    """What one rule has seen of one capture's connections."""

    in_scope: int = 0
    hits: int = 0
    streams: list[int] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    worst: float = 0.0
    worst_stream: int = -1
    worst_service: str = ""
    #: TIME_WAIT rules: group (host, or client ip/server ip/port) → start times, streams
    starts: defaultdict[str, tuple[array[float], array[int]]] = field(
        default_factory=lambda: defaultdict(lambda: (array("d"), array("q")))
    )

    def hit(self, stream: int) -> None:
        self.hits += 1
        if len(self.streams) < MAX_EVIDENCE:
            self.streams.append(stream)


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _number(x: float) -> str:
    return f"{x:g}"


class Checker:
    """Collects what the rules need; :meth:`results` judges."""

    def __init__(self, policy: Policy, *, msl: float = 30.0, ephemeral_ports: int = 28232) -> None:
        self.policy = policy
        self.window = 2 * msl
        self.ephemeral_ports = ephemeral_ports
        self.captures: list[str] = []
        self._tallies: list[dict[str, _Tally]] = [{} for _ in policy.rules]

    # -- the renderer interface ---------------------------------------------------

    def begin(self, run: Run) -> None:
        pass

    def connection(self, conn: Connection) -> None:
        self.add(conn)

    def flush(self) -> None:
        pass  # nothing is written before the end

    def end(self, run: Run) -> None:
        self.captures = [c.file for c in run.captures]

    # -- collecting ---------------------------------------------------------------

    def add(self, c: Connection) -> None:
        for rule, tallies in zip(self.policy.rules, self._tallies, strict=True):
            if not in_scope(rule.scope, c):
                continue
            t = tallies.get(c.capture)
            if t is None:
                t = tallies[c.capture] = _Tally()
            t.in_scope += 1
            self._collect(rule, t, c)

    def _collect(self, rule: Rule, t: _Tally, c: Connection) -> None:
        name = rule.name
        kind = c.close_type
        if name == "max_close_wait":
            if kind == CloseType.CLOSE_WAIT:
                t.hit(c.stream)
        elif name == "max_stuck":
            if c.stuck:
                t.hit(c.stream)
        elif name == "max_reset_ratio":
            if kind == CloseType.RESET:
                t.hit(c.stream)
        elif name == "forbid":
            assert isinstance(rule.limit, frozenset)
            if kind in rule.limit:
                t.hit(c.stream)
                t.kinds[kind] += 1
        elif name == "max_close_wait_s":
            self._close_wait_s(rule, t, c)
        elif c.time_wait is not None:
            self._time_wait(rule, t, c)

    def _close_wait_s(self, rule: Rule, t: _Tally, c: Connection) -> None:
        wait = c.close_wait_s
        if wait is None:
            return
        assert isinstance(rule.limit, int | float)
        if wait > rule.limit:
            t.hit(c.stream)
        if wait > t.worst or t.worst_stream < 0:
            passive = c.server if c.active_closer == Role.CLIENT else c.client
            t.worst = wait
            t.worst_stream = c.stream
            t.worst_service = _endpoint(passive.ip, passive.port)

    def _time_wait(self, rule: Rule, t: _Tally, c: Connection) -> None:
        # As aggregate.py counts them: a host holds TIME_WAIT from its own
        # transition on; the 4-tuple is blocked from the first side's on.
        waits = [(tr.side, tr.ts) for tr in c.transitions if tr.state is State.TIME_WAIT]
        if rule.name == "max_time_wait_peak":
            for side, ts in waits:
                holder = c.client if side is Role.CLIENT else c.server
                scope = rule.scope
                if scope is not None and scope.host is not None:
                    addr = _address(holder.ip)
                    if addr.version != scope.host.version or addr not in scope.host:
                        continue
                starts, streams = t.starts[holder.ip]
                starts.append(ts)
                streams.append(c.stream)
        elif waits:
            key = f"{c.client.ip} → {_endpoint(c.server.ip, c.server.port)}"
            starts, streams = t.starts[key]
            starts.append(min(ts for _side, ts in waits))
            streams.append(c.stream)

    # -- judging ------------------------------------------------------------------

    def results(self) -> list[RuleResult]:
        """One result per (rule, capture), rules in policy order."""
        captures = list(self.captures)
        for tallies in self._tallies:
            for cap in tallies:
                if cap not in captures:
                    captures.append(cap)
        out: list[RuleResult] = []
        for rule, tallies in zip(self.policy.rules, self._tallies, strict=True):
            for cap in captures:
                out.append(self._judge(rule, cap, tallies.get(cap) or _Tally()))
        return out

    def _judge(self, rule: Rule, capture: str, t: _Tally) -> RuleResult:
        name, limit = rule.name, rule.limit
        if name in _TW_RULES:
            return self._judge_time_wait(rule, capture, t)
        if isinstance(limit, frozenset):
            listed = " or ".join(sorted(limit))
            if t.hits:
                found = ", ".join(f"{k} {n}" for k, n in sorted(t.kinds.items()))
                msg = f"{_plural(t.hits, 'forbidden close')}: {found}"
            else:
                msg = f"no connection closed as {listed}"
            observed: float = t.hits
            passed = t.hits == 0
        elif name == "max_reset_ratio":
            observed = t.hits / t.in_scope if t.in_scope else 0.0
            passed = observed <= limit
            msg = (
                f"reset ratio {observed:.1%} ({t.hits} of {_plural(t.in_scope, 'connection')};"
                f" limit {limit:.1%})"
            )
        elif name == "max_close_wait_s":
            observed = t.worst
            passed = t.hits == 0
            if t.worst_stream < 0:
                msg = f"no close measured (limit {_number(limit)} s)"
            else:
                msg = (
                    f"slowest close {observed:.3f} s on {t.worst_service} (stream"
                    f" {t.worst_stream}; {t.hits} over the limit of {_number(limit)} s)"
                )
        else:
            observed = t.hits
            passed = observed <= limit
            what = {
                "max_close_wait": "connection left in CLOSE_WAIT",
                "max_stuck": "stuck CLOSE_WAIT connection",
            }[name]
            msg = f"{_plural(t.hits, what)} (limit {limit})"
        if rule.scope is not None and t.in_scope == 0:
            msg += f"; no connection matches {rule.scope}"
        return RuleResult(rule, capture, passed, observed, msg, tuple(t.streams), t.hits)

    def _judge_time_wait(self, rule: Rule, capture: str, t: _Tally) -> RuleResult:
        best, best_group, best_when = 0, "", 0.0
        for group, (starts, _streams) in sorted(t.starts.items()):
            peak, when = peak_overlap(starts, self.window)
            if peak > best:
                best, best_group, best_when = peak, group, when
        evidence: list[int] = []
        if best:
            starts, streams = t.starts[best_group]
            evidence = [
                s
                for ts, s in zip(starts, streams, strict=True)
                if best_when - self.window < ts <= best_when
            ]
        limit = rule.limit
        assert isinstance(limit, int | float)
        if rule.name == "max_time_wait_peak":
            observed: float = best
            where = f" on {best_group}" if best else ""
            msg = f"peak {best} TIME_WAIT at once{where} (limit {limit})"
        else:
            observed = best / self.ephemeral_ports
            where = f" for {best_group}" if best else ""
            msg = (
                f"peak {best} of {self.ephemeral_ports} ephemeral ports ({observed:.2%}) in"
                f" TIME_WAIT{where} (limit {limit:.2%})"
            )
        if rule.scope is not None and t.in_scope == 0:
            msg += f"; no connection matches {rule.scope}"
        return RuleResult(
            rule,
            capture,
            observed <= limit,
            observed,
            msg,
            tuple(evidence[:MAX_EVIDENCE]),
            len(evidence),
        )


def failed(results: list[RuleResult]) -> list[RuleResult]:
    return [r for r in results if not r.passed]
