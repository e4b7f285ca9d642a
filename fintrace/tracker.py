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
frame and timestamp, as the :class:`~fintrace.model.Transition` record the
report gives (one object a change, made once: ``docs/performance.md``).
:mod:`fintrace.classify` decides the close type from what is recorded here,
once, at the end; ``docs/taxonomy.md`` explains both.
"""

from __future__ import annotations

from typing import Any, Final

from librt.strings import (
    BytesWriter,
    read_f64_le,
    read_i64_le,
    write_f64_le,
    write_i64_le,
)
from mypy_extensions import i64, u8

from fintrace.decode import ACK, BOGUS_HEADER, COUNT_ONLY, FIN, QUOTED, RST, SYN
from fintrace.model import Anomaly, Role, State, Transition

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
#: A transition's side: side a's are the client's, side b's the server's.
_CLIENT: Final = Role.CLIENT
_SERVER: Final = Role.SERVER

#: A side acknowledges its peer's FIN.
_ON_ACKING_FIN: Final = {
    ESTABLISHED: CLOSE_WAIT,
    FIN_WAIT_1: CLOSING,
    FIN_WAIT_2: TIME_WAIT,
    SYN_RECEIVED: CLOSE_WAIT,
}
#: A side's own FIN is acknowledged by its peer.
_ON_FIN_ACKED: Final = {FIN_WAIT_1: FIN_WAIT_2, CLOSING: TIME_WAIT, LAST_ACK: CLOSED}
#: A side sends its FIN.
_ON_SENDING_FIN: Final = {
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
    "filed",
    "first_fin",
    "first_frame",
    "first_ts",
    "last_frame",
    "last_ts",
    "linger_due",
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
#: Slots of a tracker that the flow table keeps for itself, not the connection's
#: state: whether it is filed in the table, and when the table looks at it again
#: after its end. Not frozen: a thawed tracker starts them anew.
TABLE_FIELDS: Final = ("filed", "linger_due")


class Half:
    """One side of a connection: what it sent and the state it is in."""

    __slots__ = HALF_FIELDS

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
        #: Every state change, as the record the report gives it in, made once:
        #: side a's as the client's, side b's as the server's. When
        #: :func:`~fintrace.classify.roles` finds the client on side b, the
        #: pipeline makes them anew with the sides the other way round.
        self.transitions: list[Transition] = []
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
        # The flow table's (TABLE_FIELDS): filed in it, and when it is due to
        # leave it (packet time) once ended.
        self.filed = False
        self.linger_due = 0.0
        # Per file of a multi-file run: [capture index, stream, first frame,
        # last frame, packets before this file]; the open span's last frame
        # and packets are derived from the counters when it closes. None
        # while the connection is in one file (nearly always): its one span
        # is capture, stream, first frame and the counters.
        self.file_spans: list[list[int]] | None = None
        self.trace: (
            list[tuple[int, float, Half, int, int, int, int, int, State | None, State | None]]
            | None
        ) = None

    # -- recording helpers ----------------------------------------------------

    def note(self, anomaly: Anomaly) -> None:
        if self.anomalies is None:
            self.anomalies = {}
        self.anomalies[anomaly] = self.anomalies.get(anomaly, 0) + 1

    def half_of(self, m: Transition) -> Half:
        """The side whose state change ``m`` is (side b's are the server's here)."""
        return self.b if m.side is _SERVER else self.a

    def _move(self, half: Half, state: State, frame: int, ts: float) -> None:
        if half.state is not state:
            half.state = state
            self.transitions.append(
                Transition(_SERVER if half is self.b else _CLIENT, state, frame, ts)
            )
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
        spans = self.file_spans
        if spans is None:
            spans = self.file_spans = [[self.capture, self.stream, self.first_frame, 0, 0]]
        last = spans[-1]
        last[3] = self.last_frame
        last[4] = self.packets - last[4]
        spans.append([capture, stream, frame, frame, self.packets])

    def last_capture(self) -> int:
        """The file (index) of the connection's latest packet."""
        return self.capture if self.file_spans is None else self.file_spans[-1][0]

    def spans(self) -> list[tuple[int, int, int, int, int]]:
        """(capture, stream, first frame, last frame, packets) per file."""
        spans = self.file_spans
        if spans is None:
            return [(self.capture, self.stream, self.first_frame, self.last_frame, self.packets)]
        done = [(s[0], s[1], s[2], s[3], s[4]) for s in spans[:-1]]
        last = spans[-1]
        done.append((last[0], last[1], last[2], self.last_frame, self.packets - last[4]))
        return done


