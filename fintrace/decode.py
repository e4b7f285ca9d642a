"""Decode packet records into TCP segments.

:class:`Decoder` is a :class:`~fintrace.reader.RecordSink`: it decodes each
packet record the reader gives it and hands the TCP segment to a
:class:`SegmentSink` (the flow table, in ``analyze``) as the fields of a
:data:`Segment`, so no object is made per packet on the way.
:func:`segments` does the same over record tuples and yields segment tuples.
The decoder has two paths that must agree exactly (a test runs both over
every capture): a fast path, inline in :meth:`Decoder.record`, for the
shapes that make up nearly all traffic (Ethernet, Linux cooked and raw IP
carrying an unfragmented IPv4 or IPv6 packet with TCP right after the IP
header), and :func:`decode_packet`, the general path, for everything else:
VLAN stacks of any depth, PPPoE, MPLS, BSD loopback, IPv4 options, IPv6
extension headers, fragments, tunnels, ICMP errors quoting a TCP header, and
all the ways a packet can be cut short or lie about its lengths.

The flow key is the raw bytes ``src ip + dst ip + src port + dst port`` (12
bytes for IPv4, 36 for IPv6): one slice, one dictionary lookup later.

This module does not use dpkt's decoders: they stop at two VLAN tags, guess
what follows an MPLS stack only for a 20-byte IPv4 header, and turn a
malformed layer into an undecoded payload without saying why; fintrace must
count every packet it cannot use under a precise reason.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from fintrace.model import SkipReason
from fintrace.reader import FIELD_LOADS, LT_NO_PACKET, RecordSink, u32_be
from fintrace.reassembly import Reassembler

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Iterator

    from mypy_extensions import i64

    from fintrace.reader import Record

#: ``(frame, ts, key, seq, ack, flags, payload_len, window, wscale)``.
#: ``wscale`` is the window-scale option of a SYN, else -1. ``flags`` is the
#: TCP flags byte, plus the ``COUNT_ONLY`` bits below for segments Wireshark
#: files under a stream but whose header cannot drive the state machine.
Segment = tuple[int, float, bytes, int, int, int, int, int, int]

FIN: Final = 1
SYN: Final = 2
RST: Final = 4
PSH: Final = 8
ACK: Final = 16
URG: Final = 32
ECE: Final = 64
CWR: Final = 128
#: A TCP header quoted inside an ICMP error message.
QUOTED: Final = 0x1000
#: A TCP header whose data offset is below 5 words.
BOGUS_HEADER: Final = 0x2000
#: A TCP header cut short (16 to 19 bytes: ports, numbers, flags and window).
SHORT_HEADER: Final = 0x4000
COUNT_ONLY: Final = QUOTED | BOGUS_HEADER | SHORT_HEADER

# Link types (https://www.tcpdump.org/linktypes.html)
LT_NULL: Final = 0
LT_ETHERNET: Final = 1
LT_RAW_12: Final = 12
LT_RAW_14: Final = 14
LT_LOOP: Final = 108
LT_RAW: Final = 101
LT_LINUX_SLL: Final = 113
LT_IPV4: Final = 228
LT_IPV6: Final = 229
LT_LINUX_SLL2: Final = 276
LT_PPP: Final = 9
LT_PPP_HDLC: Final = 50
LT_C_HDLC: Final = 104
LT_IPOIB: Final = 242
SUPPORTED_LINKTYPES = frozenset(
    {
        LT_NULL,
        LT_ETHERNET,
        LT_RAW_12,
        LT_RAW_14,
        LT_LOOP,
        LT_RAW,
        LT_LINUX_SLL,
        LT_IPV4,
        LT_IPV6,
        LT_LINUX_SLL2,
        LT_PPP,
        LT_PPP_HDLC,
        LT_C_HDLC,
        LT_IPOIB,
    }
)

ET_IPV4: Final = 0x0800
ET_IPV6: Final = 0x86DD
# Wireshark 4.0 decodes these as VLAN tags (0x9100 is its default QinQ
# preference); a frame it does not decode must not start a stream here.
ET_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
ET_MPLS: Final = frozenset({0x8847, 0x8848})
ET_PPPOE_SESSION: Final = 0x8864

PROTO_TCP: Final = 6
IPV6_EXTENSIONS: Final = frozenset({0, 43, 60, 135, 139, 140})
IPV6_FRAGMENT: Final = 44
IPV6_AH: Final = 51
MAX_IPV6_EXTENSIONS: Final = 16
MAX_TUNNEL_DEPTH: Final = 4
VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081

_u16: Final = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_ipv4: Final = struct.Struct(">BxHHHxB").unpack_from  # vihl, total, id, frag, proto
_ipv6: Final = struct.Struct(">IHB").unpack_from  # vtf, payload length, next header
_tcp: Final = struct.Struct(">IIBBH").unpack_from  # seq, ack, offset, flags, window
_tcp_short: Final = struct.Struct(">IIBBH").unpack_from
_SEQ_ACK: Final = struct.Struct(">II").unpack_from


class Decoded:
    """What :func:`decode_packet` found in one packet (general path only)."""

    __slots__ = ("ack", "flags", "key", "payload_len", "seq", "window", "wscale")

    def __init__(
        self,
        key: bytes,
        seq: int,
        ack: int,
        flags: int,
        payload_len: int,
        window: int,
        wscale: int,
    ) -> None:
        self.key = key
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.payload_len = payload_len
        self.window = window
        self.wscale = wscale


def window_scale(opts: bytes) -> int:
    """The shift count of a window-scale option in ``opts``, or -1."""
    return _window_scale_in(opts, 0, len(opts))


def _window_scale_in(buf: bytes, start: i64, end: i64) -> int:
    """:func:`window_scale` of the options ``buf[start:end]``, read in place (``end``
    at most ``len(buf)``): compiled, no slice made for them."""
    i = start
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        olen = buf[i + 1]
        if olen < 2:
            break
        if kind == 3 and olen == 3 and i + 2 < end:
            return min(buf[i + 2], 14)
        i += olen
    return -1


def _syn_window_scale(buf: bytes, tcp: i64, hlen: i64, end: i64) -> int | None:
    """The window scale (or -1) of a SYN whose ``hlen``-byte TCP header starts at
    ``tcp``; None when the snap length cut its options (the general path says so)."""
    if tcp + hlen > end:
        return None
    return _window_scale_in(buf, tcp + 20, tcp + hlen)


# -- general path ---------------------------------------------------------------


def decode_packet(
    linktype: int, pkt: bytes, origlen: int, frags: Reassembler, frame: int
) -> Decoded | SkipReason:
    """Decode one packet (``pkt`` is exactly its captured bytes)."""
    if linktype == LT_NO_PACKET:
        return SkipReason.NOT_A_PACKET
    if linktype == LT_ETHERNET:
        return _ethernet(pkt, 0, origlen, frags, frame, 0)
    # Wireshark's "ip" dissector (raw IP, and LINKTYPE_IPV4) goes by the
    # version nibble; LINKTYPE_IPV6 goes to its IPv6 dissector, which stops at
    # any other version.
    if linktype in (LT_RAW, LT_RAW_12, LT_RAW_14, LT_IPV4):
        if not pkt:
            return SkipReason.TRUNCATED_IP
        v = pkt[0] >> 4
        if v == 4:
            return _ipv4_packet(pkt, 0, origlen, frags, frame, 0)
        if v == 6:
            return _ipv6_packet(pkt, 0, origlen, frags, frame, 0)
        return SkipReason.NOT_IP
    if linktype == LT_IPV6:
        return _ipv6_packet(pkt, 0, origlen, frags, frame, 0)
    if linktype == LT_LINUX_SLL:
        if len(pkt) < 16:
            return SkipReason.TRUNCATED_LINK
        return _ethertype(_u16(pkt, 14)[0], pkt, 16, origlen, frags, frame, 0)
    if linktype == LT_LINUX_SLL2:
        if len(pkt) < 20:
            return SkipReason.TRUNCATED_LINK
        return _ethertype(_u16(pkt, 0)[0], pkt, 20, origlen, frags, frame, 0)
    if linktype == LT_IPOIB:
        # 40 bytes of link addresses, the ethertype, 2 reserved bytes.
        if len(pkt) < 44:
            return SkipReason.TRUNCATED_LINK
        return _ethertype(_u16(pkt, 40)[0], pkt, 44, origlen, frags, frame, 0)
    if linktype == LT_C_HDLC:
        if len(pkt) < 4:
            return SkipReason.TRUNCATED_LINK
        return _ethertype(_u16(pkt, 2)[0], pkt, 4, origlen, frags, frame, 0)
    if linktype in (LT_PPP, LT_PPP_HDLC):
        off = 2 if pkt[:2] == b"\xff\x03" else 0
        if len(pkt) < off + 2:
            return SkipReason.TRUNCATED_LINK
        proto = _u16(pkt, off)[0]
        if proto == 0x0021:
            return _ipv4_packet(pkt, off + 2, origlen, frags, frame, 0)
        if proto == 0x0057:
            return _ipv6_packet(pkt, off + 2, origlen, frags, frame, 0)
        return SkipReason.NOT_IP
    if linktype in (LT_NULL, LT_LOOP):
        if len(pkt) < 4:
            return SkipReason.TRUNCATED_LINK
        fam = pkt[0:4]
        # The family is in the capturing host's byte order for NULL (Wireshark
        # takes either) and in network order for LOOP (Wireshark takes only that).
        if linktype == LT_NULL and fam[0]:
            value = int.from_bytes(fam, "little")
        else:
            value = int.from_bytes(fam, "big")
        if value == 2:
            return _ipv4_packet(pkt, 4, origlen, frags, frame, 0)
        # IPv6 on NetBSD/OpenBSD, FreeBSD, Darwin; Wireshark reads 23 as IPX
        # and knows no 10.
        if value in (24, 28, 30):
            return _ipv6_packet(pkt, 4, origlen, frags, frame, 0)
        return SkipReason.NOT_IP
    return SkipReason.UNSUPPORTED_LINKTYPE


def _ethernet(
    pkt: bytes, off: int, origlen: int, frags: Reassembler, frame: int, depth: int
) -> Decoded | SkipReason:
    if len(pkt) < off + 14:
        return SkipReason.TRUNCATED_LINK
    et = _u16(pkt, off + 12)[0]
    if et <= 1500:
        # An 802.3 length: IP follows only an LLC/SNAP header with a zero OUI.
        if pkt[off + 14 : off + 20] != b"\xaa\xaa\x03\x00\x00\x00" or len(pkt) < off + 22:
            return SkipReason.NOT_IP
        return _ethertype(_u16(pkt, off + 20)[0], pkt, off + 22, origlen, frags, frame, depth)
    return _ethertype(et, pkt, off + 14, origlen, frags, frame, depth)


def _ethertype(
    et: int, pkt: bytes, off: int, origlen: int, frags: Reassembler, frame: int, depth: int
) -> Decoded | SkipReason:
    n = len(pkt)
    while et in ET_VLAN:
        if n < off + 4:
            return SkipReason.TRUNCATED_LINK
        et = _u16(pkt, off + 2)[0]
        off += 4
    if et == ET_IPV4:
        return _ipv4_packet(pkt, off, origlen, frags, frame, depth)
    if et == ET_IPV6:
        return _ipv6_packet(pkt, off, origlen, frags, frame, depth)
    if et in ET_MPLS:
        while True:
            if n < off + 4:
                return SkipReason.TRUNCATED_LINK
            bottom = pkt[off + 2] & 1
            off += 4
            if bottom:
                break
        if n <= off:
            return SkipReason.TRUNCATED_IP
        v = pkt[off] >> 4
        if v == 4:
            return _ipv4_packet(pkt, off, origlen, frags, frame, depth)
        if v == 6:
            return _ipv6_packet(pkt, off, origlen, frags, frame, depth)
        return SkipReason.NOT_IP
    if et == ET_PPPOE_SESSION:
        if n < off + 8:
            return SkipReason.TRUNCATED_LINK
        proto = _u16(pkt, off + 6)[0]
        if proto == 0x0021:
            return _ipv4_packet(pkt, off + 8, origlen, frags, frame, depth)
        if proto == 0x0057:
            return _ipv6_packet(pkt, off + 8, origlen, frags, frame, depth)
        return SkipReason.NOT_IP
    return SkipReason.NOT_IP


def _ipv4_packet(
    pkt: bytes, off: int, origlen: int, frags: Reassembler, frame: int, depth: int
) -> Decoded | SkipReason:
    n = len(pkt)
    if n < off + 20:
        return SkipReason.TRUNCATED_IP
    vihl, total, ident, frag, proto = _ipv4(pkt, off)
    if vihl >> 4 != 4:
        return SkipReason.BAD_IP_HEADER
    ihl = (vihl & 15) * 4
    if ihl < 20:
        return SkipReason.BAD_IP_HEADER
    if n < off + ihl:
        return SkipReason.TRUNCATED_IP
    reported = (origlen if origlen >= n else n) - off
    if total == 0:
        # TSO / BIG TCP: the stack left the length to the hardware.
        total = reported
    elif total < ihl:
        return SkipReason.BAD_IP_HEADER
    elif total > reported:
        # A length past the end of the frame lies; like Wireshark, count only
        # the bytes the frame had on the wire.
        total = reported
    src = pkt[off + 12 : off + 16]
    dst = pkt[off + 16 : off + 20]
    if frag & 0x3FFF:
        more = bool(frag & 0x2000)
        foff = (frag & 0x1FFF) * 8
        data = pkt[off + ihl : off + total]
        whole = frags.add(
            b"4" + src + dst + bytes((proto,)) + ident.to_bytes(2, "big"), foff, data, more
        )
        if whole is None:
            return SkipReason.IP_FRAGMENT
        if isinstance(whole, SkipReason):
            return whole
        return _transport(proto, src, dst, whole, 0, len(whole), len(whole), frags, frame, depth)
    end = min(off + total, n)
    return _transport(proto, src, dst, pkt, off + ihl, end, total - ihl, frags, frame, depth)


def _ipv6_packet(
    pkt: bytes, off: int, origlen: int, frags: Reassembler, frame: int, depth: int
) -> Decoded | SkipReason:
    n = len(pkt)
    if n < off + 40:
        return SkipReason.TRUNCATED_IP
    vtf, plen, nh = _ipv6(pkt, off)
    if vtf >> 28 != 6:
        return SkipReason.BAD_IP_HEADER
    src = pkt[off + 8 : off + 24]
    dst = pkt[off + 24 : off + 40]
    p = off + 40
    jumbo = plen == 0
    for _ in range(MAX_IPV6_EXTENSIONS + 1):
        if nh in IPV6_EXTENSIONS:
            if n < p + 8:
                return SkipReason.TRUNCATED_IP
            hlen = (pkt[p + 1] + 1) * 8
            if nh == 0 and jumbo:
                j = _jumbo_length(pkt[p + 2 : p + hlen])
                if j:
                    plen = j
            nh = pkt[p]
            p += hlen
        elif nh == IPV6_AH:
            if n < p + 8:
                return SkipReason.TRUNCATED_IP
            hlen = (pkt[p + 1] + 2) * 4
            nh = pkt[p]
            p += hlen
        elif nh == IPV6_FRAGMENT:
            if n < p + 8:
                return SkipReason.TRUNCATED_IP
            nxt = pkt[p]
            fo = _u16(pkt, p + 2)[0]
            ident = pkt[p + 4 : p + 8]
            p += 8
            total = plen if plen else (origlen - off - 40 if origlen > off + 40 else n - off - 40)
            end = min(off + 40 + total, n)
            if end < p:
                return SkipReason.BAD_IP_HEADER
            whole = frags.add(b"6" + src + dst + ident, fo & 0xFFF8, pkt[p:end], bool(fo & 1))
            if whole is None:
                return SkipReason.IP_FRAGMENT
            if isinstance(whole, SkipReason):
                return whole
            return _fragmentable_part(nxt, src, dst, whole, frags, frame, depth)
        else:
            break
    else:
        return SkipReason.IPV6_EXTENSION_CHAIN
    if p > n:
        return SkipReason.TRUNCATED_IP
    reported = (origlen if origlen >= n else n) - off - 40
    if plen == 0 or plen > reported:
        # Jumbogram without its option, or a length past the end of the
        # frame: like Wireshark, count the bytes the frame had on the wire.
        plen = reported
    total_end = off + 40 + plen
    if total_end < p:
        return SkipReason.BAD_IP_HEADER
    end = min(total_end, n)
    return _transport(nh, src, dst, pkt, p, end, total_end - p, frags, frame, depth)


def _fragmentable_part(
    nh: int, src: bytes, dst: bytes, whole: bytes, frags: Reassembler, frame: int, depth: int
) -> Decoded | SkipReason:
    """A reassembled IPv6 payload: it may open with more extension headers
    (destination options), as it does in Wireshark's reassembled view."""
    p = 0
    n = len(whole)
    for _ in range(MAX_IPV6_EXTENSIONS + 1):
        if nh in IPV6_EXTENSIONS:
            if n < p + 8:
                return SkipReason.BAD_IP_HEADER
            hlen = (whole[p + 1] + 1) * 8
        elif nh == IPV6_AH:
            if n < p + 8:
                return SkipReason.BAD_IP_HEADER
            hlen = (whole[p + 1] + 2) * 4
        else:
            if p > n:
                return SkipReason.BAD_IP_HEADER
            return _transport(nh, src, dst, whole, p, n, n - p, frags, frame, depth)
        nh = whole[p]
        p += hlen
    return SkipReason.IPV6_EXTENSION_CHAIN


