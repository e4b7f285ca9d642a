"""Fields that let fintrace's output be joined with other tools' logs.

* :func:`community_id`: the Community ID v1 flow hash
  (corelight/community-id-spec), as Zeek, Suricata and Arkime log it.
* :func:`zeek_conn_state`: the ``conn_state`` Zeek's ``conn.log`` would give
  the connection.

Zeek decides ``conn_state`` in two layers, and so does this module. Its TCP
analyzer (``src/packet_analysis/protocol/tcp/TCPSessionAdapter.cc``,
``UpdateStateMachine``) moves each endpoint through INACTIVE, SYN_SENT,
SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED and RESET on the flags *it sends*;
then ``conn_state()`` in ``scripts/base/protocols/conn/main.zeek`` maps the
two final endpoint states (plus sizes and the history string) to a label.
Only SYN, FIN and RST segments and an endpoint's first segment move those
states, and the tracker records exactly those (first SYN, SYN+ACK, FIN and
RST per side, every flag a side sent), so the endpoint machine is replayed
here over those events in capture order. ``docs/schema/README.md`` lists the
rules with their sources and the few cases the replay approximates.
"""

from __future__ import annotations

import hashlib
import math
from binascii import b2a_base64
from enum import IntEnum
from typing import Final

from librt.strings import BytesWriter

from fintrace.classify import port_of
from fintrace.decode import ACK, COUNT_ONLY, FIN, RST, SYN
from fintrace.model import State
from fintrace.tracker import Half, Tracker

PROTO_TCP = 6


def community_id(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    *,
    proto: int = PROTO_TCP,
    seed: int = 0,
    b64: bool = True,
) -> str:
    """Community ID v1 of a flow given by raw address bytes and ports.

    The spec orders the two endpoints so both directions hash alike: the
    smaller address first, and for equal addresses the smaller port.
    """
    if src > dst or (src == dst and sport > dport):
        src, dst, sport, dport = dst, src, dport, sport
    # The seed, the addresses, the protocol, a zero byte and the ports,
    # big-endian: written in one buffer (compiled, no object but it).
    w = BytesWriter()
    w.append(seed >> 8)
    w.append(seed & 0xFF)
    w.write(src)
    w.write(dst)
    w.append(proto)
    w.append(0)
    w.append(sport >> 8)
    w.append(sport & 0xFF)
    w.append(dport >> 8)
    w.append(dport & 0xFF)
    digest = _sha1(w.getvalue()).digest()
    if b64:
        return "1:" + _b64(digest, newline=False).decode("ascii")
    return "1:" + digest.hex()


_sha1: Final = hashlib.sha1
_b64: Final = b2a_base64


#: TCP ports Zeek's default scripts add to ``likely_server_ports`` (each
#: ``base/protocols/*/main.zeek`` registers its analyzer's ports there).
#: Zeek uses the set only to pick the originator of a connection whose first
#: packet is not a plain SYN; a site that loads other scripts has other ports.
LIKELY_SERVER_PORTS: Final = frozenset(
    {
        21, 22, 25, 53, 80, 81, 88, 110, 135, 139, 143, 389, 443, 445, 502, 563, 585,
        587, 614, 631, 636, 989, 990, 992, 993, 995, 1080, 1434, 2811, 3128, 3268,
        3306, 3389, 5222, 5223, 5269, 6666, 6667, 6668, 6669, 8000, 8080, 8888, 20000,
    }
)  # fmt: skip


class Zeek(IntEnum):
    """Zeek's TCP endpoint states (``TCP_ENDPOINT_*``)."""

    INACTIVE = 0
    SYN_SENT = 1
    SYN_ACK_SENT = 2
    PARTIAL = 3
    ESTABLISHED = 4
    CLOSED = 5
    RESET = 6


