"""Per-connection mechanics: the two sides' RFC 9293 states and what moved them.

The tracker records; it does not judge. For every segment that is not a
plain data segment of an established connection (those only move counters,
on the flow table's fast path), :meth:`Tracker.segment` applies the
transitions of ``../shared/TEARDOWN.md``:

* a side that sends its FIN: ESTABLISHED → FIN_WAIT_1, CLOSE_WAIT → LAST_ACK;
* a side that acknowledges the peer's FIN (ACK number ≥ FIN seq + 1, in
  32-bit sequence space): ESTABLISHED → CLOSE_WAIT, FIN_WAIT_1 → CLOSING,
  FIN_WAIT_2 → TIME_WAIT; and the FIN's sender FIN_WAIT_1 → FIN_WAIT_2,
  CLOSING → TIME_WAIT, LAST_ACK → CLOSED;
* a RST moves both sides to RESET and never acknowledges a FIN, if the
  receiver would accept it: answering a SYN it must acknowledge it (RFC 9293
  3.10.7.3), otherwise lie within a window of the receiver's last ACK.

Within one segment the acknowledgement is applied before the FIN, and each
side's own transition before its peer's. An ACK captured before the FIN it
covers is applied when the FIN appears. Every transition is kept with its
frame and timestamp. :mod:`fintrace.classify` decides the close type from
what is recorded here, once, at the end; ``docs/taxonomy.md`` explains both.
"""

from __future__ import annotations

import operator
import struct
from typing import Any, Final

from fintrace.decode import ACK, BOGUS_HEADER, COUNT_ONLY, FIN, QUOTED, RST, SYN
from fintrace.model import Anomaly, State

M32: Final = 0xFFFFFFFF
HALF: Final = 0x80000000
#: The largest window a peer can advertise (65535 << 14): the bound used to
#: judge a RST or FIN whose window is not known.
MAX_WINDOW: Final = 65535 << 14

SYN_SENT: Final = State.SYN_SENT
SYN_RECEIVED: Final = State.SYN_RECEIVED
ESTABLISHED: Final = State.ESTABLISHED
FIN_WAIT_1: Final = State.FIN_WAIT_1
FIN_WAIT_2: Final = State.FIN_WAIT_2
CLOSE_WAIT: Final = State.CLOSE_WAIT
CLOSING: Final = State.CLOSING
LAST_ACK: Final = State.LAST_ACK
TIME_WAIT: Final = State.TIME_WAIT
CLOSED: Final = State.CLOSED
RESET: Final = State.RESET

#: A side acknowledges its peer's FIN.
_ON_ACKING_FIN = {
    ESTABLISHED: CLOSE_WAIT,
    FIN_WAIT_1: CLOSING,
    FIN_WAIT_2: TIME_WAIT,
    SYN_RECEIVED: CLOSE_WAIT,
}
#: A side's own FIN is acknowledged by its peer.
_ON_FIN_ACKED = {FIN_WAIT_1: FIN_WAIT_2, CLOSING: TIME_WAIT, LAST_ACK: CLOSED}
#: A side sends its FIN.
_ON_SENDING_FIN = {
    ESTABLISHED: FIN_WAIT_1,
    CLOSE_WAIT: LAST_ACK,
    SYN_RECEIVED: FIN_WAIT_1,
    SYN_SENT: FIN_WAIT_1,
}


def covers(ack: int, seq_end: int) -> bool:
    """True when ``ack`` is at or beyond ``seq_end`` in 32-bit sequence space."""
    return (ack - seq_end) & M32 < HALF


#: The attributes of a :class:`Half` (its ``__slots__``; the frozen form lists them too).
HALF_FIELDS: Final = (
    "acked",
    "acked_fin_at",
    "acked_fin_frame",
    "acked_fin_ts",
    "bytes",
    "conn",
    "data_ts",
    "fin_acked_frame",
    "fin_at",
    "fin_count",
    "fin_frame",
    "fin_seq",
    "fin_ts",
    "flags_seen",
    "half_close_bytes",
    "isn",
    "key",
    "last_ts",
    "nxt",
    "packets",
    "peer",
    "state",
    "syn_at",
    "syn_frame",
    "synack_frame",
    "win",
    "ws_base",
    "wscale",
)
#: The attributes of a :class:`Tracker`.
TRACKER_FIELDS: Final = (
    "a",
    "anomalies",
    "b",
    "capture",
    "established",
    "file_spans",
    "first_fin",
    "first_frame",
    "first_ts",
    "last_frame",
    "last_ts",
    "packets",
    "quiet",
    "reuse",
    "rst_count",
    "rst_frame",
    "rst_from",
    "rst_lost",
    "rst_phase",
    "rst_ts",
    "started",
    "stream",
    "terminal",
    "trace",
    "transitions",
    "ws_closing",
)