def release(conn: Tracker) -> None:
    """Break the tracker's reference cycles (side → connection, side → peer).

    The collector is paused while the pipeline runs, so a connection that
    is finished, or frozen, is freed by reference counting alone, at once.
    Its sides' ``conn`` and ``peer`` point afterwards to :data:`RELEASED` and
    its side a: compiled, that is four stores, where deleting the attributes
    went through Python's generic attribute deletion (about 180 instructions
    each), and a side's ``conn`` and ``peer``, never missing, are read
    without a test.
    """
    a, b = conn.a, conn.b
    a.conn = b.conn = RELEASED
    a.peer = b.peer = RELEASED.a


#: What a released tracker's sides point to (:func:`release`): a placeholder
#: connection, never filed, alive as long as the module.
RELEASED: Final = Tracker(-1, -1, b"", b"", 0, 0.0)


# -- compact form of an idle connection ----------------------------------------------

#: States by number in the frozen form (a small int costs less than a name).
_STATE_LIST: Final = tuple(State)
_STATE_CODE: Final = {s: i for i, s in enumerate(_STATE_LIST)}

# The frozen form: the number of distinct floats (a varint), the first of them (8
# bytes), each other one's 64 bits XOR the first's (a varint: the times of one
# connection share their sign, exponent and leading digits, so about 4 bytes,
# not 8), then every value as a tag byte and what the tag says follows (or a run
# of defaults as one tag byte).
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
#: Tags from here on stand for 2 to 17 values in a row that a new tracker starts with
#: (a third of a frozen tracker's slots): one byte, not one each.
_RUN: Final = 240
_RUN_MAX: Final = 255


#: The top bit of a 64-bit pattern, as the signed number it is.
_TOP_BIT: Final = -0x8000000000000000