class _End:
    """One Zeek endpoint during the replay."""

    __slots__ = ("half", "prev", "state")

    def __init__(self, half: Half) -> None:
        self.half = half
        self.state = Zeek.INACTIVE
        self.prev = Zeek.INACTIVE

    def set(self, state: Zeek) -> None:
        if state is not self.state:
            self.prev = self.state
            self.state = state


#: Marks a reconstructed segment that carried payload.
_DATA: Final = 0x10000

#: (order, tie-break, sender, flags, payload length)
_Event = tuple[float, int, "Half", int, int]


def _first_frame(conn: Tracker, h: Half) -> float:
    """Frame of the side's first segment: its first recorded state change."""
    if h is conn.a:
        return conn.first_frame
    for m in conn.transitions:
        if conn.half_of(m) is h:
            return m.frame
    return math.inf


def _events(conn: Tracker) -> list[_Event]:
    """The segments that can move Zeek's endpoint states, in capture order.

    A flag a side sent whose segment the tracker did not keep (a FIN after
    the connection's RST, a second RST) comes after everything recorded,
    FIN before RST.
    """
    by_frame: dict[tuple[float, int], list[int]] = {}
    late: list[_Event] = []
    for tie, h in enumerate((conn.a, conn.b)):
        if not h.packets:
            continue
        seen = h.flags_seen & ~COUNT_ONLY if h.flags_seen & COUNT_ONLY else h.flags_seen
        marks: list[tuple[float, int]] = []
        if h.syn_frame:
            marks.append((h.syn_frame, SYN))
        if h.synack_frame:
            marks.append((h.synack_frame, SYN | ACK))
        if h.fin_frame:
            marks.append((h.fin_frame, FIN))
        elif seen & FIN:
            late.append((math.inf, 2 * tie, h, FIN, 0))
        if conn.rst_from is h:
            marks.append((conn.rst_frame, RST))
        elif seen & RST:
            late.append((math.inf, 2 * tie + 1, h, RST, 0))
        first = _first_frame(conn, h)
        if not any(frame == first for frame, _ in marks):
            # A first segment without SYN, FIN or RST: an ACK. Zeek tells
            # PARTIAL from INACTIVE by its payload; a side that later sends
            # its SYN sends its data after it.
            data = h.bytes and not h.syn_frame and not h.synack_frame
            marks.append((first, ACK | (_DATA if data else 0)))
        for frame, flags in marks:
            by_frame.setdefault((frame, tie), [0])[0] |= flags
    halves = (conn.a, conn.b)
    events: list[_Event] = [
        (frame, tie, halves[tie], flags[0] & ~_DATA, 1 if flags[0] & _DATA else 0)
        for (frame, tie), flags in by_frame.items()
    ]
    events.sort(key=lambda e: (e[0], e[1]))
    late.sort(key=lambda e: e[1])
    return events + late


def _originator(conn: Tracker, first_flags: int) -> tuple[Half, bool]:
    """Zeek's originator, and whether it flipped the first packet's roles.

    ``TCPAnalyzer::WantConnection``: a connection whose first packet is not
    a plain SYN is flipped when its source port is a likely server port and
    the destination is not (or both are, the packet is no SYN+ACK and the
    source port is the smaller).
    """
    a, b = conn.a, conn.b
    if first_flags & SYN and not first_flags & ACK:
        return a, False
    sport, dport = port_of(a), port_of(b)
    if sport in LIKELY_SERVER_PORTS and (
        dport not in LIKELY_SERVER_PORTS or (not first_flags & SYN and sport < dport)
    ):
        return b, True
    return a, False