class Half:
    """One side of a connection: what it sent and the state it is in."""

    __slots__ = HALF_FIELDS
    #: :func:`release` deletes them to break a finished or frozen connection's cycles.
    __deletable__ = ("conn", "peer")

    def __init__(self, conn: Tracker, key: bytes) -> None:
        self.conn = conn
        self.key = key
        self.peer: Half = self
        self.ws_base = -1  # Wireshark's base_seq, for stream numbering
        self.isn = -1
        self.syn_frame = 0
        self.syn_at = 0
        self.synack_frame = 0
        self.state: State | None = None
        self.nxt = -1  # highest sequence number sent + 1
        self.acked = -1  # highest acknowledgement number sent
        self.win = -1
        self.wscale = -1
        self.bytes = 0
        self.flags_seen = 0  # every flag this side ever sent (fast-path segments add none)
        self.packets = 0
        self.last_ts = 0.0
        self.fin_seq = -1  # the sequence number the FIN occupies
        self.fin_frame = 0
        self.fin_ts = 0.0
        self.fin_count = 0
        self.fin_acked_frame = 0  # the peer acknowledged this side's FIN
        self.acked_fin_frame = 0  # this side acknowledged the peer's FIN
        self.acked_fin_ts = 0.0
        # Order of events within the connection (its packet count at the
        # time): frame numbers do not order events across files.
        self.fin_at = 0
        self.acked_fin_at = 0
        self.half_close_bytes = 0
        # When this side last sent new payload (slow path only: after any
        # FIN every segment takes it), for how long a CLOSE_WAIT was idle.
        self.data_ts = 0.0

    def window_bytes(self) -> int:
        """The receive window this side last advertised, in bytes (or the maximum)."""
        if self.win < 0:
            return MAX_WINDOW
        if self.wscale < 0:
            # Without both SYNs the scale is unknown: assume the largest.
            return max(self.win << 14, 65535)
        return max(self.win << self.wscale, 65535)


