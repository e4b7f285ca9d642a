"""The connection table: one entry per Wireshark ``tcp.stream``.

Each connection is filed twice, under the flow key of each direction, so one
dictionary lookup per segment finds the side that sent it. Plain data
segments of an established connection take the fast path in
:meth:`FlowTable.segment` and only move counters; every other segment goes
to :meth:`~fintrace.tracker.Tracker.segment`.

Streams are numbered exactly as Wireshark 4.0 (``packet-tcp.c``) numbers
``tcp.stream``, checked against tshark by the test suite:

* a new stream starts at a packet whose 4-tuple has none yet (an ICMP error
  quoting a TCP header counts, as in Wireshark);
* a SYN without ACK starts a new stream on a 4-tuple when its sequence
  number differs from the *base sequence number* of its direction. The base
  is set by the first segment of that direction (its sequence number for a
  SYN, minus one otherwise) or, before that, by the ACK number minus one of a
  segment from the other direction carrying ACK. Segments quoted in ICMP
  errors and malformed headers set no base;
* with ``numbering="wireshark-4.4"`` (checked against tshark 4.4.18; what
  ``../shared/TEARDOWN.md`` states) a SYN+ACK also starts a new stream when
  its sequence number differs from its direction's base, and any SYN or
  SYN+ACK starts one after a FIN (not a SYN+FIN) or a RST was seen on the
  stream, quoted in an ICMP error or not.

Finished connections leave the table: a connection superseded by a new
stream on its 4-tuple at once, a closed or reset one when ``linger`` seconds
of packet time pass without a packet on it, so memory follows the
connections open at once. Open connections stay until the capture ends;
those idle for :data:`FREEZE_AFTER` seconds are kept as bytes meanwhile, in
:attr:`FlowTable.frozen`.

A connection that left after ``linger`` leaves a :class:`Tombstone` behind
for ``remember`` seconds more (by default 2×MSL, the TIME_WAIT span): a few
numbers instead of the whole tracker. It keeps stream numbering exact (a
late segment still belongs to the old stream, a SYN may start a new one) and
lets a new connection on the 4-tuple say which one it reuses. A segment that
reaches a tombstone is counted in :attr:`FlowTable.late`, per file, since
the verdict it might have changed was already given.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Final

from librt.strings import (
    BytesWriter,
    read_i16_le,
    read_i32_le,
    read_i64_le,
    write_i16_le,
    write_i32_le,
    write_i64_le,
)
from mypy_extensions import mypyc_attr

from fintrace.decode import ACK, COUNT_ONLY, FIN, RST, SYN, Segment, SegmentSink
from fintrace.tracker import HALF, M32, Half, Tracker, freeze, release, thaw

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Flags that keep a segment off the fast path: anything but a plain ACK.
_FAST_MASK: Final = COUNT_ONLY | SYN | FIN | RST | ACK
#: How often, in packet-time seconds, lingering connections are looked at.
_EXPIRY_EVERY: Final = 1.0
#: Open connections idle this long (packet time) are frozen to bytes; so often
#: the table looks for them.
FREEZE_AFTER: Final = 30.0

#: Stream numbering rules, by the Wireshark release they were checked against.
NUMBERINGS = ("wireshark-4.4", "wireshark-4.0")


def reverse_key(key: bytes) -> bytes:
    """The flow key of the opposite direction.

    The addresses and the ports swapped, copied as machine words into one
    buffer (compiled: loads and stores, one bytes object made, where slices
    and their concatenations made seven).
    """
    w = BytesWriter()
    if len(key) == 12:
        write_i32_le(w, read_i32_le(key, 4))
        write_i32_le(w, read_i32_le(key, 0))
        write_i16_le(w, read_i16_le(key, 10))
        write_i16_le(w, read_i16_le(key, 8))
    else:
        write_i64_le(w, read_i64_le(key, 16))
        write_i64_le(w, read_i64_le(key, 24))
        write_i64_le(w, read_i64_le(key, 0))
        write_i64_le(w, read_i64_le(key, 8))
        write_i16_le(w, read_i16_le(key, 34))
        write_i16_le(w, read_i16_le(key, 32))
    return w.getvalue()


@mypyc_attr(acyclic=True)
class Tombstone:
    """What is left of a finished connection while its 4-tuple is remembered.

    Keys, numbers and a name: *acyclic*, outside the cycle collector.
    """

    __slots__ = ("base_a", "base_b", "capture", "closing", "key_a", "key_b", "last_ts", "stream")

    def __init__(self, conn: Tracker) -> None:
        self.stream = conn.stream
        self.capture = conn.last_capture()
        self.key_a = conn.a.key
        self.key_b = conn.b.key
        self.base_a = conn.a.ws_base
        self.base_b = conn.b.ws_base
        self.closing = conn.ws_closing
        self.last_ts = conn.last_ts


#: Before a frozen connection's :func:`~fintrace.tracker.freeze` bytes: its file
#: index and stream, big-endian so that the bytes sort in that order (the end
#: of the capture puts them in order without thawing them or making a key for
#: each), and whether side a sent from the lower of the two flow keys, the one
#: it is filed under.
_FROZEN_HEAD: Final = struct.Struct(">IIB")


class FlowTable(SegmentSink):
    """Connections by flow key, numbered as Wireshark numbers them."""

    def __init__(
        self,
        *,
        linger: float = 60.0,
        remember: float = 0.0,
        numbering: str = "wireshark-4.4",
        trace: frozenset[int] | None = None,
        freeze_after: float = FREEZE_AFTER,
    ) -> None:
        if numbering not in NUMBERINGS:
            raise ValueError(f"unknown numbering {numbering!r}")
        self.linger = linger
        #: Seconds after its last packet a finished 4-tuple is remembered.
        self.remember = max(remember, linger)
        self.numbering_44 = numbering == "wireshark-4.4"
        self.table: dict[bytes, Half] = {}
        #: What is left of finished connections, filed once, under the lower of
        #: their two flow keys: looked up only when :attr:`table` has nothing,
        #: which keeps that one small.
        self.tombstones: dict[bytes, Tombstone] = {}
        #: Idle open connections as bytes, filed once, under the lower of their
        #: two flow keys: a segment finds one only when it misses :attr:`table`.
        self.frozen: dict[bytes, bytes] = {}
        #: Ended connections in the order they are due to leave (``linger_due``).
        self._lingering: deque[Tracker] = deque()
        self._tombs: deque[tuple[float, Tombstone]] = deque()
        self._next_freeze = 0.0
        #: Seconds of packet time an open connection stays idle before it is frozen.
        self.freeze_after = freeze_after
        #: Connections frozen and thawed so far.
        self.freezes = 0
        self.thaws = 0
        #: Connections :meth:`segment` finished, each with :attr:`now` when it
        #: did (the time its verdict is given at), for the caller to take.
        self.finished: list[tuple[Tracker, float]] = []
        #: Segments that reached a tombstone, per file index.
        self.late: dict[int, int] = {}
        self._next_check = 0.0
        self.capture = 0
        self.next_stream = 0
        #: Streams (of the first file) whose every segment is recorded, for
        #: ``fintrace show``; recording turns the fast path off for them, and they
        #: stay to the end of the capture (never frozen, never lingered out).
        self._trace = trace
        self.now = 0.0

    # -- files ------------------------------------------------------------------

    def begin_file(self, capture: int) -> None:
        """Packets from here on come from file number ``capture`` of the run.

        Wireshark numbers streams per file, so the numbering restarts, and
        connections carried over from the previous file get a number in this
        one at their first packet here (the slow path does that).
        """
        if capture == self.capture:
            return
        self.capture = capture
        self.next_stream = 0
        for h in self.table.values():
            h.conn.quiet = False

    # -- the hot loop -------------------------------------------------------------

    def segment(
        self,
        frame: int,
        ts: float,
        key: bytes,
        seq: int,
        ack: int,
        flags: int,
        plen: int,
        win: int,
        wscale: int,
    ) -> None:
        """Feed one segment; connections it finishes go to :attr:`finished`."""
        h = self.table.get(key)
        if h is not None and flags & _FAST_MASK == ACK:
            c = h.conn
            if c.quiet:
                c.packets += 1
                c.last_frame = frame
                c.last_ts = ts
                h.packets += 1
                h.last_ts = ts
                h.win = win
                if (ack - h.acked) & M32 < HALF:
                    h.acked = ack
                if plen:
                    end = (seq + plen) & M32
                    d = (end - h.nxt) & M32
                    if d and d < HALF:
                        h.bytes += d if d < plen else plen
                        h.nxt = end
                return
        done = self._slow(h, frame, ts, key, seq, ack, flags, plen, win, wscale)
        if done:
            now = self.now
            for conn in done:
                self.finished.append((conn, now))

    def take_finished(self) -> list[tuple[Tracker, float]]:
        """:attr:`finished`, which starts again empty."""
        done = self.finished
        self.finished = []
        return done

    def consume(self, segments: Iterable[Segment]) -> Iterator[Tracker]:
        """Feed segments; yield connections as they finish."""
        for frame, ts, key, seq, ack, flags, plen, win, wscale in segments:
            self.segment(frame, ts, key, seq, ack, flags, plen, win, wscale)
            if self.finished:
                for conn, _now in self.take_finished():
                    yield conn

    def _slow(
        self,
        h: Half | None,
        frame: int,
        ts: float,
        key: bytes,
        seq: int,
        ack: int,
        flags: int,
        plen: int,
        win: int,
        wscale: int,
    ) -> list[Tracker] | None:
        done: list[Tracker] | None = None
        self.now = max(self.now, ts)
        if ts >= self._next_check:
            # Before this segment: it may come after its connection's linger.
            self._next_check = ts + _EXPIRY_EVERY
            done = self._expire(ts)
            if done:
                h = self.table.get(key)
            if ts >= self._next_freeze:
                self._next_freeze = ts + self.freeze_after
                self._freeze_idle(ts)
                h = self.table.get(key)
        tomb = None
        rkey = b""
        if h is None:
            rkey = reverse_key(key)
            tomb = self.tombstones.get(key if key < rkey else rkey)
            if tomb is None and self.frozen:
                h = self._thaw(key, rkey)
        if tomb is not None:
            reuse = None
            if tomb.capture == self.capture:
                if not (flags & SYN and self._tomb_starts_new_stream(tomb, key, seq, flags)):
                    # Late: part of the finished stream, whose verdict is given.
                    tomb.last_ts = ts
                    self.late[self.capture] = self.late.get(self.capture, 0) + 1
                    return done
                reuse = (tomb.stream, ts - tomb.last_ts)
            # Else opened on its own, this file numbers the segment as a new stream.
            self._bury(tomb)
            h = self._new(key, tomb.key_b if key == tomb.key_a else tomb.key_a, frame, ts, reuse)
        elif h is not None:
            conn = h.conn
            if flags & SYN and self._starts_new_stream(h, seq, flags):
                done = (done or []) + [self._remove(conn)]
                h = self._new(key, h.peer.key, frame, ts, (conn.stream, ts - conn.last_ts))
            elif conn.capture != self.capture and conn.last_capture() != self.capture:
                conn.open_span(self.capture, self._number(), frame)
        else:
            h = self._new(key, rkey, frame, ts, None)
        if not flags & COUNT_ONLY:
            if h.ws_base < 0:
                h.ws_base = seq if flags & SYN else (seq - 1) & M32
            if flags & ACK and h.peer.ws_base < 0:
                h.peer.ws_base = (ack - 1) & M32
        conn = h.conn
        if flags & RST or flags & (FIN | SYN) == FIN:
            conn.ws_closing = True
        was_terminal = conn.terminal
        conn.segment(h, frame, ts, seq, ack, flags, plen, win, wscale)
        if conn.terminal and not was_terminal:
            self._linger(conn)
        return done

    def _linger(self, conn: Tracker) -> None:
        """An ended connection waits ``linger`` seconds after its last packet."""
        conn.linger_due = conn.last_ts + self.linger
        self._lingering.append(conn)

    def _tomb_starts_new_stream(self, tomb: Tombstone, key: bytes, seq: int, flags: int) -> bool:
        """:meth:`_starts_new_stream` for a SYN on a remembered 4-tuple."""
        base = tomb.base_a if key == tomb.key_a else tomb.base_b
        return self._syn_starts_stream(base, tomb.closing, seq, flags)

    def _starts_new_stream(self, h: Half, seq: int, flags: int) -> bool:
        """Whether a segment with SYN set begins a new stream."""
        return self._syn_starts_stream(h.ws_base, h.conn.ws_closing, seq, flags)

    def _syn_starts_stream(self, base: int, closing: bool, seq: int, flags: int) -> bool:
        """Wireshark's rule, from the direction's base sequence number and the FIN/RST bit."""
        if self.numbering_44:
            return closing or (base >= 0 and seq != base)
        return not flags & ACK and base >= 0 and seq != base

    def _number(self) -> int:
        n = self.next_stream
        self.next_stream = n + 1
        return n

    def _new(
        self, key: bytes, rkey: bytes, frame: int, ts: float, reuse: tuple[int, float] | None
    ) -> Half:
        """A new connection, its first segment sent from ``key`` (``rkey`` the reverse)."""
        conn = Tracker(self._number(), self.capture, key, rkey, frame, ts)
        conn.reuse = reuse
        if self._trace is not None and conn.stream in self._trace and self.capture == 0:
            conn.trace = []
        self.table[key] = conn.a
        self.table[rkey] = conn.b
        conn.filed = True
        return conn.a

    def _remove(self, conn: Tracker) -> Tracker:
        # Each side written out: compiled, a loop over the pair iterates a tuple.
        table = self.table
        a, b = conn.a, conn.b
        if table.get(a.key) is a:
            del table[a.key]
        if table.get(b.key) is b:
            del table[b.key]
        conn.filed = False
        return conn

    def _filed(self) -> list[Tracker]:
        """The connections in the table, each once, in the order filed: by side b,
        filed with side a and the only one filed of a connection from an address
        and port to themselves (one flow key)."""
        return [c for h in self.table.values() if h is (c := h.conn).b]

    def _freeze_idle(self, now: float) -> None:
        """Open connections with no packet for :attr:`freeze_after` s become bytes."""
        limit = now - self.freeze_after
        # Each connection once, by side b, as :meth:`_filed` lists them. A side
        # b that sent a packet since ``limit`` rules its connection out before
        # the tracker (most of the table, long out of the caches) is read: a
        # side's last packet is its connection's or an earlier one (unless
        # the capture's timestamps go backwards; then a connection is only
        # frozen later, which changes no verdict: thawed, it is the same).
        idle = [
            c
            for h in self.table.values()
            if h.last_ts <= limit
            and h is (c := h.conn).b
            and c.last_ts <= limit
            and not c.terminal
            and c.trace is None
        ]
        frozen = self.frozen
        head = _FROZEN_HEAD.pack
        for conn in idle:
            self._remove(conn)
            key_a = conn.a.key
            key_b = conn.b.key
            lower_a = key_a < key_b
            blob = head(conn.capture, conn.stream, lower_a) + freeze(conn)
            frozen[key_a if lower_a else key_b] = blob
            release(conn)  # the collector is paused
        self.freezes += len(idle)

    def _thaw(self, key: bytes, rkey: bytes) -> Half | None:
        """The side sending from ``key`` of its frozen connection, thawed; None without one."""
        # Filed under the lower of its two flow keys.
        lower, upper = (key, rkey) if key < rkey else (rkey, key)
        blob = self.frozen.pop(lower, None)
        if blob is None:
            return None
        conn = self._thaw_filed(lower, upper, blob)
        self.table[conn.a.key] = conn.a
        self.table[conn.b.key] = conn.b
        conn.filed = True
        if conn.terminal:
            self._linger(conn)
        return conn.a if key == conn.a.key else conn.b

    def _bury(self, tomb: Tombstone) -> None:
        key_a, key_b = tomb.key_a, tomb.key_b
        lower = key_a if key_a < key_b else key_b
        tombstones = self.tombstones
        if tombstones.get(lower) is tomb:
            del tombstones[lower]

    def _expire(self, now: float) -> list[Tracker] | None:
        """Connections that ended and saw no packet for ``linger`` seconds."""
        tombs = self._tombs
        out: list[Tracker] | None = None
        q = self._lingering
        linger = self.linger
        while q and q[0].linger_due <= now:
            conn = q.popleft()
            if not conn.filed:
                continue  # superseded by a new stream meanwhile
            if conn.trace is not None:
                continue  # drawn by ``show``: every late segment too, so kept to the end
            due = conn.last_ts + linger
            if due > now:
                conn.linger_due = due  # packets came after its end; look again later
                q.append(conn)
                continue
            if out is None:
                out = []
            out.append(self._remove(conn))
            due = conn.last_ts + self.remember
            if due > now:
                tomb = Tombstone(conn)
                key_a, key_b = tomb.key_a, tomb.key_b
                self.tombstones[key_a if key_a < key_b else key_b] = tomb
                tombs.append((due, tomb))
        while tombs and tombs[0][0] <= now:
            _, tomb = tombs.popleft()
            due = tomb.last_ts + self.remember
            if due > now:
                tombs.append((due, tomb))
            else:
                self._bury(tomb)
        return out

    def finish(self) -> list[Tracker]:
        """The capture ended: every connection still in the table, in stream order."""
        return list(self.drain())

    def drain(self) -> Iterator[Tracker]:
        """:meth:`finish` one connection at a time: frozen ones thaw as they come."""
        live = sorted(self._filed(), key=lambda c: (c.capture, c.stream))
        frozen = self.frozen
        # Sorted by their bytes, which begin with file and stream (unique): one
        # list of the keys, nothing made per connection (there may be 100,000s).
        keys = sorted(frozen, key=frozen.__getitem__)
        self.frozen = {}
        self._lingering.clear()
        self._tombs.clear()
        self.table.clear()
        self.tombstones.clear()
        # Both popped from the end: each connection leaves its list as it is given out.
        live.reverse()
        keys.reverse()
        order = _FROZEN_HEAD.unpack_from
        while live or keys:
            if keys:
                capture, stream, _ = order(frozen[keys[-1]])
                if not live or (capture, stream) < (live[-1].capture, live[-1].stream):
                    lower = keys.pop()
                    yield self._thaw_filed(lower, reverse_key(lower), frozen.pop(lower))
                    continue
            yield live.pop()

    def _thaw_filed(self, lower: bytes, upper: bytes, blob: bytes) -> Tracker:
        """The tracker of a frozen connection filed under ``lower``."""
        self.thaws += 1
        lower_a = blob[_FROZEN_HEAD.size - 1]
        if lower_a:
            return thaw(blob, lower, upper, _FROZEN_HEAD.size)
        return thaw(blob, upper, lower, _FROZEN_HEAD.size)