def _replay(conn: Tracker, events: list[_Event]) -> tuple[_End, _End]:
    """Zeek's ``UpdateStateMachine`` over the events; (orig, resp) at the end."""
    first_flags = events[0][3] if events else 0
    orig_half, _ = _originator(conn, first_flags)
    resp_half = conn.b if orig_half is conn.a else conn.a
    orig, resp = _End(orig_half), _End(resp_half)
    for _order, _tie, h, flags, plen in events:
        e, peer = (orig, resp) if h is orig.half else (resp, orig)
        is_orig = e is orig
        st = e.state
        if st is Zeek.INACTIVE:
            if flags & SYN:
                if is_orig:
                    e.set(Zeek.SYN_ACK_SENT if flags & ACK else Zeek.SYN_SENT)
                else:
                    if not flags & ACK and peer.state is Zeek.SYN_ACK_SENT:
                        # A SYN answering a SYN+ACK seen first: Zeek flips
                        # the roles and calls the connection established.
                        orig, resp = e, peer
                        peer.set(Zeek.ESTABLISHED)
                    if peer.state is Zeek.SYN_SENT:
                        peer.set(Zeek.ESTABLISHED)
                    e.set(Zeek.ESTABLISHED)
            if flags & FIN:
                e.set(Zeek.CLOSED)
            if flags & RST:
                e.set(Zeek.RESET)
            if e.state is Zeek.INACTIVE:
                if e is resp and plen == 0 and orig.state is Zeek.SYN_SENT:
                    pass  # an ACK of the SYN before the SYN+ACK: not yet partial
                elif flags & ACK and peer.state is Zeek.ESTABLISHED:
                    e.set(Zeek.ESTABLISHED)
                else:
                    e.set(Zeek.PARTIAL)
        elif st in (Zeek.SYN_SENT, Zeek.SYN_ACK_SENT):
            if flags & FIN:
                e.set(Zeek.CLOSED)
            if flags & RST:
                e.set(Zeek.RESET)
        elif st in (Zeek.ESTABLISHED, Zeek.PARTIAL):
            if (
                flags & SYN
                and not flags & ACK
                and st is Zeek.PARTIAL
                and peer.state is Zeek.INACTIVE
            ):
                e.set(Zeek.SYN_SENT)
            if flags & FIN and not flags & RST:
                e.set(Zeek.CLOSED)
                if peer.state is Zeek.RESET and peer.prev is Zeek.CLOSED:
                    # The peer's FIN then RST was a normal close after all.
                    peer.set(Zeek.CLOSED)
            if flags & RST:
                e.set(Zeek.RESET)
        elif st is Zeek.CLOSED and flags & RST and peer.state is not Zeek.CLOSED:
            e.set(Zeek.RESET)
    return orig, resp


def _rst_before_other_flags(conn: Tracker, orig: Half) -> bool:
    """Zeek's history test for RSTOS0: ``^?S[^HAFGIQ]*R.*``.

    The history starts with the originator's SYN and its RST comes before it
    sent a SYN+ACK, a pure ACK, a FIN or a segment with two of SYN/FIN/RST.
    A pure ACK shows as the tracker's SYN_SENT → ESTABLISHED step before the
    RST when the side sent no payload.
    """
    if orig.syn_frame != conn.first_frame or orig is not conn.a:
        return False
    rst_at = conn.rst_frame if conn.rst_from is orig else math.inf
    if orig.synack_frame and orig.synack_frame < rst_at:
        return False
    # A FIN the tracker did not keep came after the RST (it ignores what follows one).
    if orig.fin_frame and orig.fin_frame <= rst_at:
        return False  # 'F' before the RST, or FIN+RST in one segment: 'I'
    if orig.syn_frame == rst_at:
        return False  # SYN+RST in one segment: 'Q'
    if orig.bytes == 0:
        for m in conn.transitions:
            if conn.half_of(m) is orig and m.state is State.ESTABLISHED and m.frame < rst_at:
                return False
    return True