class Tracker:
    """The mechanics of one connection (one Wireshark ``tcp.stream``)."""

    __slots__ = TRACKER_FIELDS

    def __init__(
        self, stream: int, capture: int, key: bytes, rkey: bytes, frame: int, ts: float
    ) -> None:
        self.stream = stream
        self.capture = capture
        self.a = Half(self, key)  # sender of the first packet
        self.b = Half(self, rkey)
        self.a.peer = self.b
        self.b.peer = self.a
        self.first_frame = frame
        self.first_ts = ts
        self.last_frame = frame
        self.last_ts = ts
        self.packets = 0
        self.quiet = False  # both sides ESTABLISHED: plain segments take the fast path
        self.terminal = False  # RST seen, or both FINs acknowledged
        self.established = False
        self.started = False  # a segment that can move a state was seen
        self.transitions: list[tuple[Half, State, int, float]] = []
        self.anomalies: dict[str, int] | None = None
        self.first_fin: Half | None = None
        self.rst_from: Half | None = None
        self.rst_frame = 0
        self.rst_ts = 0.0
        self.rst_phase = ""
        self.rst_lost = 0
        self.rst_count = 0
        self.reuse: tuple[int, float] | None = None
        # Wireshark 4.4's conversation completeness FIN or RST bit (any FIN
        # without SYN, any RST, quoted in ICMP errors too): set and read by
        # the flow table's stream numbering only.
        self.ws_closing = False
        # Per file of a multi-file run: [capture index, stream, first frame,
        # last frame, packets before this file]; the open span's last frame
        # and packets are derived from the counters when it closes.
        self.file_spans: list[list[int]] = [[capture, stream, frame, frame, 0]]
        self.trace: (
            list[tuple[int, float, Half, int, int, int, int, int, State | None, State | None]]
            | None
        ) = None

    # -- recording helpers ----------------------------------------------------

    def note(self, anomaly: Anomaly) -> None:
        if self.anomalies is None:
            self.anomalies = {}
        self.anomalies[anomaly] = self.anomalies.get(anomaly, 0) + 1

    def _move(self, half: Half, state: State, frame: int, ts: float) -> None:
        if half.state is not state:
            half.state = state
            self.transitions.append((half, state, frame, ts))
            if state is ESTABLISHED:
                self.established = True

    # -- the slow path ----------------------------------------------------------

    def segment(
        self,
        h: Half,
        frame: int,
        ts: float,
        seq: int,
        ack: int,
        flags: int,
        plen: int,
        win: int,
        wscale: int,
    ) -> None:
        """Apply one segment sent by side ``h``."""
        self.packets += 1
        self.last_frame = frame
        self.last_ts = ts
        h.packets += 1
        h.last_ts = ts
        h.flags_seen |= flags
        self._apply(h, frame, ts, seq, ack, flags, plen, win, wscale)
        if self.trace is not None:
            self.trace.append(
                (frame, ts, h, seq, ack, flags, plen, win, self.a.state, self.b.state)
            )

    def _apply(
        self,
        h: Half,
        frame: int,
        ts: float,
        seq: int,
        ack: int,
        flags: int,
        plen: int,
        win: int,
        wscale: int,
    ) -> None:
        p = h.peer
        if flags & COUNT_ONLY:
            # An ICMP error quoting this connection, or a header that cannot
            # be trusted: it belongs to the stream, but moves nothing.
            self.note(
                Anomaly.ICMP_ERROR
                if flags & QUOTED
                else Anomaly.BAD_TCP_HEADER
                if flags & BOGUS_HEADER
                else Anomaly.TRUNCATED_TCP_HEADER
            )
            return
        if self.rst_from is not None:
            if flags & RST:
                self.rst_count += 1
            else:
                self.note(Anomaly.SEGMENT_AFTER_RST)
            self._count_payload(h, seq, plen, flags)
            return
        h.win = win
        if not self.started:
            self.started = True
            if not flags & SYN:
                # The capture began mid-connection: the sides start ESTABLISHED.
                self.established = True
                self.note(Anomaly.NO_HANDSHAKE)
            elif flags & ACK:
                # It began at the SYN+ACK: roles are known, the SYN was missed.
                self.note(Anomaly.NO_HANDSHAKE)
        if flags & SYN:
            self._syn(h, frame, ts, seq, flags, wscale)
        elif h.state is None and not flags & RST:
            self._move(h, ESTABLISHED, frame, ts)
        if flags & RST:
            self._rst(h, frame, ts, seq, ack, flags, plen)
            return
        if flags & ACK:
            self._ack(h, frame, ts, ack, flags)
        if h.nxt < 0:
            # A side first seen mid-connection: where its sequence space starts,
            # so that the flow table's fast path can count its bytes.
            h.nxt = seq
        new = self._count_payload(h, seq, plen, flags)
        if new:
            h.data_ts = ts
            if h.state is SYN_RECEIVED and not flags & SYN:
                # A side sends data only once established (its SYN was
                # acknowledged out of sight, as in a one-sided capture).
                self._move(h, ESTABLISHED, frame, ts)
            if p.fin_seq >= 0 and h.acked_fin_frame and self.first_fin is p and h.fin_seq < 0:
                h.half_close_bytes += new
        if flags & FIN:
            self._fin(h, frame, ts, seq, plen, flags)
        self.quiet = (
            self.trace is None and self.a.state is ESTABLISHED and self.b.state is ESTABLISHED
        )

    def _syn(self, h: Half, frame: int, ts: float, seq: int, flags: int, wscale: int) -> None:
        if wscale >= 0:
            h.wscale = wscale
        if flags & ACK:
            if h.synack_frame == 0:
                h.synack_frame = frame
                if h.isn < 0:
                    h.isn = seq
                if h.state is None or h.state is SYN_SENT:
                    if h.state is SYN_SENT:
                        self.note(Anomaly.SIMULTANEOUS_OPEN)
                    self._move(h, SYN_RECEIVED, frame, ts)
        elif h.syn_frame == 0:
            h.syn_frame = frame
            h.syn_at = self.packets
            h.isn = seq
            if h.state is None:
                self._move(h, SYN_SENT, frame, ts)
            if h.peer.syn_frame:
                self.note(Anomaly.SIMULTANEOUS_OPEN)
        if flags & FIN:
            self.note(Anomaly.SYN_FIN)
        # The SYN occupies one sequence number.
        end = (seq + 1) & M32
        if h.nxt < 0 or (end - h.nxt) & M32 < HALF:
            h.nxt = end

    def _ack(self, h: Half, frame: int, ts: float, ack: int, flags: int) -> None:
        """Side ``h`` acknowledges its peer's sequence space up to ``ack``."""
        p = h.peer
        if h.acked < 0 or (ack - h.acked) & M32 < HALF:
            h.acked = ack
        # The handshake: SYN_SENT learns of the SYN+ACK when it acknowledges
        # it; SYN_RECEIVED is established when its SYN is acknowledged.
        if not flags & SYN and (
            h.state is SYN_SENT or (h.state is SYN_RECEIVED and p.state is ESTABLISHED)
        ):
            self._move(h, ESTABLISHED, frame, ts)
        if p.state is SYN_RECEIVED and (p.isn < 0 or covers(ack, (p.isn + 1) & M32)):
            if h.state is SYN_SENT:
                self._move(h, ESTABLISHED, frame, ts)
            self._move(p, ESTABLISHED, frame, ts)
        if p.fin_seq >= 0 and not p.fin_acked_frame and covers(ack, (p.fin_seq + 1) & M32):
            self._fin_acked(h, frame, ts)

    def _fin_acked(self, h: Half, frame: int, ts: float) -> None:
        """Side ``h`` is seen to have received its peer's FIN."""
        p = h.peer
        p.fin_acked_frame = frame
        h.acked_fin_frame = frame
        h.acked_fin_ts = ts
        h.acked_fin_at = self.packets
        mine = _ON_ACKING_FIN.get(h.state) if h.state is not None else None
        if mine is not None:
            self._move(h, mine, frame, ts)
        theirs = _ON_FIN_ACKED.get(p.state) if p.state is not None else None
        if theirs is not None:
            self._move(p, theirs, frame, ts)
        if h.fin_seq >= 0 and h.fin_acked_frame:
            self.terminal = True

    def _fin(self, h: Half, frame: int, ts: float, seq: int, plen: int, flags: int) -> None:
        p = h.peer
        fseq = (seq + plen + (1 if flags & SYN else 0)) & M32
        if not flags & (ACK | SYN):
            # A synchronized receiver drops a segment without ACK (RFC 9293
            # 3.10.7.4, Linux too); the sender has closed all the same.
            self.note(Anomaly.FIN_WITHOUT_ACK)
        if h.fin_seq >= 0:
            if fseq == h.fin_seq:
                h.fin_count += 1
            else:
                self.note(Anomaly.FIN_SEQ_CHANGED)
            return
        # A FIN far outside the sequence space the peer expects is not
        # trusted: a real stack would drop it.
        ref = p.acked if p.acked >= 0 else -1
        if ref >= 0:
            ahead = (fseq - ref) & M32
            behind = (ref - fseq) & M32
            limit = p.window_bytes()
            if ahead > limit and behind > limit:
                self.note(Anomaly.FIN_OUT_OF_WINDOW)
                return
        h.fin_seq = fseq
        h.fin_frame = frame
        h.fin_ts = ts
        h.fin_at = self.packets
        h.fin_count = 1
        if self.first_fin is None:
            self.first_fin = h
        if h.state is None:
            self._move(h, ESTABLISHED, frame, ts)
        nxt = _ON_SENDING_FIN.get(h.state) if h.state is not None else None
        if nxt is not None:
            self._move(h, nxt, frame, ts)
        end = (fseq + 1) & M32
        if h.nxt < 0 or (end - h.nxt) & M32 < HALF:
            h.nxt = end
        if p.acked >= 0 and covers(p.acked, end):
            # The peer's ACK of this FIN was captured first (two capture
            # queues, or the FIN's first copy missed): it was received then.
            self.note(Anomaly.ACKED_UNSEEN_FIN)
            self._fin_acked(p, frame, ts)

    def _rst(
        self, h: Half, frame: int, ts: float, seq: int, ack: int, flags: int, plen: int
    ) -> None:
        p = h.peer
        refused = self._rst_refused(h, seq, ack, flags)
        if refused is not None:
            self.note(refused)
            return
        if plen:
            self.note(Anomaly.RST_WITH_DATA)
            self._count_payload(h, seq, plen, flags)
        if flags & FIN:
            self.note(Anomaly.FIN_RST)
        self.rst_from = h
        self.rst_frame = frame
        self.rst_ts = ts
        self.rst_count = 1
        if self.first_fin is None:
            self.rst_phase = "established" if self.established else "handshake"
        elif self.a.fin_acked_frame and self.b.fin_acked_frame:
            self.rst_phase = "closed"
        else:
            self.rst_phase = "closing"
        # Data the peer sent that the RST's sender never acknowledged is lost.
        # The RST's own ACK number counts: Linux sends RCV.NXT in it.
        acked = h.acked
        if flags & ACK and (acked < 0 or (ack - acked) & M32 < HALF):
            acked = ack
        if p.nxt >= 0 and acked >= 0:
            pending = (p.nxt - acked) & M32
            if 0 < pending < HALF:
                self.rst_lost = pending - (1 if p.fin_seq >= 0 and not p.fin_acked_frame else 0)
        elif p.bytes and acked < 0:
            self.rst_lost = p.bytes
        self._move(h, RESET, frame, ts)
        if p.state is not None or p.packets:
            self._move(p, RESET, frame, ts)
        self.terminal = True
        self.quiet = False

    def _rst_refused(self, h: Half, seq: int, ack: int, flags: int) -> Anomaly | None:
        """Why the peer would drop this RST, or None when it would accept it."""
        p = h.peer
        if p.syn_frame and not h.syn_frame and not h.synack_frame and not self.established:
            # Answering a SYN (RFC 9293 3.10.7.3, SYN-SENT; Linux alike): only
            # a RST whose ACK acknowledges something sent, ISN < ACK <= SND.NXT.
            if flags & ACK and covers(ack, (p.isn + 1) & M32) and covers(p.nxt, ack):
                return None
            return Anomaly.RST_NOT_ACKING_SYN
        ref = p.acked if p.acked >= 0 else h.nxt
        if ref < 0:
            return None
        limit = p.window_bytes()
        if (seq - ref) & M32 <= limit or (ref - seq) & M32 <= limit:
            return None
        return Anomaly.RST_OUT_OF_WINDOW

    def _count_payload(self, h: Half, seq: int, plen: int, flags: int) -> int:
        """Count new payload bytes (retransmissions excluded); return how many."""
        if not plen:
            return 0
        start = (seq + (1 if flags & SYN else 0)) & M32
        end = (start + plen) & M32
        if h.nxt < 0:
            h.nxt = end
            h.bytes += plen
            new = plen
        else:
            d = (end - h.nxt) & M32
            if d == 0 or d >= HALF:
                return 0
            new = d if d < plen else plen
            h.bytes += new
            h.nxt = end
        if h.fin_seq >= 0 and (end - h.fin_seq) & M32 < HALF and end != h.fin_seq:
            self.note(Anomaly.DATA_AFTER_FIN)
        return new

    def open_span(self, capture: int, stream: int, frame: int) -> None:
        """The connection's first packet in another file of a multi-file run."""
        last = self.file_spans[-1]
        last[3] = self.last_frame
        last[4] = self.packets - last[4]
        self.file_spans.append([capture, stream, frame, frame, self.packets])

    def spans(self) -> list[tuple[int, int, int, int, int]]:
        """(capture, stream, first frame, last frame, packets) per file."""
        done = [(s[0], s[1], s[2], s[3], s[4]) for s in self.file_spans[:-1]]
        last = self.file_spans[-1]
        done.append((last[0], last[1], last[2], self.last_frame, self.packets - last[4]))
        return done