def _jumbo_length(opts: bytes) -> int:
    i = 0
    while i + 1 < len(opts):
        t = opts[i]
        if t == 0:
            i += 1
            continue
        ln = opts[i + 1]
        if t == 0xC2 and ln == 4 and i + 6 <= len(opts):
            return int(_u32(opts, i + 2)[0])
        i += 2 + ln
    return 0


def _transport(
    proto: int,
    src: bytes,
    dst: bytes,
    pkt: bytes,
    p: int,
    end: int,
    length: int,
    frags: Reassembler,
    frame: int,
    depth: int,
) -> Decoded | SkipReason:
    """The layer above IP: TCP, or a tunnel or ICMP error that holds TCP."""
    if proto == PROTO_TCP:
        return _tcp_segment(src, dst, pkt, p, end, length, 0)
    if depth >= MAX_TUNNEL_DEPTH:
        return SkipReason.TUNNEL
    if proto == 4:  # IPv4 in IP
        return _ipv4_packet(pkt[:end], p, end, frags, frame, depth + 1)
    if proto == 41:  # IPv6 in IP
        return _ipv6_packet(pkt[:end], p, end, frags, frame, depth + 1)
    if proto == 47:  # GRE
        return _gre(pkt[:end], p, frags, frame, depth + 1)
    if proto == 17 and end - p >= 16:
        return _udp_tunnel(pkt[:end], p, frags, frame, depth + 1)
    if proto in (1, 58):
        return _icmp_error(proto, pkt[:end], p)
    return SkipReason.NOT_TCP