def _common_conn_state(conn: Tracker) -> str | None:
    """``conn_state`` of the most common shapes, without the replay.

    Each shape starts with a plain SYN from the first packet's sender that
    the other side answers first with its SYN+ACK (or, refused, its RST) and
    holds no other RST; the replay moves the endpoints as follows, and
    ``tests/test_interop.py`` checks this shortcut against it on every
    capture:

    * both sent a FIN: each side is CLOSED, whatever the order: ``SF``;
    * only one sent a FIN: that side is CLOSED, the other ESTABLISHED: ``S2``
      when it is the originator, ``S3`` when the responder;
    * neither sent a FIN: both ESTABLISHED: ``S1``;
    * neither sent a FIN, and one side sent RST after the responder's
      SYN+ACK: that side is RESET, the other ESTABLISHED: ``RSTO`` when the
      originator reset, ``RSTR`` when the responder did;
    * the responder's first and only flag was the RST: it is RESET, the
      originator still SYN_SENT: ``REJ``;
    * the responder sent nothing, the originator only SYNs: ``S0``.

    Anything else (None) is replayed.
    """
    a, b = conn.a, conn.b
    if a.syn_frame != conn.first_frame or a.synack_frame or b.syn_frame:
        return None
    seen = (a.flags_seen | b.flags_seen) & ~COUNT_ONLY
    if not b.packets:
        return "S0" if a.flags_seen & ~COUNT_ONLY == SYN else None
    rst = conn.rst_from
    if rst is None:
        if seen & RST or not b.synack_frame or _first_frame(conn, b) != b.synack_frame:
            return None
        a_fin = a.flags_seen & FIN
        b_fin = b.flags_seen & FIN
        if a.fin_frame and b.fin_frame:
            return "SF"
        if not seen & FIN:
            return "S1"
        # A FIN the tracker did not keep is replayed last: not this shape.
        if a.fin_frame and not b_fin:
            return "S2"
        if b.fin_frame and not a_fin:
            return "S3"
        return None
    if seen & FIN:
        return None
    if rst is b:
        if (
            not b.synack_frame
            and not a.flags_seen & RST
            and _first_frame(conn, b) == conn.rst_frame
        ):
            return "REJ"
        if (
            b.synack_frame
            and conn.rst_frame > b.synack_frame
            and not a.flags_seen & RST
            and _first_frame(conn, b) == b.synack_frame
        ):
            return "RSTR"
        return None
    if b.synack_frame and not b.flags_seen & RST and _first_frame(conn, b) == b.synack_frame:
        return "RSTO"
    return None


def zeek_conn_state(conn: Tracker) -> str:
    """Zeek's ``conn_state`` for the connection (``conn_state()`` in main.zeek)."""
    common = _common_conn_state(conn)
    if common is not None:
        return common
    return replayed_conn_state(conn)


def replayed_conn_state(conn: Tracker) -> str:
    """:func:`zeek_conn_state` by replaying Zeek's endpoint machine, whatever the shape."""
    orig, resp = _replay(conn, _events(conn))
    os_, rs = orig.state, resp.state
    o_inactive = os_ in (Zeek.INACTIVE, Zeek.PARTIAL)
    r_inactive = rs in (Zeek.INACTIVE, Zeek.PARTIAL)
    if rs is Zeek.RESET:
        if os_ in (Zeek.SYN_SENT, Zeek.SYN_ACK_SENT) or (
            os_ is Zeek.RESET and orig.half.bytes == 0 and resp.half.bytes == 0
        ):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if os_ is Zeek.RESET:
        if r_inactive:
            return "RSTOS0" if _rst_before_other_flags(conn, orig.half) else "OTH"
        return "RSTO"
    if rs is Zeek.CLOSED and os_ is Zeek.CLOSED:
        return "SF"
    if os_ is Zeek.CLOSED:
        return "SH" if r_inactive else "S2"
    if rs is Zeek.CLOSED:
        return "SHR" if o_inactive else "S3"
    if os_ is Zeek.SYN_SENT and rs is Zeek.INACTIVE:
        return "S0"
    if os_ is Zeek.ESTABLISHED and rs is Zeek.ESTABLISHED:
        return "S1"
    return "OTH"