def release(conn: Tracker) -> None:
    """Break the tracker's reference cycles (side → connection, side → peer).

    The collector is paused while the pipeline runs, so a connection that
    is finished, or frozen, is freed by reference counting alone, at once.
    Its sides' ``conn`` and ``peer`` are gone afterwards.
    """
    for half in (conn.a, conn.b):
        del half.conn
        del half.peer


# -- compact form of an idle connection ----------------------------------------------

_HALF_SLOTS = tuple(s for s in HALF_FIELDS if s not in ("conn", "peer", "key"))
_TRACKER_SLOTS = tuple(
    s for s in TRACKER_FIELDS if s not in ("a", "b", "anomalies", "transitions", "trace")
)
_HALF_REFS = ("first_fin", "rst_from")
_HALF_REF_SLOTS = tuple(_TRACKER_SLOTS.index(name) for name in _HALF_REFS)
_HALF_VALUES = operator.attrgetter(*_HALF_SLOTS)
_TRACKER_VALUES = operator.attrgetter(*_TRACKER_SLOTS)
#: States by number in the frozen form (a small int costs less than a name).
_STATE_LIST = tuple(State)
_STATE_CODE = {s: i for i, s in enumerate(_STATE_LIST)}
_STATE_SLOT = _HALF_SLOTS.index("state")


