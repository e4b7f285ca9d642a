"""Add up connections into the summary the report is built from.

:class:`Aggregator` takes each :class:`~fintrace.model.Connection` once, as it
is finished, and keeps only compact aggregates: counters, a bounded list of
example streams per item, and for the TIME_WAIT and CLOSE_WAIT figures one
8-byte float per connection that held TIME_WAIT or completed a close (in
``array('d')``), so memory stays small on captures of millions of
connections. The items there are many (one per client and service): their
values are kept with no object per item (:class:`_Events`, 18 bytes a
value) and grouped once, for the summary; names are made only there too.

What it adds up (``../shared/TEARDOWN.md``, "What the report adds up"), as
the keys of :meth:`Aggregator.summary`. These keys are read by the renderers
and by scripts (``--format json``): add keys freely, never rename one.

``connections``, ``first_ts``, ``last_ts``
    how many connections, and the time span of their packets.
``close_types``
    ``{close_type: {"count", "share"}}`` for every close type.
``active_closer``
    ``{"client", "server", "both", "none"}``: who started the close.
``time_wait``
    ``holders`` (``{"client", "server", "both"}``), ``msl_s``, ``window_s``
    (2×MSL, how long each TIME_WAIT is assumed to last), ``ephemeral_ports``;
    ``by_host``: ``[{"host", "connections", "peak", "peak_ts"}]``, the most
    TIME_WAIT sockets a host held at once, highest peak first; ``by_tuple``:
    ``[{"client_ip", "server_ip", "server_port", "peak", "peak_ts",
    "share_of_ephemeral"}]``, the most 4-tuples toward one service that one
    client held in TIME_WAIT at once, against its ephemeral port range;
    ``reused_within_2msl``: ``{"count", "min_gap_s", "failed", "streams"}``,
    new SYNs on a 4-tuple less than 2×MSL after its previous connection's
    last packet (``failed``: how many of those new connections were refused,
    reset, or never answered).
``close_wait``
    ``stuck_after_s``, ``slow_after_s``; ``stuck_by_service``:
    ``[{"service", "role", "ip", "port", "peer", "count", "open", "oldest_s",
    "streams"}]``; ``by_service`` (completed closes): ``[{"service", "role",
    "ip", "port", "peer", "count", "p50_s", "p95_s", "max_s", "slow",
    "slow_streams"}]``; ``fin_wait_2_by_host``: ``{host: connections}``, every
    ``close_wait`` connection by the host of its active closer;
    ``fin_wait_2``: ``[{"host", "count", "longest_s", "peers", "streams"}]``,
    the active closers that waited at least ``stuck_after_s`` in FIN_WAIT_2.
``resets``
    ``total``; ``by_sender``: ``{role: {phase: count}}`` (phase ``refused``
    for a refused connection); ``by_host``: ``[{"host", "role", "count",
    "phases", "streams"}]``, highest count first; ``streams``; ``lost_data``:
    ``{"count", "bytes", "streams", "by_host": [{"host", "count", "bytes"}]}``.
``attempts``
    ``{"count", "by_service": [{"service", "count", "streams"}]}``: SYNs
    that got no answer.
``unacked_fin``
    ``{"count", "streams"}``.
``anomalies``
    ``{anomaly: connections}``.

A "service" is the passive endpoint of a close. When that is a server it is
named ``ip:port``; when it is a client, its ephemeral port names nothing
that lasts, so it is named by its address and the service it talks to:
``10.0.0.7 (client of 10.0.0.10:80)``, ``role`` ``"client"``, ``port`` null.

Every ``streams`` value is ``{capture: [tcp.stream, ...]}``: up to
:data:`MAX_EXAMPLES` examples, the most telling ones (oldest, slowest, most
bytes lost) where there is a measure, else the first seen.
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from collections import Counter, defaultdict
from dataclasses import astuple, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from librt.strings import BytesWriter, write_f64_le, write_i64_le
from mypy_extensions import i64, u8

from fintrace.model import CloseType, Connection, Role, State

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

R = TypeVar("R")

#: Example streams kept per item (for Wireshark filters).
MAX_EXAMPLES: Final = 20

#: Close types in which the passive side completed its close.
_COMPLETED: Final = frozenset({CloseType.GRACEFUL, CloseType.PIGGYBACKED, CloseType.HALF_CLOSE})


@dataclass(frozen=True, slots=True)
class AggregateOptions:
    msl: float = 30.0
    ephemeral_ports: int = 28232
    stuck_after: float = 60.0
    #: A completed close whose CLOSE_WAIT lasted this long is slow: an
    #: application that reads the peer's FIN promptly closes within
    #: milliseconds.
    slow_after: float = 1.0

    def __reduce__(self) -> tuple[Any, ...]:
        # Compiled (mypyc), pickle's default sets the fields one by one, which frozen forbids.
        return (AggregateOptions, astuple(self))


class _Examples:
    """Up to MAX_EXAMPLES (capture, stream) pairs: the highest scores, else the first seen."""

    __slots__ = ("_heap", "_n", "total")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, int]] = []
        self._n = 0
        self.total = 0

    def add(self, capture: str, stream: int, score: float = 0.0) -> None:
        self.total += 1
        heap = self._heap
        n = self._n
        self._n = n + 1
        # Equal scores: the earlier one ranks higher (-n is larger), so once the
        # heap is full a score no higher than its lowest cannot enter: no item
        # made for it (a NaN compares as the item did, below).
        if len(heap) >= MAX_EXAMPLES and score <= heap[0][0]:
            return
        item = (score, -n, capture, stream)
        if len(heap) < MAX_EXAMPLES:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def as_dict(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for _score, _n, cap, stream in sorted(self._heap, key=lambda i: -i[1]):
            out.setdefault(cap, []).append(stream)
        return {cap: sorted(streams) for cap, streams in out.items()}


class _Addresses:
    """Address strings by number, so that an item's key is two machine integers."""

    __slots__ = ("ids", "names")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def id(self, ip: str) -> int:
        n = self.ids.get(ip)
        if n is None:
            n = self.ids[ip] = len(self.names)
            self.names.append(ip)
        return n