def _udp_tunnel(
    pkt: bytes, p: int, frags: Reassembler, frame: int, depth: int
) -> Decoded | SkipReason:
    """VXLAN and GENEVE, on their ports as Wireshark decodes them by default."""
    ports = (_u16(pkt, p)[0], _u16(pkt, p + 2)[0])
    if VXLAN_PORT in ports:
        return _ethernet(pkt, p + 16, len(pkt), frags, frame, depth)
    if GENEVE_PORT in ports:
        # 8 bytes of header, then options of the length it gives in words.
        q = p + 16 + (pkt[p + 8] & 0x3F) * 4
        ptype = _u16(pkt, p + 10)[0]
        if ptype == 0x6558:
            return _ethernet(pkt, q, len(pkt), frags, frame, depth)
        return _ethertype(ptype, pkt, q, len(pkt), frags, frame, depth)
    return SkipReason.NOT_TCP


def _gre(pkt: bytes, p: int, frags: Reassembler, frame: int, depth: int) -> Decoded | SkipReason:
    n = len(pkt)
    if n < p + 4:
        return SkipReason.NOT_TCP
    flags, ptype = struct.unpack_from(">HH", pkt, p)
    if flags & 0x0007:  # version 1 is PPTP's enhanced GRE: PPP, usually encrypted
        return SkipReason.TUNNEL
    p += 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
    if ptype == ET_IPV4:
        return _ipv4_packet(pkt, p, n, frags, frame, depth)
    if ptype == ET_IPV6:
        return _ipv6_packet(pkt, p, n, frags, frame, depth)
    if ptype == 0x6558:  # transparent Ethernet bridging
        return _ethernet(pkt, p, n, frags, frame, depth)
    if ptype == 0x88BE:  # ERSPAN type II; type I (no sequence number) has no header
        return _ethernet(pkt, p + (8 if flags & 0x1000 else 0), n, frags, frame, depth)
    if ptype == 0x22EB:  # ERSPAN type III, and its platform subheader when O is set
        if n < p + 12:
            return SkipReason.TUNNEL
        return _ethernet(pkt, p + (20 if pkt[p + 11] & 1 else 12), n, frags, frame, depth)
    return SkipReason.TUNNEL