def _defaults(values: list[object]) -> tuple[object, ...]:
    """A new tracker's values, left out of the frozen form (one tag byte each).

    Only numbers: a slot that may hold None (``first_fin``, ``reuse``, ...)
    starts as None anyway, which is one byte too. The type must match: 0 is
    not 0.0, nor False.
    """
    return tuple(v if type(v) in (int, float, bool) else None for v in values)


_NEW = Tracker(0, 0, b"", b"", 0, 0.0)
_HALF_DEFAULTS = _defaults([getattr(_NEW.a, s) for s in _HALF_SLOTS])
_TRACKER_DEFAULTS = _defaults([getattr(_NEW, s) for s in _TRACKER_SLOTS])
del _NEW

# The frozen form: the number of floats (a varint), the floats (8 bytes
# each), then every value as a tag byte and what the tag says follows.
_DEFAULT: Final = 0  # the value a new tracker starts with
_NONE: Final = 1
_INT: Final = 2  # a varint
_NEG: Final = 3  # a varint of minus the value
_FLOAT: Final = 4  # which of the floats (a varint): a time often recurs
_TRUE: Final = 5
_FALSE: Final = 6
_STR: Final = 7  # its length in UTF-8 (a varint), then those bytes
_LIST: Final = 8  # the number of items (a varint), then the items
_TUPLE: Final = 9
_DICT: Final = 10  # the number of items, then key and value of each
#: Tags from here on are a value themselves: a small int, or one of the first floats.
_SMALL: Final = 11
_SMALL_FLOAT: Final = 128