#: The ``pair`` of an item with one address: the bit no two-address pair has.
_ONE: Final = 1 << 63
_LOW: Final = 0xFFFFFFFF
#: How many values :class:`_Events` keeps in byte buffers before its arrays take them.
_BATCH: Final = 1024
#: :data:`_ONE` as the 64-bit machine word it is stored as (its top bit).
_ONE_WORD: Final[i64] = -0x8000000000000000
#: The arrays hold native byte order; the buffers are written little-endian.
_BIG_ENDIAN: Final = sys.byteorder == "big"

#: An item of :class:`_Events`: one or two addresses, and a port. A service
#: is one by what names it: ``(ip, None, port)`` for a server, ``(client ip,
#: server ip, server port)`` for a client (see the module docstring).
_Item = tuple[str, str | None, int]


class _Events:
    """Float values of many small items, with no object per item.

    An item is one address and a port (a server's service) or two and a port
    (a client toward a service). A large capture holds one per client and
    service, most with a single value: kept as objects in a dictionary, the
    key and its value cost about 130 bytes; here each value costs 18, in
    three arrays (the addresses as numbers of an :class:`_Addresses`, the
    port, the value), which take them a batch of ``_BATCH`` at a time.
    :meth:`items` groups them, once, for the summary.
    """

    __slots__ = ("_count", "_pairs", "_ports", "_values", "pair", "port", "values")

    def __init__(self) -> None:
        self.pair: array[int] = array("Q")
        self.port: array[int] = array("H")
        self.values: array[float] = array("d")
        # The latest values, as machine words in byte buffers: compiled, each
        # is a store (an array's append is a method looked up by name that
        # parses its argument, about 700 instructions; a list's takes an
        # object per value, and packing a batch of them for the arrays about
        # 700 instructions a value). The arrays take a batch as one copy.
        self._pairs = BytesWriter()
        self._ports = BytesWriter()
        self._values = BytesWriter()
        self._count: i64 = 0

    def __len__(self) -> int:
        return len(self.values) + self._count

    def __reduce__(self) -> tuple[Any, ...]:
        """For pickle (``--jobs`` workers send theirs back): the arrays, the batch in them."""
        self._flush()
        return (_events, (self.pair, self.port, self.values))

    def add(self, addrs: _Addresses, item: _Item, value: float) -> None:
        first, second, port = item
        pair: i64
        if second is None:
            pair = _ONE_WORD | addrs.id(first)
        else:
            pair = addrs.id(first) << 32 | addrs.id(second)
        write_i64_le(self._pairs, pair)
        ports = self._ports
        ports.append(u8(port & 0xFF))
        ports.append(u8(port >> 8))
        write_f64_le(self._values, value)
        self._count += 1
        if self._count >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._count:
            return
        _take(self.pair, self._pairs)
        _take(self.port, self._ports)
        _take(self.values, self._values)
        self._count = 0

    def extend(self, addrs: _Addresses, other: _Events, other_addrs: _Addresses) -> None:
        """Add ``other``'s values after these (item by item, each item's in its order)."""
        for item, values in other.items(other_addrs):
            for value in values:
                self.add(addrs, item, value)

    def items(self, addrs: _Addresses) -> Iterator[tuple[_Item, list[float]]]:
        """Each item with its values, in the order they were added."""
        self._flush()
        pair, port, values = self.pair, self.port, self.values
        order = sorted(range(len(values)), key=lambda i: pair[i] << 16 | port[i])
        names = addrs.names
        i, n = 0, len(order)
        while i < n:
            k = order[i]
            p, q = pair[k], port[k]
            vals = [values[k]]
            i += 1
            while i < n and pair[order[i]] == p and port[order[i]] == q:
                vals.append(values[order[i]])
                i += 1
            if p & _ONE:
                yield (names[p & _LOW], None, q), vals
            else:
                yield (names[p >> 32], names[p & _LOW], q), vals