class _Freezing:
    """Writes the values of a tracker as :func:`freeze` lays them out."""

    def __init__(self) -> None:
        # A byte buffer: compiled, appending and rewriting its last byte are C
        # operations, and the result one copy (from a list, a conversion per byte).
        self.out = BytesWriter()
        #: The distinct floats, in the order first written (a tracker has a
        #: dozen or so: a list searched in turn is cheaper than a dictionary,
        #: which hashes a new float object for each lookup).
        self.floats: list[float] = []
        #: Where the last default (or run of them) ends: one written there extends it
        #: (a machine integer, as the buffer's length is).
        self.run_end: i64 = -1

    def blob(self) -> bytes:
        floats = self.floats
        n = len(floats)
        head = _Freezing()
        head.varint(n)
        if n:
            # Each float's 64 bits: written as a double, read back as an integer
            # (compiled, machine stores and loads).
            raw = BytesWriter()
            for f in floats:
                write_f64_le(raw, f)
            bits = raw.getvalue()
            first = read_i64_le(bits, 0)
            write_i64_le(head.out, first)
            for i in range(1, n):
                head.pattern(read_i64_le(bits, 8 * i) ^ first)
        return head.out.getvalue() + self.out.getvalue()

    def pattern(self, x: i64) -> None:
        """A 64-bit pattern (negative: its top bit set) as an unsigned varint."""
        out = self.out
        while x < 0 or x >= 0x80:
            out.append(u8((x & 0x7F) | 0x80))  # u8: compiled, a C call, not a method's
            x = (x >> 7) & 0x01FFFFFFFFFFFFFF  # the shift of an unsigned number
        out.append(u8(x))

    def varint(self, n: int) -> None:
        out = self.out
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)

    def default(self) -> None:
        """The value a new tracker starts with: a run of them is one byte."""
        out = self.out
        n: i64 = len(out)
        if self.run_end == n:
            last = out[n - 1]
            if last == _DEFAULT:
                out[n - 1] = _RUN
                return
            if last < _RUN_MAX:
                out[n - 1] = last + 1
                return
        out.append(_DEFAULT)
        self.run_end = n + 1

    def number(self, v: int, default: int) -> None:
        if v == default:
            self.default()
        else:
            self.integer(v)

    def sequence(self, v: int, base: int) -> None:
        """A sequence number (or -1), after ``base`` (its side's first, or -1): a few bytes."""
        if v < 0:
            self.default()
        elif base < 0:
            self.integer(v)
        else:
            self.integer((v - base) & M32)

    def frame(self, v: int, first: int) -> None:
        """A frame number (or 0), after the connection's first frame."""
        if v == 0:
            self.default()
        else:
            self.integer(v - first)  # below it in a later file: negative

    def integer(self, v: int) -> None:
        if 0 <= v < _SMALL_FLOAT - _SMALL:
            self.out.append(_SMALL + v)
        elif v >= 0:
            self.out.append(_INT)
            self.varint(v)
        else:
            self.out.append(_NEG)
            self.varint(-v)

    def seconds(self, v: float) -> None:
        """A time or a duration; 0.0 is every float slot's start."""
        if v == 0.0:
            self.default()
        else:
            self.real(v)

    def real(self, v: float) -> None:
        """A float, as its index among the distinct ones (a time often recurs).

        Equal is ``==``, as a dictionary's keys would be: -0.0 is written as
        the 0.0 before it, and a NaN never matches.
        """
        floats = self.floats
        n = len(floats)
        i = 0
        while i < n and floats[i] != v:
            i += 1
        if i == n:
            floats.append(v)
        if i < _RUN - _SMALL_FLOAT:
            self.out.append(_SMALL_FLOAT + i)
        else:
            self.out.append(_FLOAT)
            self.varint(i)

    def value(self, v: object) -> None:
        """Any value of the kinds a tracker holds (for the rarely set slots)."""
        # By exact type: a subclass (an enum, a bool for an int) would come back as its base.
        if v is None:
            self.out.append(_NONE)
        elif type(v) is int:
            self.integer(v)
        elif type(v) is float:
            self.real(v)
        elif type(v) is bool:
            self.out.append(_TRUE if v else _FALSE)
        elif type(v) is str:
            data = v.encode()
            self.out.append(_STR)
            self.varint(len(data))
            self.out.write(data)
        elif type(v) is list or type(v) is tuple:
            self.out.append(_LIST if type(v) is list else _TUPLE)
            self.varint(len(v))
            for x in v:
                self.value(x)
        elif type(v) is dict:
            self.out.append(_DICT)
            self.varint(len(v))
            for k, x in v.items():
                self.value(k)
                self.value(x)
        else:
            raise TypeError(f"a tracker holds a {type(v).__name__}, which cannot be frozen")