def freeze(conn: Tracker) -> bytes:
    """The tracker, but for its flow keys, as one bytes object (about 190 bytes, from 2.7 KB).

    For a connection that has gone idle and may stay so until the capture
    ends: :func:`thaw` gives back an equal tracker when a segment comes.
    Traced connections (``show``) are not frozen. The flow keys stay with
    the caller; states are numbers, a value a new tracker starts with is
    one byte, a number a varint or 8 bytes, and the transitions one flat list
    of (side × 16 + state, frame, ts). Made and read by compiled code in
    a few microseconds: no compression, no intermediate objects per value.
    """
    out: list[int] = []
    floats: dict[float, int] = {}
    a, b = conn.a, conn.b
    code = _STATE_CODE
    for h in (a, b):
        v = list(_HALF_VALUES(h))
        st = h.state
        v[_STATE_SLOT] = -1 if st is None else code[st]
        _put_slots(out, floats, v, _HALF_DEFAULTS)
    t = list(_TRACKER_VALUES(conn))
    for i in _HALF_REF_SLOTS:
        t[i] = None if t[i] is None else (0 if t[i] is a else 1)
    _put_slots(out, floats, t, _TRACKER_DEFAULTS)
    anomalies = conn.anomalies
    if anomalies is None:
        out.append(_NONE)
    else:
        _put(out, floats, {str(k): n for k, n in anomalies.items()})
    moves = conn.transitions
    out.append(_LIST)
    _varint(out, 3 * len(moves))
    for h, st, frame, ts in moves:
        _put(out, floats, (16 if h is b else 0) + code[st])
        _put(out, floats, frame)
        _put(out, floats, ts)
    head: list[int] = []
    _varint(head, len(floats))
    return bytes(head) + struct.pack(f"<{len(floats)}d", *floats.keys()) + bytes(out)