@dataclass(slots=True)
class _Service:
    """CLOSE_WAIT figures of one service; its name and address are its key.

    The waits of its completed closes are in ``Aggregator.waits`` instead: a
    capture can hold a service per client address, most with one wait.
    """

    stuck: int = 0
    open: int = 0
    oldest_s: float = 0.0
    # Made when first needed.
    stuck_examples: _Examples | None = None


def _events(pair: array[int], port: array[int], values: array[float]) -> _Events:
    """An :class:`_Events` with these arrays (what pickle makes of one)."""
    e = _Events()
    e.pair = pair
    e.port = port
    e.values = values
    return e


def _take(a: array[Any], buf: BytesWriter) -> None:
    """Move the little-endian machine words of ``buf`` to the end of ``a``."""
    data = buf.getvalue()
    buf.truncate(0)
    if _BIG_ENDIAN:
        words = array(a.typecode)
        words.frombytes(data)
        words.byteswap()
        a.extend(words)
    else:
        a.frombytes(data)


def _who(key: _Item) -> dict[str, Any]:
    """The ``service``, ``role``, ``ip``, ``port`` and ``peer`` of a summary item."""
    name, role, ip, port, peer = _service_names(key)
    return {"service": name, "role": role, "ip": ip, "port": port, "peer": peer}


def _service_names(key: _Item) -> tuple[str, str, str, int | None, str | None]:
    """(name, role, ip, port, peer) of a service, as the module docstring says."""
    cip, sip, sport = key
    if sip is None:
        return f"{host(cip)}:{sport}", "server", cip, sport, None
    peer = f"{host(sip)}:{sport}"
    return f"{cip} (client of {peer})", "client", cip, None, peer


@dataclass(slots=True)
class _Waiter:
    count: int = 0
    longest_s: float = 0.0
    peers: Counter[str] = field(default_factory=Counter)
    examples: _Examples = field(default_factory=_Examples)