class _Thawing:
    """Reads the values of a frozen tracker in the order :func:`freeze` wrote them."""

    def __init__(self, blob: bytes, pos: int) -> None:
        self.blob = blob
        # Machine integers (i64): compiled, the position's arithmetic and the
        # byte at it are machine operations, not tagged ones.
        self.pos: i64 = pos
        #: Defaults still to give out of the last run read.
        self.pending: i64 = 0
        n = self.varint()
        self.floats: list[float] = []
        if n:
            first = read_i64_le(blob, self.pos)
            self.pos += 8
            raw = BytesWriter()
            write_i64_le(raw, first)
            for _ in range(1, n):
                write_i64_le(raw, self.pattern() ^ first)
            bits = raw.getvalue()
            self.floats = [read_f64_le(bits, 8 * i) for i in range(n)]

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

    def pattern(self) -> i64:
        """What :meth:`_Freezing.pattern` wrote."""
        blob = self.blob
        pos = self.pos
        n: i64 = 0
        shift: i64 = 0
        while True:
            byte: i64 = blob[pos]
            pos += 1
            part: i64 = byte & 0x7F
            if shift == 63:
                # The tenth byte holds the top bit alone: set as the sign, not by a
                # shift past the range of a signed number.
                if part:
                    n |= _TOP_BIT
                break
            part <<= shift  # not part << shift: compiled, that shifts a C int, 32 bits wide
            n |= part
            if byte < 0x80:
                break
            shift += 7
        self.pos = pos
        return n

    def tag(self) -> i64:
        if self.pending:
            self.pending -= 1
            return _DEFAULT
        pos = self.pos
        tag: i64 = self.blob[pos]
        self.pos = pos + 1
        if tag >= _RUN:
            self.pending = tag - _RUN + 1  # a run of tag - _RUN + 2: this is the first
            return _DEFAULT
        return tag

    def number(self, default: int) -> int:
        tag = self.tag()
        return default if tag == _DEFAULT else self.integer(tag)

    def sequence(self, base: int) -> int:
        tag = self.tag()
        if tag == _DEFAULT:
            return -1
        v = self.integer(tag)
        return v if base < 0 else (base + v) & M32

    def frame(self, first: int) -> int:
        tag = self.tag()
        return 0 if tag == _DEFAULT else first + self.integer(tag)

    def seconds(self) -> float:
        tag = self.tag()
        return 0.0 if tag == _DEFAULT else self.real(tag)

    def integer(self, tag: i64) -> int:
        if _SMALL <= tag < _SMALL_FLOAT:
            return tag - _SMALL
        if tag == _INT:
            return self.varint()
        if tag == _NEG:
            return -self.varint()
        raise self._bad(tag)

    def real(self, tag: i64) -> float:
        if tag >= _SMALL_FLOAT:
            return self.floats[tag - _SMALL_FLOAT]
        if tag == _FLOAT:
            return self.floats[self.varint()]
        raise self._bad(tag)

    def value(self) -> Any:
        tag = self.tag()
        if tag >= _SMALL_FLOAT or tag == _FLOAT:
            return self.real(tag)
        if tag >= _SMALL or tag in (_INT, _NEG):
            return self.integer(tag)
        if tag == _NONE:
            return None
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
        raise self._bad(tag)

    def _bad(self, tag: int) -> ValueError:
        return ValueError(f"not a frozen tracker (tag {tag} at byte {self.pos - 1})")


def freeze(conn: Tracker) -> bytes:
    """The tracker, but for its flow keys, as one bytes object (about 136 bytes, from 2.7 KB).

    For a connection that has gone idle and may stay so until the capture
    ends: :func:`thaw` gives back an equal tracker when a segment comes.
    Traced connections (``show``) are not frozen. The flow keys stay with
    the caller. Each slot is written in turn, typed: a value a new tracker
    starts with is one byte (and so are up to 17 of them in a row), a small
    number too, a larger one a varint, a time one byte when it recurred
    (most do), sequence numbers after their side's first and frame numbers
    after the connection's first (a few bytes each, not five), states and the
    five flags as numbers, the transitions one flat list of
    (side × 16 + state, frame, ts).
    Made and read by compiled code in a few microseconds: no compression, no
    object per value. ``tests/test_freeze.py`` sets every slot to a value of
    its own, so a slot left out here fails it.
    """
    w = _Freezing()
    a, b = conn.a, conn.b
    code = _STATE_CODE
    # First what the numbers after are written relative to: each side's first
    # sequence number (Wireshark's base) and the first frame.
    first = conn.first_frame
    w.number(first, 0)
    w.number(a.ws_base, -1)
    w.number(b.ws_base, -1)
    for h in (a, b):
        own = h.ws_base
        w.sequence(h.acked, h.peer.ws_base)
        w.number(h.acked_fin_at, 0)
        w.frame(h.acked_fin_frame, first)
        w.seconds(h.acked_fin_ts)
        w.number(h.bytes, 0)
        w.seconds(h.data_ts)
        w.frame(h.fin_acked_frame, first)
        w.number(h.fin_at, 0)
        w.number(h.fin_count, 0)
        w.frame(h.fin_frame, first)
        w.sequence(h.fin_seq, own)
        w.seconds(h.fin_ts)
        w.number(h.flags_seen, 0)
        w.number(h.half_close_bytes, 0)
        w.sequence(h.isn, own)
        w.seconds(h.last_ts)
        w.sequence(h.nxt, own)
        w.number(h.packets, 0)
        st = h.state
        w.number(-1 if st is None else code[st], -1)
        w.number(h.syn_at, 0)
        w.frame(h.syn_frame, first)
        w.frame(h.synack_frame, first)
        w.number(h.win, -1)
        w.number(h.wscale, -1)
    w.number(conn.stream, 0)
    w.number(conn.capture, 0)
    w.seconds(conn.first_ts)
    w.frame(conn.last_frame, first)
    w.seconds(conn.last_ts)
    w.number(conn.packets, 0)
    flags = (
        conn.established
        | conn.quiet << 1
        | conn.started << 2
        | conn.terminal << 3
        | conn.ws_closing << 4
    )
    w.number(flags, 0)
    w.number(_side(conn, conn.first_fin), 0)
    w.number(_side(conn, conn.rst_from), 0)
    w.number(conn.rst_count, 0)
    w.frame(conn.rst_frame, first)
    w.number(conn.rst_lost, 0)
    w.seconds(conn.rst_ts)
    w.value(conn.rst_phase)
    w.value(conn.reuse)
    anomalies = conn.anomalies
    w.value(None if anomalies is None else {str(k): n for k, n in anomalies.items()})
    w.value(conn.file_spans)
    moves = conn.transitions
    w.varint(len(moves))
    for m in moves:
        w.number((16 if m.side is _SERVER else 0) + code[m.state], -1)
        w.frame(m.frame, first)
        w.seconds(m.ts)
    return w.blob()