def _icmp_error(proto: int, pkt: bytes, p: int) -> Decoded | SkipReason:
    """An ICMP error quoting a TCP header; Wireshark files it under that stream."""
    n = len(pkt)
    if n < p + 8:
        return SkipReason.NOT_TCP
    itype = pkt[p]
    if proto == 1 and itype not in (3, 4, 5, 11, 12):
        return SkipReason.NOT_TCP
    if proto == 58 and itype not in (1, 2, 3, 4):
        return SkipReason.NOT_TCP
    q = p + 8
    if proto == 1:
        if n < q + 20 or pkt[q] >> 4 != 4:
            return SkipReason.NOT_TCP
        ihl = (pkt[q] & 15) * 4
        # Wireshark does not reassemble quoted fragments: a first fragment
        # (MF set) quotes no TCP for it either.
        if pkt[q + 9] != PROTO_TCP or ihl < 20 or _u16(pkt, q + 6)[0] & 0x3FFF:
            return SkipReason.NOT_TCP
        src, dst, t = pkt[q + 12 : q + 16], pkt[q + 16 : q + 20], q + ihl
    else:
        if n < q + 40 or pkt[q] >> 4 != 6:
            return SkipReason.NOT_TCP
        src, dst = pkt[q + 8 : q + 24], pkt[q + 24 : q + 40]
        nh, t = _quoted_ipv6_transport(pkt, q)
        if nh != PROTO_TCP:
            return SkipReason.NOT_TCP
    if n < t + 16:
        return SkipReason.NOT_TCP
    seq, ack, _offb, flags, win = _tcp_short(pkt, t + 4)
    key = src + dst + pkt[t : t + 4]
    return Decoded(key, seq, ack, flags | QUOTED, 0, win, -1)