class _Resetter:
    """The resets one host sent (a plain class: compiled, a dataclass is made
    through its generated Python ``__init__``)."""

    __slots__ = ("examples", "lost_bytes", "lost_count", "phases", "role")

    def __init__(self, role: str) -> None:
        self.role = role
        self.phases: dict[str, int] = {}
        self.examples = _Examples()
        self.lost_count = 0
        self.lost_bytes = 0

    def __reduce__(self) -> tuple[Any, ...]:
        """For pickle (``--jobs`` workers send theirs back): compiled, a class is
        made through its ``__init__``, which needs the role."""
        fields = (self.role, self.phases, self.examples, self.lost_count, self.lost_bytes)
        return (_resetter, fields)


def _resetter(
    role: str, phases: dict[str, int], examples: _Examples, lost_count: int, lost_bytes: int
) -> _Resetter:
    """A :class:`_Resetter` with these fields (what pickle makes of one)."""
    r = _Resetter(role)
    r.phases = phases
    r.examples = examples
    r.lost_count = lost_count
    r.lost_bytes = lost_bytes
    return r


def percentile(sorted_values: list[float] | array[float], q: float) -> float:
    """Nearest-rank percentile of values already sorted: a value that was measured.

    The p-th percentile is the smallest value with at least p % of the values
    at or below it (so p95 of 20 values is the 19th, of 10 values the 10th).
    """
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def peak_overlap(starts: list[float] | array[float], length: float) -> tuple[int, float]:
    """Most intervals ``[s, s + length)`` open at once, and when that was first reached."""
    if not starts:
        return 0, 0.0
    ordered = sorted(starts)
    best, when, lo = 0, ordered[0], 0
    for hi, s in enumerate(ordered):
        # An interval that ends exactly when another starts no longer counts.
        while ordered[lo] + length <= s:
            lo += 1
        if hi - lo + 1 > best:
            best, when = hi - lo + 1, s
    return best, when


def host(ip: str) -> str:
    """An address as it reads in ``host:port`` (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


def _service_key(c: Connection, passive: Role) -> _Item:
    """The passive endpoint's service."""
    if passive is Role.SERVER:
        return (c.server.ip, None, c.server.port)
    return (c.client.ip, c.server.ip, c.server.port)