def _side(conn: Tracker, h: Half | None) -> int:
    return 0 if h is None else (1 if h is conn.a else 2)


def thaw(blob: bytes, key_a: bytes, key_b: bytes, start: int = 0) -> Tracker:
    """The tracker :func:`freeze` made ``blob[start:]`` of, with its sides' flow keys."""
    r = _Thawing(blob, start)
    # A new tracker, then its values: the sides come linked to it and to each other.
    conn = Tracker(0, 0, key_a, key_b, 0, 0.0)
    states = _STATE_LIST
    first = conn.first_frame = r.number(0)
    conn.a.ws_base = r.number(-1)
    conn.b.ws_base = r.number(-1)
    for h in (conn.a, conn.b):
        own = h.ws_base
        h.acked = r.sequence(h.peer.ws_base)
        h.acked_fin_at = r.number(0)
        h.acked_fin_frame = r.frame(first)
        h.acked_fin_ts = r.seconds()
        h.bytes = r.number(0)
        h.data_ts = r.seconds()
        h.fin_acked_frame = r.frame(first)
        h.fin_at = r.number(0)
        h.fin_count = r.number(0)
        h.fin_frame = r.frame(first)
        h.fin_seq = r.sequence(own)
        h.fin_ts = r.seconds()
        h.flags_seen = r.number(0)
        h.half_close_bytes = r.number(0)
        h.isn = r.sequence(own)
        h.last_ts = r.seconds()
        h.nxt = r.sequence(own)
        h.packets = r.number(0)
        st = r.number(-1)
        h.state = None if st < 0 else states[st]
        h.syn_at = r.number(0)
        h.syn_frame = r.frame(first)
        h.synack_frame = r.frame(first)
        h.win = r.number(-1)
        h.wscale = r.number(-1)
    conn.stream = r.number(0)
    conn.capture = r.number(0)
    conn.first_ts = r.seconds()
    conn.last_frame = r.frame(first)
    conn.last_ts = r.seconds()
    conn.packets = r.number(0)
    flags = r.number(0)
    conn.established = bool(flags & 1)
    conn.quiet = bool(flags & 2)
    conn.started = bool(flags & 4)
    conn.terminal = bool(flags & 8)
    conn.ws_closing = bool(flags & 16)
    sides = (None, conn.a, conn.b)
    conn.first_fin = sides[r.number(0)]
    conn.rst_from = sides[r.number(0)]
    conn.rst_count = r.number(0)
    conn.rst_frame = r.frame(first)
    conn.rst_lost = r.number(0)
    conn.rst_ts = r.seconds()
    conn.rst_phase = r.value()
    conn.reuse = r.value()
    anomalies = r.value()
    conn.anomalies = None if anomalies is None else {Anomaly(k): n for k, n in anomalies.items()}
    conn.file_spans = r.value()
    moves: list[Transition] = []
    for _ in range(r.varint()):
        side_state = r.number(-1)
        frame = r.frame(first)
        side = _SERVER if side_state >= 16 else _CLIENT
        moves.append(Transition(side, states[side_state & 15], frame, r.seconds()))
    conn.transitions = moves
    conn.trace = None
    return conn