def _quoted_ipv6_transport(pkt: bytes, q: int) -> tuple[int, int]:
    """(next header, offset) past the extension headers of a quoted IPv6 packet.

    Wireshark reads TCP behind extension headers in a quoted packet too, but
    not behind a fragment header other than an atomic one.
    """
    n = len(pkt)
    nh = pkt[q + 6]
    p = q + 40
    for _ in range(MAX_IPV6_EXTENSIONS):
        if nh == PROTO_TCP or n < p + 8:
            break
        if nh in IPV6_EXTENSIONS:
            hlen = (pkt[p + 1] + 1) * 8
        elif nh == IPV6_AH:
            hlen = (pkt[p + 1] + 2) * 4
        elif nh == IPV6_FRAGMENT and _u16(pkt, p + 2)[0] & 0xFFF9 == 0:
            hlen = 8
        else:
            break
        nh = pkt[p]
        p += hlen
    return nh, p


def _tcp_segment(
    src: bytes, dst: bytes, pkt: bytes, t: int, end: int, length: int, extra: int
) -> Decoded | SkipReason:
    avail = end - t
    if avail < 16:
        return SkipReason.TRUNCATED_TCP
    key = src + dst + pkt[t : t + 4]
    seq, ack, offb, flags, win = _tcp(pkt, t + 4)
    hlen = (offb >> 4) * 4
    if avail < 20:
        return Decoded(key, seq, ack, flags | SHORT_HEADER | extra, 0, win, -1)
    if hlen < 20:
        return Decoded(key, seq, ack, flags | BOGUS_HEADER | extra, 0, win, -1)
    plen = length - hlen
    if plen < 0:
        return Decoded(key, seq, ack, flags | BOGUS_HEADER | extra, 0, win, -1)
    ws = window_scale(pkt[t + 20 : min(t + hlen, end)]) if flags & SYN else -1
    return Decoded(key, seq, ack, flags | extra, plen, win, ws)