def _varint(out: list[int], n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_slots(
    out: list[int], floats: dict[float, int], values: list[object], defaults: tuple[object, ...]
) -> None:
    for v, d in zip(values, defaults, strict=True):
        if d is not None and type(v) is type(d) and v == d:
            out.append(_DEFAULT)
        else:
            _put(out, floats, v)


def _put(out: list[int], floats: dict[float, int], v: object) -> None:
    # By exact type: a subclass (an enum, a bool for an int) would come back as its base.
    if v is None:
        out.append(_NONE)
    elif type(v) is int:
        if v < _SMALL_FLOAT - _SMALL and v >= 0:
            out.append(_SMALL + v)
        elif v >= 0:
            out.append(_INT)
            _varint(out, v)
        else:
            out.append(_NEG)
            _varint(out, -v)
    elif type(v) is float:
        i = floats.get(v)
        if i is None:
            i = floats[v] = len(floats)
        if i < 256 - _SMALL_FLOAT:
            out.append(_SMALL_FLOAT + i)
        else:
            out.append(_FLOAT)
            _varint(out, i)
    elif type(v) is bool:
        out.append(_TRUE if v else _FALSE)
    elif type(v) is str:
        data = v.encode()
        out.append(_STR)
        _varint(out, len(data))
        out.extend(data)
    elif type(v) is list or type(v) is tuple:
        out.append(_LIST if type(v) is list else _TUPLE)
        _varint(out, len(v))
        for x in v:
            _put(out, floats, x)
    elif type(v) is dict:
        out.append(_DICT)
        _varint(out, len(v))
        for k, x in v.items():
            _put(out, floats, k)
            _put(out, floats, x)
    else:
        raise TypeError(f"a tracker holds a {type(v).__name__}, which cannot be frozen")


class _Thawing:
    """Reads the values of a frozen tracker in the order :func:`freeze` wrote them."""

    def __init__(self, blob: bytes, pos: int) -> None:
        self.blob = blob
        self.pos = pos
        n = self.varint()
        self.floats: tuple[float, ...] = struct.unpack_from(f"<{n}d", blob, self.pos)
        self.pos += 8 * n

    def varint(self) -> int:
        blob = self.blob
        pos = self.pos
        n = 0
        shift = 0
        while True:
            byte = blob[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        self.pos = pos
        return n

    def slots(self, defaults: tuple[object, ...]) -> list[Any]:
        out: list[Any] = []
        for d in defaults:
            if self.blob[self.pos] == _DEFAULT:
                self.pos += 1
                out.append(d)
            else:
                out.append(self.value())
        return out

    def value(self) -> Any:
        tag = self.blob[self.pos]
        self.pos += 1
        if tag >= _SMALL_FLOAT:
            return self.floats[tag - _SMALL_FLOAT]
        if tag >= _SMALL:
            return tag - _SMALL
        if tag == _INT:
            return self.varint()
        if tag == _NONE:
            return None
        if tag == _FLOAT:
            return self.floats[self.varint()]
        if tag == _NEG:
            return -self.varint()
        if tag == _TRUE:
            return True
        if tag == _FALSE:
            return False
        if tag == _STR:
            n = self.varint()
            start = self.pos
            self.pos = start + n
            return self.blob[start : start + n].decode()
        if tag == _LIST:
            return [self.value() for _ in range(self.varint())]
        if tag == _TUPLE:
            return tuple([self.value() for _ in range(self.varint())])
        if tag == _DICT:
            items: dict[Any, Any] = {}
            for _ in range(self.varint()):
                k = self.value()
                items[k] = self.value()
            return items
        raise ValueError(f"not a frozen tracker (tag {tag} at byte {self.pos - 1})")


def thaw(blob: bytes, key_a: bytes, key_b: bytes, start: int = 0) -> Tracker:
    """The tracker :func:`freeze` made ``blob[start:]`` of, with its sides' flow keys."""
    r = _Thawing(blob, start)
    # A new tracker, then its values: the sides come linked to it and to each other.
    conn = Tracker(0, 0, key_a, key_b, 0, 0.0)
    hs = (conn.a, conn.b)
    for h in hs:
        v = r.slots(_HALF_DEFAULTS)
        code = v[_STATE_SLOT]
        v[_STATE_SLOT] = None if code < 0 else _STATE_LIST[code]
        for name, value in zip(_HALF_SLOTS, v, strict=True):
            setattr(h, name, value)
    t = r.slots(_TRACKER_DEFAULTS)
    for i in _HALF_REF_SLOTS:
        t[i] = None if t[i] is None else hs[t[i]]
    for name, value in zip(_TRACKER_SLOTS, t, strict=True):
        setattr(conn, name, value)
    anomalies = r.value()
    conn.anomalies = None if anomalies is None else {Anomaly(k): n for k, n in anomalies.items()}
    moves = r.value()
    states = _STATE_LIST
    conn.transitions = [
        (hs[moves[i] >> 4], states[moves[i] & 15], moves[i + 1], moves[i + 2])
        for i in range(0, len(moves), 3)
    ]
    conn.trace = None
    return conn