def _count(item: tuple[str, int]) -> int:
    return item[1]


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    """``Counter.update`` for plain dicts of counts: each count added, new keys last."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def _float_array() -> array[float]:
    return array("d")


class LazyList(Generic[R]):
    """A summary list kept as compact rows, its items made one at a time as read.

    For the lists that hold an item per client and service: a few tuples
    each instead of a dict each until the JSON document streams them.
    """

    __slots__ = ("_make", "_rows")

    def __init__(self, rows: list[R], make: Callable[[R], dict[str, Any]]) -> None:
        self._rows = rows
        self._make = make

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self._make, self._rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._make(self._rows[i])


class Aggregator:
    """Adds up finished connections; :meth:`summary` gives the result."""

    def __init__(self, options: AggregateOptions) -> None:
        self.options = options
        self.total = 0
        # Plain dicts, not Counters, for the counts made per connection: a
        # Counter defines __delitem__ in Python, so every item set on one goes
        # through a generic slot.
        self.close_types: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.tw_holders: dict[str, int] = {}
        # A module function, not a lambda: ``--jobs`` workers send it pickled.
        self.tw_by_host: defaultdict[str, array[float]] = defaultdict(_float_array)
        #: The addresses of the items of ``tw_by_triple`` and ``waits``.
        self.addrs = _Addresses()
        #: When each client's TIME_WAIT began, by (client, server, server port).
        self.tw_by_triple = _Events()
        #: CLOSE_WAIT connections by passive service.
        self.services: dict[_Item, _Service] = {}
        #: How long each completed close stayed in CLOSE_WAIT, by passive
        #: service; the slow ones' examples.
        self.waits = _Events()
        self.slowest: dict[_Item, _Examples] = {}
        self.fin_wait_2: Counter[str] = Counter()
        self.waiters: defaultdict[str, _Waiter] = defaultdict(_Waiter)
        #: Resets by sender role, then phase (plain dicts of counts: a Counter's
        #: item set goes through a generic slot, compiled).
        self.resets: dict[str, dict[str, int]] = {}
        self.resetters: dict[str, _Resetter] = {}
        self.reset_examples = _Examples()
        self.lost = _Examples()
        self.lost_bytes = 0
        self.reused = _Examples()
        self.reused_failed = 0
        self.reuse_gaps = array("d")
        self.attempts: defaultdict[str, _Examples] = defaultdict(_Examples)
        self.unacked_fin = _Examples()
        self.anomalies: Counter[str] = Counter()
        self.first_ts = math.inf
        self.last_ts = -math.inf

    def add(self, c: Connection) -> None:
        self.total += 1
        self.first_ts = min(self.first_ts, c.first_ts)
        self.last_ts = max(self.last_ts, c.last_ts)
        kind = c.close_type
        counts = self.close_types
        counts[kind] = counts.get(kind, 0) + 1
        active = c.active_closer or "none"
        self.active[active] = self.active.get(active, 0) + 1
        for a in c.anomalies:
            self.anomalies[a] += 1
        if c.time_wait is not None:
            self.tw_holders[c.time_wait] = self.tw_holders.get(c.time_wait, 0) + 1
            self._time_wait(c)
        if c.reused_tuple is not None and c.reused_tuple.gap_s < 2 * self.options.msl:
            self.reused.add(c.capture, c.stream)
            self.reuse_gaps.append(c.reused_tuple.gap_s)
            # The new connection never got going: what a SYN that meets the
            # old connection's TIME_WAIT on the other side tends to end in.
            if kind in (CloseType.REFUSED, CloseType.ATTEMPT) or (
                kind is CloseType.RESET and c.reset_phase == "handshake"
            ):
                self.reused_failed += 1
        if kind in (CloseType.RESET, CloseType.REFUSED) and c.reset_by is not None:
            self._reset(c)
        elif kind is CloseType.ATTEMPT:
            self.attempts[f"{host(c.server.ip)}:{c.server.port}"].add(c.capture, c.stream)
        elif kind is CloseType.UNACKED_FIN:
            self.unacked_fin.add(c.capture, c.stream)
        if c.close_wait_s is not None and c.active_closer in (Role.CLIENT, Role.SERVER):
            self._close_wait(c, c.close_wait_s)

    def _reset(self, c: Connection) -> None:
        kind = c.close_type
        phase = "refused" if kind is CloseType.REFUSED else (c.reset_phase or "unknown")
        sender_role = str(c.reset_by)
        counts = self.resets.get(sender_role)
        if counts is None:
            counts = self.resets[sender_role] = {}
        counts[phase] = counts.get(phase, 0) + 1
        self.reset_examples.add(c.capture, c.stream)
        sender = c.client if c.reset_by is Role.CLIENT else c.server
        r = self.resetters.get(sender.ip)
        if r is None:
            r = self.resetters[sender.ip] = _Resetter(sender_role)
        elif r.role != sender_role:
            r.role = "both"  # the host is a client in some connections, a server in others
        r.phases[phase] = r.phases.get(phase, 0) + 1
        r.examples.add(c.capture, c.stream, float(c.rst_lost_bytes))
        if c.rst_lost_bytes > 0:
            self.lost.add(c.capture, c.stream, float(c.rst_lost_bytes))
            self.lost_bytes += c.rst_lost_bytes
            r.lost_count += 1
            r.lost_bytes += c.rst_lost_bytes

    def _close_wait(self, c: Connection, wait: float) -> None:
        passive = Role.SERVER if c.active_closer is Role.CLIENT else Role.CLIENT
        key = _service_key(c, passive)
        if c.close_type is CloseType.CLOSE_WAIT:
            svc = self.services.get(key)
            if svc is None:
                svc = self.services[key] = _Service()
            closer = c.client if c.active_closer is Role.CLIENT else c.server
            self.fin_wait_2[closer.ip] += 1
            if wait >= self.options.stuck_after:
                w = self.waiters[closer.ip]
                w.count += 1
                w.longest_s = max(w.longest_s, wait)
                w.peers[_service_names(key)[0]] += 1
                w.examples.add(c.capture, c.stream, wait)
            if c.stuck:
                svc.stuck += 1
                if svc.stuck_examples is None:
                    svc.stuck_examples = _Examples()
                svc.stuck_examples.add(c.capture, c.stream, wait)
                svc.oldest_s = max(svc.oldest_s, wait)
            else:
                svc.open += 1
        elif c.close_type in _COMPLETED:
            self.waits.add(self.addrs, key, wait)
            if wait >= self.options.slow_after:
                slowest = self.slowest.get(key)
                if slowest is None:
                    slowest = self.slowest[key] = _Examples()
                slowest.add(c.capture, c.stream, wait)

    def _time_wait(self, c: Connection) -> None:
        client_start: float | None = None
        for t in c.transitions:
            if t.state is State.TIME_WAIT:
                holder = c.client if t.side is Role.CLIENT else c.server
                self.tw_by_host[holder.ip].append(t.ts)
                if t.side is Role.CLIENT and client_start is None:
                    client_start = t.ts
        # Only the client's TIME_WAIT ties up one of its ephemeral ports: a
        # server's TIME_WAIT costs the client nothing when it connects.
        if client_start is not None:
            item = (c.client.ip, c.server.ip, c.server.port)
            self.tw_by_triple.add(self.addrs, item, client_start)

    def summary(self, *, lazy: bool = False) -> dict[str, Any]:
        """The summary; with ``lazy``, the two lists that hold an item per client
        and service (``time_wait.by_tuple``, ``close_wait.by_service``) are
        :class:`LazyList`, whose items are made as they are read (for the JSON
        document, which streams them, and the table, which reads the first)."""
        total = self.total
        return {
            "connections": total,
            "first_ts": self.first_ts if total else None,
            "last_ts": self.last_ts if total else None,
            "close_types": {
                k.value: {
                    "count": self.close_types.get(k, 0),
                    "share": (self.close_types.get(k, 0) / total) if total else 0.0,
                }
                for k in CloseType
            },
            "active_closer": {
                r: self.active.get(r, 0) for r in ("client", "server", "both", "none")
            },
            "time_wait": self._time_wait_summary(lazy),
            "close_wait": self._close_wait_summary(lazy),
            "resets": self._reset_summary(),
            "attempts": {
                "count": sum(e.total for e in self.attempts.values()),
                "by_service": sorted(
                    (
                        {"service": name, "count": e.total, "streams": e.as_dict()}
                        for name, e in self.attempts.items()
                    ),
                    key=lambda d: (-d["count"], d["service"]),
                ),
            },
            "unacked_fin": {
                "count": self.unacked_fin.total,
                "streams": self.unacked_fin.as_dict(),
            },
            "anomalies": dict(self.anomalies.most_common()),
        }

    def _time_wait_summary(self, lazy: bool) -> dict[str, Any]:
        o = self.options
        window = 2 * o.msl
        by_host: list[dict[str, Any]] = []
        for ip, starts in self.tw_by_host.items():
            peak, when = peak_overlap(starts, window)
            by_host.append({"host": ip, "connections": len(starts), "peak": peak, "peak_ts": when})
        by_host.sort(key=lambda d: (-d["peak"], -d["connections"], d["host"]))
        # Sorted as compact tuples, highest peak first; a dict each only when read.
        rows: list[tuple[int, str, str | None, int, float]] = []
        for (cip, sip, sport), held in self.tw_by_triple.items(self.addrs):
            peak, when = peak_overlap(held, window)
            rows.append((-peak, cip, sip, sport, when))
        rows.sort()
        ports = o.ephemeral_ports

        def triple(r: tuple[int, str, str | None, int, float]) -> dict[str, Any]:
            return {
                "client_ip": r[1],
                "server_ip": r[2],
                "server_port": r[3],
                "peak": -r[0],
                "peak_ts": r[4],
                "share_of_ephemeral": -r[0] / ports,
            }

        triples = LazyList(rows, triple)
        return {
            "holders": {r: self.tw_holders.get(r, 0) for r in ("client", "server", "both")},
            "msl_s": o.msl,
            "window_s": window,
            "ephemeral_ports": o.ephemeral_ports,
            "by_host": by_host,
            "by_tuple": triples if lazy else list(triples),
            "reused_within_2msl": {
                "count": self.reused.total,
                "min_gap_s": min(self.reuse_gaps) if self.reuse_gaps else None,
                "failed": self.reused_failed,
                "streams": self.reused.as_dict(),
            },
        }

    def _close_wait_summary(self, lazy: bool) -> dict[str, Any]:
        o = self.options
        stuck: list[dict[str, Any]] = []
        rows: list[tuple[float, float, str, _Item, int, float]] = []
        for key, svc in self.services.items():
            if svc.stuck and svc.stuck_examples is not None:
                stuck.append(
                    _who(key)
                    | {
                        "count": svc.stuck,
                        "open": svc.open,
                        "oldest_s": svc.oldest_s,
                        "streams": svc.stuck_examples.as_dict(),
                    }
                )
        for key, w in self.waits.items(self.addrs):
            w.sort()
            name = _service_names(key)[0]
            rows.append((-percentile(w, 95), -w[-1], name, key, len(w), percentile(w, 50)))
        # Slowest first, as compact tuples; a dict each only when read.
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        slowest_of = self.slowest

        def service(r: tuple[float, float, str, _Item, int, float]) -> dict[str, Any]:
            slowest = slowest_of.get(r[3])
            return _who(r[3]) | {
                "count": r[4],
                "p50_s": r[5],
                "p95_s": -r[0],
                "max_s": -r[1],
                "slow": 0 if slowest is None else slowest.total,
                "slow_streams": {} if slowest is None else slowest.as_dict(),
            }

        spread = LazyList(rows, service)
        stuck.sort(key=lambda d: (-d["count"], -d["oldest_s"], d["service"]))
        waits: list[dict[str, Any]] = [
            {
                "host": ip,
                "count": w.count,
                "longest_s": w.longest_s,
                "peers": dict(w.peers.most_common()),
                "streams": w.examples.as_dict(),
            }
            for ip, w in self.waiters.items()
        ]
        waits.sort(key=lambda d: (-d["count"], -d["longest_s"], d["host"]))
        return {
            "stuck_after_s": o.stuck_after,
            "slow_after_s": o.slow_after,
            "stuck_by_service": stuck,
            "by_service": spread if lazy else list(spread),
            "fin_wait_2_by_host": dict(self.fin_wait_2.most_common()),
            "fin_wait_2": waits,
        }

    def _reset_summary(self) -> dict[str, Any]:
        by_host: list[dict[str, Any]] = [
            {
                "host": ip,
                "role": r.role,
                "count": sum(r.phases.values()),
                # Highest count first, ties in first-seen order (Counter.most_common).
                "phases": dict(sorted(r.phases.items(), key=_count, reverse=True)),
                "streams": r.examples.as_dict(),
            }
            for ip, r in self.resetters.items()
        ]
        by_host.sort(key=lambda d: (-d["count"], d["host"]))
        lost_by_host: list[dict[str, Any]] = [
            {"host": ip, "count": r.lost_count, "bytes": r.lost_bytes}
            for ip, r in self.resetters.items()
            if r.lost_count
        ]
        lost_by_host.sort(key=lambda d: (-d["bytes"], d["host"]))
        return {
            "total": self.reset_examples.total,
            "by_sender": {who: dict(phases) for who, phases in sorted(self.resets.items())},
            "by_host": by_host,
            "streams": self.reset_examples.as_dict(),
            "lost_data": {
                "count": self.lost.total,
                "bytes": self.lost_bytes,
                "streams": self.lost.as_dict(),
                "by_host": lost_by_host,
            },
        }

    def __reduce__(self) -> tuple[Any, ...]:
        """For pickle (``--jobs`` workers send theirs back): built from its options, then its state.

        Compiled (mypyc), a class is made through its ``__init__``, which needs the options.
        """
        return (Aggregator, (self.options,), self.__getstate__())

    def merge(self, other: Aggregator) -> None:
        """Add up ``other``'s connections as if they had come after this one's.

        ``analyze --separate --jobs N`` adds up each file in its own process
        and merges the aggregators in file order: the summary is then exactly
        the one of a single aggregator that saw every connection in that order
        (counters keep their first-seen order, which ``most_common`` ties
        follow; examples rank as the sequence numbers of one run would).
        Every field of :meth:`__init__` must be merged here:
        ``tests/test_jobs.py`` compares the summaries on every capture.
        """
        self.total += other.total
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)
        _add_counts(self.close_types, other.close_types)
        _add_counts(self.active, other.active)
        self.anomalies.update(other.anomalies)
        _add_counts(self.tw_holders, other.tw_holders)
        for ip, starts in other.tw_by_host.items():
            self.tw_by_host[ip].extend(starts)
        self.tw_by_triple.extend(self.addrs, other.tw_by_triple, other.addrs)
        self._merge_examples(self.reused, other.reused)
        self.reused_failed += other.reused_failed
        self.reuse_gaps.extend(other.reuse_gaps)
        for role, phases in other.resets.items():
            _add_counts(self.resets.setdefault(role, {}), phases)
        self._merge_examples(self.reset_examples, other.reset_examples)
        for ip, r in other.resetters.items():
            mine = self.resetters.get(ip)
            if mine is None:
                mine = self.resetters[ip] = _Resetter(r.role)
            elif mine.role != r.role:
                mine.role = "both"
            _add_counts(mine.phases, r.phases)
            self._merge_examples(mine.examples, r.examples)
            mine.lost_count += r.lost_count
            mine.lost_bytes += r.lost_bytes
        self._merge_examples(self.lost, other.lost)
        self.lost_bytes += other.lost_bytes
        for service, attempts in other.attempts.items():
            self._merge_examples(self.attempts[service], attempts)
        self._merge_examples(self.unacked_fin, other.unacked_fin)
        self._merge_close_wait(other)

    def _merge_close_wait(self, other: Aggregator) -> None:
        for key, svc in other.services.items():
            mine = self.services.get(key)
            if mine is None:
                mine = self.services[key] = _Service()
            mine.stuck += svc.stuck
            mine.open += svc.open
            mine.oldest_s = max(mine.oldest_s, svc.oldest_s)
            if svc.stuck_examples is not None:
                if mine.stuck_examples is None:
                    mine.stuck_examples = _Examples()
                self._merge_examples(mine.stuck_examples, svc.stuck_examples)
        self.waits.extend(self.addrs, other.waits, other.addrs)
        for key, slow in other.slowest.items():
            slowest = self.slowest.get(key)
            if slowest is None:
                slowest = self.slowest[key] = _Examples()
            self._merge_examples(slowest, slow)
        self.fin_wait_2.update(other.fin_wait_2)
        for ip, w in other.waiters.items():
            waiter = self.waiters[ip]
            waiter.count += w.count
            waiter.longest_s = max(waiter.longest_s, w.longest_s)
            waiter.peers.update(w.peers)
            self._merge_examples(waiter.examples, w.examples)

    @staticmethod
    def _merge_examples(mine: _Examples, other: _Examples) -> None:
        """``other``'s examples ranked as if added after ``mine``'s.

        An example's rank breaks score ties by its sequence number: ``other``'s
        follow ``mine``'s, so they are shifted by how many ``mine`` has seen.
        The best of both kept sets are the best of all: each kept its best.
        """
        shift = mine._n
        items = mine._heap + [(s, n - shift, cap, stream) for s, n, cap, stream in other._heap]
        heap = heapq.nlargest(MAX_EXAMPLES, items)
        heapq.heapify(heap)
        mine._heap = heap
        mine._n += other._n
        mine.total += other.total