# -- the loop -------------------------------------------------------------------


class DecodeStats:
    """What the decode loop saw of one file: frames, time span, skip reasons."""

    __slots__ = ("first_ts", "frames", "last_ts", "skipped")

    def __init__(self, skipped: Counter[str]) -> None:
        self.skipped = skipped
        self.frames = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None


class SegmentSink:
    """Where a :class:`Decoder` puts each TCP segment; this one drops them.

    The arguments are the fields of a :data:`Segment`. The flow table is
    one, so that no object is made per segment on the way to it.
    """

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
        pass


class SegmentList(SegmentSink):
    """Keeps the segments it is given as :data:`Segment` tuples."""

    def __init__(self) -> None:
        self.items: list[Segment] = []

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
        self.items.append((frame, ts, key, seq, ack, flags, plen, win, wscale))


class Decoder(RecordSink):
    """Decodes each packet record it is given into a TCP segment for ``sink``.

    What is not a TCP segment is counted in ``stats``, under its reason.
    Frames are numbered from 1 in record order; :meth:`finish` writes the
    count and the last time into ``stats``. ``general_only`` sends every
    packet through :func:`decode_packet` (the tests prove both paths agree).
    """

    def __init__(
        self,
        sink: SegmentSink,
        stats: DecodeStats,
        frags: Reassembler,
        *,
        general_only: bool = False,
    ) -> None:
        self.sink = sink
        self.stats = stats
        self.frags = frags
        self.fast = not general_only
        self.frame = 0
        self.last_ts = 0.0

    def finish(self) -> None:
        """Write what was seen into the stats (records may still come after)."""
        self.stats.frames = self.frame
        if self.frame:
            self.stats.last_ts = self.last_ts

    def record(self, ts: float, buf: bytes, off: i64, caplen: i64, origlen: i64, lt: i64) -> None:
        frame = self.frame + 1
        self.frame = frame
        self.last_ts = ts
        if frame == 1:
            self.stats.first_ts = ts
        # Fast path: where the IP header starts and its version (0: none).
        if not self.fast:
            ver = 0
        elif lt == LT_ETHERNET:
            ip = off + 14
            if caplen >= 54:
                et = (buf[off + 12] << 8) | buf[off + 13]
                if et == ET_IPV4:
                    ver = 4
                elif et == ET_IPV6 and caplen >= 74:
                    ver = 6
                else:
                    ver = 0
            else:
                ver = 0
        elif lt == LT_LINUX_SLL:
            ip = off + 16
            if caplen >= 56 and buf[off + 14] == 8 and buf[off + 15] == 0:
                ver = 4
            elif caplen >= 76 and buf[off + 14] == 0x86 and buf[off + 15] == 0xDD:
                ver = 6
            else:
                ver = 0
        elif lt == LT_LINUX_SLL2:
            ip = off + 20
            if caplen >= 60 and buf[off] == 8 and buf[off + 1] == 0:
                ver = 4
            elif caplen >= 80 and buf[off] == 0x86 and buf[off + 1] == 0xDD:
                ver = 6
            else:
                ver = 0
        elif lt in (LT_RAW, LT_IPV4, LT_IPV6):
            ip = off
            ver = buf[off] >> 4 if caplen >= 40 else 0
            if ver == 6 and caplen < 60:
                ver = 0
            elif lt == LT_IPV6 and ver != 6:
                ver = 0  # the general path says what is wrong
        else:
            ver = 0
        if ver == 4:
            # TCP right after a 20-byte header, not a fragment, lengths that
            # add up inside the frame, a SYN's options all captured.
            t = ip + 20
            total = (buf[ip + 2] << 8) | buf[ip + 3]
            offb = buf[t + 12]
            if (
                buf[ip] == 0x45
                and buf[ip + 9] == 6
                and not buf[ip + 6] & 0x3F
                and not buf[ip + 7]
                and offb >= 0x50
                and 40 <= total <= origlen - (ip - off)
            ):
                hlen = (offb >> 4) << 2
                plen = total - 20 - hlen
                key = buf[ip + 12 : ip + 24]
                if plen >= 0 and self._tcp(frame, ts, key, buf, t, hlen, plen, off + caplen):
                    return
        elif ver == 6:
            t = ip + 40
            plen = (buf[ip + 4] << 8) | buf[ip + 5]
            offb = buf[t + 12]
            if (
                buf[ip + 6] == 6
                and buf[ip] >> 4 == 6
                and offb >= 0x50
                and plen
                and plen + 40 <= origlen - (ip - off)
            ):
                hlen = (offb >> 4) << 2
                plen -= hlen
                key = buf[ip + 8 : ip + 44]
                if plen >= 0 and self._tcp(frame, ts, key, buf, t, hlen, plen, off + caplen):
                    return
        # General path.
        d = decode_packet(lt, buf[off : off + caplen], origlen, self.frags, frame)
        if type(d) is Decoded:
            self.sink.segment(
                frame, ts, d.key, d.seq, d.ack, d.flags, d.payload_len, d.window, d.wscale
            )
        else:
            self.stats.skipped[d] += 1  # type: ignore[index]

    def _tcp(
        self, frame: int, ts: float, key: bytes, buf: bytes, t: i64, hlen: i64, plen: i64, end: i64
    ) -> bool:
        """Hand on the TCP header at ``buf[t:]``; False if it is a SYN whose options
        were not all captured (up to ``end``), for the general path to say why."""
        flags = buf[t + 13]
        ws = -1
        if flags & SYN:
            syn_ws = _syn_window_scale(buf, t, hlen, end)
            if syn_ws is None:
                return False
            ws = syn_ws
        # Header fields as machine loads when compiled (see reader.FIELD_LOADS).
        seq: int
        ack: int
        if FIELD_LOADS:
            seq = u32_be(buf, t + 4)
            ack = u32_be(buf, t + 8)
        else:
            seq, ack = _SEQ_ACK(buf, t + 4)
        win = (buf[t + 14] << 8) | buf[t + 15]
        self.sink.segment(frame, ts, key, seq, ack, flags, plen, win, ws)
        return True


def segments(
    records: Iterator[Record],
    stats: DecodeStats,
    frags: Reassembler,
    *,
    general_only: bool = False,
) -> Iterator[Segment]:
    """Every TCP segment of ``records``; what is not one is counted in ``stats``.

    :class:`Decoder` over records given as tuples, with its segments as tuples.
    """
    out = SegmentList()
    items = out.items
    decoder = Decoder(out, stats, frags, general_only=general_only)
    try:
        for ts, buf, off, caplen, origlen, lt in records:
            decoder.record(ts, buf, off, caplen, origlen, lt)
            if items:
                yield items.pop()
    finally:
        decoder.finish()
