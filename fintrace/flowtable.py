"""The connection table: one entry per Wireshark ``tcp.stream``.

Each connection is filed twice, under the flow key of each direction, so one
dictionary lookup per segment finds the side that sent it. Plain data
segments of an established connection take the fast path in
:meth:`FlowTable.consume` and only move counters; every other segment goes
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
of packet time pass without a packet on it (by default 2×MSL, the TIME_WAIT
span), so memory follows the connections open at once. Open connections
stay until the capture ends.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from fintrace.decode import ACK, COUNT_ONLY, FIN, RST, SYN, Segment
from fintrace.tracker import HALF, M32, Half, Tracker

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Flags that keep a segment off the fast path: anything but a plain ACK.
_FAST_MASK = COUNT_ONLY | SYN | FIN | RST | ACK
#: How often, in packet-time seconds, lingering connections are looked at.
_EXPIRY_EVERY = 1.0

#: Stream numbering rules, by the Wireshark release they were checked against.
NUMBERINGS = ("wireshark-4.4", "wireshark-4.0")


def reverse_key(key: bytes) -> bytes:
    """The flow key of the opposite direction."""
    if len(key) == 12:
        return key[4:8] + key[0:4] + key[10:12] + key[8:10]
    return key[16:32] + key[0:16] + key[34:36] + key[32:34]


class FlowTable:
    """Connections by flow key, numbered as Wireshark numbers them."""

    def __init__(
        self,
        *,
        linger: float = 60.0,
        numbering: str = "wireshark-4.4",
        trace: frozenset[int] | None = None,
    ) -> None:
        if numbering not in NUMBERINGS:
            raise ValueError(f"unknown numbering {numbering!r}")
        self.linger = linger
        self.numbering_44 = numbering == "wireshark-4.4"
        self.table: dict[bytes, Half] = {}
        #: Live connections in order of creation (a dict used as an ordered set).
        self.live: dict[Tracker, None] = {}
        self._lingering: deque[tuple[float, Tracker]] = deque()
        self._next_check = 0.0
        self.capture = 0
        self.next_stream = 0
        #: Streams (of the first file) whose every segment is recorded, for
        #: ``fintrace show``; recording turns the fast path off for them.
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
        for conn in self.live:
            conn.quiet = False

    # -- the hot loop -------------------------------------------------------------

    def consume(self, segments: Iterable[Segment]) -> Iterator[Tracker]:
        """Feed segments; yield connections as they finish."""
        get = self.table.get
        slow = self._slow
        for frame, ts, key, seq, ack, flags, plen, win, wscale in segments:
            h = get(key)
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
                    continue
            done = slow(h, frame, ts, key, seq, ack, flags, plen, win, wscale)
            if done:
                yield from done

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
        if h is not None:
            conn = h.conn
            if flags & SYN and self._starts_new_stream(h, seq, flags):
                done = [self._remove(conn)]
                h = self._new(key, frame, ts, previous=conn)
            elif conn.capture != self.capture and conn.file_spans[-1][0] != self.capture:
                conn.open_span(self.capture, self._number(), frame)
        else:
            h = self._new(key, frame, ts, previous=None)
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
            self._lingering.append((conn.last_ts + self.linger, conn))
        if ts >= self._next_check:
            self._next_check = ts + _EXPIRY_EVERY
            expired = self._expire(ts)
            if expired:
                done = (done or []) + expired
        return done

    def _starts_new_stream(self, h: Half, seq: int, flags: int) -> bool:
        """Whether a segment with SYN set begins a new stream (Wireshark's rules)."""
        if self.numbering_44:
            return h.conn.ws_closing or (h.ws_base >= 0 and seq != h.ws_base)
        return not flags & ACK and h.ws_base >= 0 and seq != h.ws_base

    def _number(self) -> int:
        n = self.next_stream
        self.next_stream = n + 1
        return n

    def _new(self, key: bytes, frame: int, ts: float, previous: Tracker | None) -> Half:
        rkey = reverse_key(key)
        conn = Tracker(self._number(), self.capture, key, rkey, frame, ts)
        if previous is not None:
            conn.reuse = (previous.stream, ts - previous.last_ts)
        if self._trace is not None and conn.stream in self._trace and self.capture == 0:
            conn.trace = []
        self.table[key] = conn.a
        self.table[rkey] = conn.b
        self.live[conn] = None
        return conn.a

    def _remove(self, conn: Tracker) -> Tracker:
        table = self.table
        for half in (conn.a, conn.b):
            if table.get(half.key) is half:
                del table[half.key]
        self.live.pop(conn, None)
        return conn

    def _expire(self, now: float) -> list[Tracker] | None:
        """Connections that ended and saw no packet for ``linger`` seconds."""
        out: list[Tracker] | None = None
        q = self._lingering
        linger = self.linger
        live = self.live
        while q and q[0][0] <= now:
            _, conn = q.popleft()
            if conn not in live:
                continue  # superseded by a new stream meanwhile
            due = conn.last_ts + linger
            if due > now:
                q.append((due, conn))  # packets came after its end; look again later
                continue
            if out is None:
                out = []
            out.append(self._remove(conn))
        return out

    def finish(self) -> list[Tracker]:
        """The capture ended: every connection still in the table, in stream order."""
        rest = list(self.live)
        for conn in rest:
            self._remove(conn)
        self._lingering.clear()
        rest.sort(key=lambda c: (c.capture, c.stream))
        return rest
