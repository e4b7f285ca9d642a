"""Build ``captures/formats/``: every file format and layer fintrace must read.

Deterministic (fixed addresses, sequence numbers, timestamps, gzip mtime):
run from anywhere, ``python captures/make_formats.py``. Scapy builds the IP
and TCP headers (correct checksums); the containers (pcap of both byte
orders and resolutions, pcapng sections, interfaces, options and block
types) and the link layers are written byte by byte here, because scapy's
writers cannot say most of what has to be said.

Most captures hold the same *pair*, so one table of expectations covers
them (``tests/test_formats.py`` states it by hand):

* frames 1-9: connection A, a graceful close started by the client: SYN,
  SYN+ACK, ACK, 18 bytes of request, 19 bytes of response, FIN+ACK, ACK,
  FIN+ACK, ACK (client ``10.0.0.1:40000`` or ``fd00::1:40000``, server
  ``10.0.0.2:80`` or ``fd00::2:80``);
* frame 10: a UDP datagram (skipped as ``not_tcp``);
* frames 11-15: connection B, reset by the server: SYN, SYN+ACK, ACK, 5
  bytes from the client, RST+ACK (client ``…::1`` / ``10.0.0.1`` port 40001,
  server ``…::3`` / ``10.0.0.3`` port 443).

Packet times are ``T0 + 1 ms × (frame number)`` unless a capture says
otherwise.
"""

from __future__ import annotations

import gzip
import struct
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).parent))

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrSegmentRouting,
)
from scapy.layers.l2 import GRE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from craft import T0, Flow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

OUT = Path(__file__).parent / "formats"
T0_US = int(T0) * 1_000_000
REQUEST = b"GET / HTTP/1.0\r\n\r\n"  # 18 bytes
RESPONSE = b"HTTP/1.0 200 OK\r\n\r\n"  # 19 bytes
SYN_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 7)]


@dataclass(frozen=True, slots=True)
class Rec:
    """One packet record: time in nanoseconds since the epoch, bytes, wire length."""

    ts_ns: int
    data: bytes
    origlen: int = -1
    iface: int = 0

    @property
    def wire(self) -> int:
        return len(self.data) if self.origlen < 0 else self.origlen


def us(t: float) -> int:
    """Microseconds since the epoch of a Flow time.

    Flow adds its 1 ms steps in floating point, which drifts by fractions of
    a microsecond; every time made here is a multiple of 10 µs.
    """
    return round(t * 100_000) * 10


def ip_recs(pkts: Iterable[Packet]) -> list[tuple[int, bytes]]:
    return [(us(float(p.time)), bytes(p)) for p in pkts]


# -- conversations ----------------------------------------------------------------


def v4(host: int) -> str:
    return f"10.0.0.{host}"


def v6(host: int) -> str:
    return f"fd00::{host}"


def graceful(client: tuple[str, int], server: tuple[str, int], t: float) -> list[Packet]:
    f = Flow(client=client, server=server, t=t, ether=False)
    f.c("S", options=SYN_OPTS)
    f.s("SA", options=SYN_OPTS)
    f.c("A")
    f.c("PA", REQUEST)
    f.s("PA", RESPONSE)
    f.c("FA")
    f.s("A")
    f.s("FA")
    f.c("A")
    return f.packets


def reset(client: tuple[str, int], server: tuple[str, int], t: float) -> list[Packet]:
    f = Flow(client=client, server=server, t=t, ether=False, client_isn=70_000, server_isn=90_000)
    f.c("S", options=SYN_OPTS)
    f.s("SA", options=SYN_OPTS)
    f.c("A")
    f.c("PA", b"hello")
    f.s("RA")
    return f.packets


def udp(v: int, t: float) -> Packet:
    ip: Packet = IP(src=v4(1), dst=v4(53)) if v == 4 else IPv6(src=v6(1), dst=v6(53))
    p = ip / UDP(sport=5353, dport=53) / Raw(b"\x12\x34\x01\x00\x00\x00")
    p.time = t
    return p


def pair(first: int = 4, second: int = 6, t0: float = T0) -> list[Packet]:
    """Connection A (IPv``first``), a UDP datagram, connection B (IPv``second``)."""
    host = v4 if first == 4 else v6
    a = graceful((host(1), 40000), (host(2), 80), t0)
    filler = udp(first, t0 + 0.010)
    host = v4 if second == 4 else v6
    b = reset((host(1), 40001), (host(3), 443), t0 + 0.010)
    return [*a, filler, *b]


# -- link layers ------------------------------------------------------------------

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def ethertype_of(ip: bytes) -> int:
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


def ether(ip: bytes, tags: Iterable[tuple[int, int]] = (), pad: bool = True) -> bytes:
    """Ethernet II; ``tags`` are (TPID, VLAN id) from the outside in."""
    head = MAC_B + MAC_A
    for tpid, vid in tags:
        head += struct.pack(">HH", tpid, vid)
    frame = head + struct.pack(">H", ethertype_of(ip)) + ip
    # Short frames are padded on the wire; the IP length says where IP ends.
    return frame.ljust(60, b"\0") if pad else frame


def arp() -> bytes:
    body = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + MAC_A + bytes([10, 0, 0, 1])
    body += bytes(6) + bytes([10, 0, 0, 2])
    return (b"\xff" * 6 + MAC_A + b"\x08\x06" + body).ljust(60, b"\0")


def pppoe(ip: bytes) -> bytes:
    proto = 0x0021 if ip[0] >> 4 == 4 else 0x0057
    ppp = struct.pack(">H", proto) + ip
    sess = struct.pack(">BBHH", 0x11, 0x00, 0x1234, len(ppp)) + ppp
    return MAC_B + MAC_A + b"\x88\x64" + sess


def mpls(ip: bytes, labels: list[int]) -> bytes:
    stack = b""
    for i, label in enumerate(labels):
        bottom = 1 if i == len(labels) - 1 else 0
        stack += struct.pack(">I", (label << 12) | (bottom << 8) | 64)
    return MAC_B + MAC_A + b"\x88\x47" + stack + ip


def sll(ip: bytes) -> bytes:
    # Packet type 0 (to us), ARPHRD_ETHER, a 6-byte address padded to 8.
    return struct.pack(">HHH", 0, 1, 6) + MAC_A + b"\0\0" + struct.pack(">H", ethertype_of(ip)) + ip


def sll2(ip: bytes) -> bytes:
    head = struct.pack(">HHIHBB", ethertype_of(ip), 0, 2, 1, 0, 6) + MAC_A + b"\0\0"
    return head + ip


# BSD address families for IPv6: NetBSD/OpenBSD, FreeBSD, Darwin.
AF_INET6_BSD = (24, 28, 30)


def null(ip: bytes, order: str, family6: int = 24) -> bytes:
    fam = 2 if ip[0] >> 4 == 4 else family6
    return fam.to_bytes(4, order) + ip  # type: ignore[arg-type]


def ppp(ip: bytes, hdlc: bool) -> bytes:
    proto = 0x0021 if ip[0] >> 4 == 4 else 0x0057
    return (b"\xff\x03" if hdlc else b"") + struct.pack(">H", proto) + ip


def chdlc(ip: bytes) -> bytes:
    return b"\x0f\x00" + struct.pack(">H", ethertype_of(ip)) + ip


# -- containers -------------------------------------------------------------------


def pcap(
    recs: Iterable[Rec],
    linktype: int,
    *,
    endian: str = "<",
    nano: bool = False,
    snaplen: int = 262144,
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for r in recs:
        sec, frac = divmod(r.ts_ns, 1_000_000_000)
        if not nano:
            frac //= 1000
        out.append(struct.pack(endian + "IIII", sec, frac, len(r.data), r.wire) + r.data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + _pad(value)


def options(e: str, *opts: bytes) -> bytes:
    return b"".join(opts) + struct.pack(e + "HH", 0, 0) if opts else b""


def block(e: str, btype: int, body: bytes) -> bytes:
    body = _pad(body)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str, *opts: bytes) -> bytes:
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + options(e, *opts)
    return block(e, 0x0A0D0D0A, body)


def idb(e: str, linktype: int, *opts: bytes, snaplen: int = 0) -> bytes:
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + options(e, *opts))


def epb(e: str, r: Rec, ticks: int, *opts: bytes) -> bytes:
    head = struct.pack(e + "IIIII", r.iface, ticks >> 32, ticks & 0xFFFFFFFF, len(r.data), r.wire)
    return block(e, 6, head + _pad(r.data) + options(e, *opts))


def spb(e: str, r: Rec) -> bytes:
    return block(e, 3, struct.pack(e + "I", r.wire) + r.data)


def opb(e: str, r: Rec, ticks: int) -> bytes:
    """Obsolete packet block (type 2): 16-bit interface id and a drops count."""
    head = struct.pack(
        e + "HHIIII", r.iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(r.data), r.wire
    )
    return block(e, 2, head + r.data)


def isb(e: str, iface: int, ticks: int) -> bytes:
    body = struct.pack(e + "III", iface, ticks >> 32, ticks & 0xFFFFFFFF)
    return block(e, 5, body + options(e, opt(e, 4, struct.pack(e + "Q", 15))))


def nrb(e: str) -> bytes:
    rec = struct.pack(e + "HH", 1, 4 + 8) + _pad(bytes([10, 0, 0, 2]) + b"server\0\0")
    return block(e, 4, rec + struct.pack(e + "HH", 0, 0))


def usec_ticks(r: Rec) -> int:
    return r.ts_ns // 1000


def pcapng_simple(recs: Iterable[Rec], linktype: int, e: str = "<") -> bytes:
    out = [shb(e), idb(e, linktype, snaplen=262144)]
    out += [epb(e, r, usec_ticks(r)) for r in recs]
    return b"".join(out)


# -- helpers to turn packets into records -------------------------------------------


def retime(pkts: list[Packet], t0: float) -> list[Packet]:
    """Give the packets times t0 + 1 ms, t0 + 2 ms, ... in list order."""
    for k, p in enumerate(pkts, 1):
        p.time = t0 + k * 0.001
    return pkts


def recs(pkts: Iterable[Packet], wrap: Callable[[bytes], bytes], iface: int = 0) -> list[Rec]:
    return [Rec(t * 1000, wrap(ip), iface=iface) for t, ip in ip_recs(pkts)]


def write(name: str, data: bytes) -> None:
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    assert len(data) < 100_000, name


def raw(ip: bytes) -> bytes:
    return ip


# -- the captures ---------------------------------------------------------------------


def classic_pcap() -> None:
    """The pair over Ethernet in the four classic pcap variants."""
    base = recs(pair(), ether)
    write("pcap_le_usec.pcap", pcap(base, 1))
    write("pcap_be_usec.pcap", pcap(base, 1, endian=">"))
    # Nanosecond files: every time gets 500 ns more than the microsecond
    # variants, which only a nanosecond reader sees.
    nano = [replace(r, ts_ns=r.ts_ns + 500) for r in base]
    write("pcap_le_nsec.pcap", pcap(nano, 1, nano=True))
    write("pcap_be_nsec.pcap", pcap(nano, 1, endian=">", nano=True))
    # Containers named after the other one, recognised by content.
    write("pcapng_named.pcap", pcapng_simple(base, 1))
    write("pcap_named.pcapng", pcap(base, 1))
    # gzip, recognised by content whatever the name says.
    write("gzip_content.pcap", gzip.compress(pcap(base, 1), mtime=0))
    write("gzip_pcapng.pcapng.gz", gzip.compress(pcapng_simple(base, 1, ">"), mtime=0))


def pcapng_sections() -> None:
    """Three sections (little, big, little endian); connection A spans all three.

    Section 1 (LE): interface 0 Ethernet: frames 1-4 (A's handshake, request).
    Section 2 (BE): interface 0 raw IP, interface 1 Ethernet, a name
    resolution block and interface statistics: frames 5-6 of A on
    interface 1, then the UDP datagram and B (frames 7-12) on interface 0.
    Section 3 (LE): interface 0 Linux cooked: frames 13-15 (A's close).
    """
    pk = pair(4, 4)
    a, filler, b = pk[:9], pk[9], pk[10:]
    retime([*a[:6], filler, *b, *a[6:]], T0)
    out = [shb("<", opt("<", 3, b"fintrace-os"), opt("<", 4, b"make_formats.py"))]
    out.append(idb("<", 1, opt("<", 2, b"eth0"), snaplen=262144))
    out += [epb("<", r, usec_ticks(r)) for r in recs(a[:4], ether)]
    out.append(shb(">"))
    out.append(idb(">", 101, opt(">", 2, b"tun0")))
    out.append(idb(">", 1, opt(">", 2, b"eth1")))
    out.append(nrb(">"))
    out += [epb(">", r, usec_ticks(r)) for r in recs(a[4:6], ether, iface=1)]
    out += [epb(">", r, usec_ticks(r)) for r in recs([filler, *b], raw, iface=0)]
    out.append(isb(">", 0, us(T0 + 1)))
    out.append(shb("<"))
    out.append(idb("<", 113))
    out += [epb("<", r, usec_ticks(r), opt("<", 1, b"closing")) for r in recs(a[6:], sll)]
    write("pcapng_sections.pcapng", b"".join(out))


def pcapng_linktypes() -> None:
    """One file, eight interfaces of different link types, a connection on each.

    Interface i carries connection i (client 10.0.0.1:(41000 + i), server
    10.0.0.2:80, graceful, 9 packets); the connections follow one another.
    """
    wraps: list[tuple[int, Callable[[bytes], bytes]]] = [
        (1, ether),
        (101, raw),
        (113, sll),
        (276, sll2),
        (0, lambda ip: null(ip, "little")),
        (108, lambda ip: null(ip, "big")),
        (9, lambda ip: ppp(ip, hdlc=True)),
        (104, chdlc),
    ]
    out = [shb("<")]
    out += [idb("<", lt) for lt, _ in wraps]
    for i, (_lt, wrap) in enumerate(wraps):
        conn = graceful((v4(1), 41000 + i), (v4(2), 80), T0 + i * 0.1)
        out += [epb("<", r, usec_ticks(r)) for r in recs(conn, wrap, iface=i)]
    write("pcapng_linktypes.pcapng", b"".join(out))


#: if_tsoffset of interface 3 of pcapng_tsresol.pcapng, in seconds.
TSOFFSET = 1_600_000_000


def pcapng_tsresol() -> None:
    """Four interfaces whose timestamps count in different units.

    Interface 0: if_tsresol 9 (ns); 1: if_tsresol 3 (ms); 2: if_tsresol
    0x94 (2^-20 s); 3: microseconds counted from if_tsoffset 1600000000 s.
    Connection i runs on interface i and starts at T0 + i seconds: its first
    packet is at T0 + i + 0.001 s. Interfaces 0 and 3 add 250 ns and 0 ns:
    interface 0 writes T0 + 0.001000250 exactly.
    """
    e = "<"
    out = [
        shb(e),
        idb(e, 1, opt(e, 9, bytes([9]))),
        idb(e, 1, opt(e, 9, bytes([3]))),
        idb(e, 1, opt(e, 9, bytes([0x80 | 20]))),
        idb(e, 1, opt(e, 9, bytes([6])), opt(e, 14, struct.pack(e + "q", TSOFFSET))),
    ]
    for i in range(4):
        conn = graceful((v4(1), 42000 + i), (v4(2), 80), float(T0 + i))
        for r in recs(conn, ether, iface=i):
            if i == 0:
                ticks = r.ts_ns + 250
            elif i == 1:
                ticks = r.ts_ns // 1_000_000
            elif i == 2:
                ticks = (r.ts_ns << 20) // 1_000_000_000
            else:
                ticks = r.ts_ns // 1000 - TSOFFSET * 1_000_000
            out.append(epb(e, r, ticks))
    write("pcapng_tsresol.pcapng", b"".join(out))


def pcapng_blocks() -> None:
    """The pair in simple packet blocks and obsolete packet blocks.

    Interface 0 (Ethernet, snap length 96): A's first three packets in
    enhanced packet blocks, the rest of A in simple packet blocks (no
    timestamp); its request goes out padded to 150 bytes on the wire and the
    block holds the first 96. The UDP datagram and B are obsolete packet
    blocks on interface 1 (Ethernet, no snap length).
    """
    e = "<"
    pk = pair(4, 4)
    a = recs(pk[:9], ether)
    rest = recs(pk[9:], ether, iface=1)
    out = [shb(e), idb(e, 1, snaplen=96), idb(e, 1)]
    out += [epb(e, r, usec_ticks(r)) for r in a[:3]]
    for i, r in enumerate(a[3:]):
        if i == 0:
            # The request frame, with Ethernet trailer bytes: 150 on the wire.
            wire = r.data.ljust(150, b"\xee")
            out.append(spb(e, Rec(r.ts_ns, wire[:96], 150)))
        else:
            out.append(spb(e, r))
    out += [opb(e, r, usec_ticks(r)) for r in rest]
    write("pcapng_blocks.pcapng", b"".join(out))


def pcapng_other_blocks() -> None:
    """The pair in a pcapng with blocks between the packets that are not frames.

    A decryption secrets block, a block type reserved for local use, a name
    resolution block, interface statistics; every packet block has options.
    """
    e = "<"
    base = recs(pair(), ether)
    out = [shb(e), idb(e, 1)]
    for i, r in enumerate(base):
        out.append(epb(e, r, usec_ticks(r), opt(e, 2, struct.pack(e + "I", 1))))
        if i == 2:
            out.append(block(e, 0x0A, struct.pack(e + "II", 0x544C534B, 8) + b"CLIENT_R"))
        elif i == 5:
            out.append(block(e, 0x80000001, b"local use"))
        elif i == 8:
            out.append(nrb(e))
            out.append(isb(e, 0, usec_ticks(r)))
    write("pcapng_other_blocks.pcapng", b"".join(out))


def pcapng_record_blocks() -> None:
    """The pair with pcapng blocks that Wireshark 4.0 shows as frames of their own.

    A systemd journal export block after frame 1 (it is frame 2), a custom
    block and a do-not-copy custom block after A's FIN (frames 8, 9). A is
    frames 1, 3-7 and 10-12, the UDP datagram frame 13, B frames 14-18.
    """
    e = "<"
    base = recs(pair(), ether)
    out = [shb(e), idb(e, 1)]
    for i, r in enumerate(base):
        out.append(epb(e, r, usec_ticks(r)))
        if i == 0:
            entry = b"__REALTIME_TIMESTAMP=%d\nMESSAGE=fintrace\n" % (r.ts_ns // 1000 + 500)
            out.append(block(e, 9, entry))
        elif i == 5:
            out.append(block(e, 0x00000BAD, struct.pack(e + "I", 32473) + b"fintrace"))
            out.append(block(e, 0x40000BAD, struct.pack(e + "I", 32473) + b"private!"))
    write("pcapng_record_blocks.pcapng", b"".join(out))


def vlans() -> None:
    """Ethernet with VLAN tags, one tag stack per connection (graceful, 9 packets).

    Connection i: client 10.0.0.1:(43000 + i) → 10.0.0.2:80, stack i:
    0: 802.1Q VLAN 10; 1: priority tag (VLAN 0); 2: 802.1ad 100 + 802.1Q 10
    (QinQ); 3: three tags 88a8/8100/8100; 4: 802.1Q over IPv6 (fd00::1 →
    fd00::2); 5: the old QinQ TPID 0x9100 + 802.1Q 10; 6: TPID 0x9200 + 802.1Q
    10, which Wireshark 4.0 does not take for a VLAN tag (its 9 frames are not
    IP). Then an ARP request inside VLAN 10 (not IP).
    """
    stacks: list[list[tuple[int, int]]] = [
        [(0x8100, 10)],
        [(0x8100, 0)],
        [(0x88A8, 100), (0x8100, 10)],
        [(0x88A8, 100), (0x8100, 200), (0x8100, 10)],
        [(0x8100, 20)],
        [(0x9100, 100), (0x8100, 10)],
        [(0x9200, 100), (0x8100, 10)],
    ]
    out: list[Rec] = []
    for i, tags in enumerate(stacks):
        host = v6 if i == 4 else v4
        conn = graceful((host(1), 43000 + i), (host(2), 80), T0 + i * 0.1)
        out += recs(conn, partial(ether, tags=tags))
    a = arp()
    tagged_arp = a[:12] + b"\x81\x00\x00\x0a" + a[12:]
    out.append(Rec((T0_US + 800_000) * 1000, tagged_arp))
    write("vlan_stacks.pcap", pcap(out, 1))


def llc_snap() -> None:
    """The pair (IPv4, IPv6) in IEEE 802.3 frames (a length, not an ethertype)
    with an LLC/SNAP header, as Wireshark decodes them."""

    def wrap(ip: bytes) -> bytes:
        payload = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack(">H", ethertype_of(ip)) + ip
        return MAC_B + MAC_A + struct.pack(">H", len(payload)) + payload

    write("ethernet_llc_snap.pcap", pcap(recs(pair(4, 6), wrap), 1))


def ipv6_bad_version() -> None:
    """The pair over Ethernet, B's IPv6 headers (ethertype 86dd) saying version 5.

    Wireshark's IPv6 dissector stops at a version other than 6: B is no
    TCP (5 frames with a bad IP header).
    """

    def wrap(ip: bytes) -> bytes:
        if ip[0] >> 4 == 6:
            ip = bytes([0x50 | ip[0] & 0x0F]) + ip[1:]
        return ether(ip)

    write("ipv6_bad_version.pcap", pcap(recs(pair(4, 6), wrap), 1))


def pppoe_capture() -> None:
    base = recs(pair(4, 6), pppoe)
    write("pppoe_session.pcap", pcap(base, 1))


def mpls_capture() -> None:
    """Four graceful connections over MPLS: 1 label IPv4, 3 labels IPv4,
    1 label IPv6, 3 labels IPv6 (client port 44000 + i)."""
    out: list[Rec] = []
    cases = [(4, [16]), (4, [16, 17, 18]), (6, [16]), (6, [16, 17, 18])]
    for i, (v, labels) in enumerate(cases):
        host = v4 if v == 4 else v6
        conn = graceful((host(1), 44000 + i), (host(2), 80), T0 + i * 0.1)
        out += recs(conn, partial(mpls, labels=labels))
    write("mpls_stacks.pcap", pcap(out, 1))


def cooked_and_raw() -> None:
    write("linux_sll.pcap", pcap(recs(pair(4, 6), sll), 113))
    write("linux_sll2.pcap", pcap(recs(pair(6, 4), sll2), 276))
    for lt in (12, 14, 101):
        write(f"raw_ip_lt{lt}.pcap", pcap(recs(pair(4, 6), raw), lt))
    write("raw_ipv4_lt228.pcap", pcap(recs(pair(4, 4), raw), 228))
    write("raw_ipv6_lt229.pcap", pcap(recs(pair(6, 6), raw), 229))
    # The other version on the one-version link types: Wireshark's IPv4
    # dissector hands a version-6 header to IPv6, its IPv6 dissector does not
    # hand a version-4 header back, so B is decoded in the first, not the second.
    write("raw_lt228_with_ipv6.pcap", pcap(recs(pair(4, 6), raw), 228))
    write("raw_lt229_with_ipv4.pcap", pcap(recs(pair(6, 4), raw), 229))


def loopback() -> None:
    """BSD null (0) in both byte orders and OpenBSD loop (108); IPv6 families 24, 28, 30."""
    # Frame 16 of each: a SYN with a family Wireshark does not read as IP
    # (23, Windows' AF_INET6, is IPX to it; LOOP's family is big-endian only).
    syn = bytes(IPv6(src=v6(1), dst=v6(2)) / TCP(sport=40009, dport=80, flags="S"))
    syn4 = bytes(IP(src=v4(1), dst=v4(2)) / TCP(sport=40009, dport=80, flags="S"))
    t = (T0_US + 16_000) * 1000
    le = [*recs(pair(4, 6), lambda ip: null(ip, "little", 30)), Rec(t, null(syn, "little", 23))]
    be = [*recs(pair(4, 6), lambda ip: null(ip, "big", 28)), Rec(t, null(syn, "big", 23))]
    loop = [*recs(pair(6, 4), lambda ip: null(ip, "big", 24)), Rec(t, null(syn4, "little"))]
    write("null_le.pcap", pcap(le, 0))
    write("null_be.pcap", pcap(be, 0))
    write("loop_lt108.pcap", pcap(loop, 108))


def ipv4_options() -> None:
    """The pair over Ethernet, every IPv4 header of A and B carrying options.

    A: record route (39 bytes, header of 60 bytes, the maximum); B: NOP, NOP,
    router alert, end of list (header of 28 bytes).
    """
    pk = pair(4, 4)
    rr = b"\x07\x27\x04" + bytes(36)
    ra = b"\x01\x01\x94\x04\x00\x00\x00\x00"
    out = []
    for i, p in enumerate(pk):
        if p.haslayer(TCP):
            ip = p[IP]
            q = IP(src=ip.src, dst=ip.dst, flags=ip.flags, options=rr if i < 9 else ra)
            new = q / p[TCP]
            new.time = p.time
            out.append(new)
        else:
            out.append(p)
    write("ipv4_options.pcap", pcap(recs(out, ether), 1))


def _with_v6_ext(p: Packet, exts: Packet) -> Packet:
    ip = p[IPv6]
    new: Packet = IPv6(src=ip.src, dst=ip.dst) / exts / p[TCP]
    new.time = p.time
    return new


def ipv6_extensions() -> None:
    """Four IPv6 graceful connections (client port 45000 + i), every packet with
    extension headers: 0 hop-by-hop; 1 routing (segment routing, no
    segments left); 2 destination options; 3 hop-by-hop, destination
    options, routing, an atomic fragment header, destination options."""
    chains: list[Callable[[], Packet]] = [
        IPv6ExtHdrHopByHop,
        lambda: IPv6ExtHdrSegmentRouting(addresses=[v6(2)], segleft=0),
        IPv6ExtHdrDestOpt,
        lambda: (
            IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrSegmentRouting(addresses=[v6(2)], segleft=0)
            / IPv6ExtHdrFragment(id=0x1234, offset=0, m=0)
            / IPv6ExtHdrDestOpt()
        ),
    ]
    out: list[Packet] = []
    for i, chain in enumerate(chains):
        conn = graceful((v6(1), 45000 + i), (v6(2), 80), T0 + i * 0.1)
        out += [_with_v6_ext(p, chain()) for p in conn]
    write("ipv6_ext_headers.pcap", pcap(recs(out, ether), 1))


def _tcp_bytes(p: Packet) -> bytes:
    """The TCP header and payload of an IPv4 or IPv6 packet, checksum filled in."""
    b = bytes(p)
    return b[20:] if b[0] >> 4 == 4 else b[40:]


def _fragmented(p: Packet, cuts: list[int], ident: int, order: list[int]) -> list[Packet]:
    """Fragments of ``p`` cut at byte offsets ``cuts`` (multiples of 8), sent in ``order``."""
    data = _tcp_bytes(p)
    bounds = [0, *cuts, len(data)]
    frags: list[Packet] = []
    for k in range(len(bounds) - 1):
        more = k < len(bounds) - 2
        part = Raw(data[bounds[k] : bounds[k + 1]])
        off = bounds[k] // 8
        head: Packet
        if IP in p:
            flags = "MF" if more else 0
            head = IP(src=p[IP].src, dst=p[IP].dst, id=ident, proto=6, flags=flags, frag=off)
        else:
            frag = IPv6ExtHdrFragment(nh=6, id=ident, offset=off, m=int(more))
            head = IPv6(src=p[IPv6].src, dst=p[IPv6].dst) / frag
        frags.append(head / part)
    out = [frags[k] for k in order]
    for k, f in enumerate(out):
        f.time = float(p.time) + k * 0.0001
    return out


def fragments() -> None:
    """Fragmented TCP segments (Wireshark reassembles them in the completing frame).

    Connection 0 (IPv4, client 10.0.0.1:46000 → 10.0.0.2:80): the SYN
    (28-byte header) in two fragments (16 + 12 bytes of TCP), in order: frames
    1-2, the SYN decoded in frame 2; the request (18 bytes + 20 header) in
    three fragments sent last first (frames 5-7, decoded in 7).
    Connection 1 (IPv6, fd00::1:46001 → fd00::2:80): the response in two
    fragments sent out of order (the second first).
    Then one IPv4 fragment whose datagram never completes (an
    ``unreassembled_fragment``).
    Frames: c0 SYN f1 f2, SA 3, A 4, request 5 6 7, response 8, FA 9, A 10,
    FA 11, A 12 (12 frames, 9 segments); c1 S 13, SA 14, A 15, request 16,
    response 17 18, FA 19, A 20, FA 21, A 22; lone fragment 23.
    """
    c0 = graceful((v4(1), 46000), (v4(2), 80), T0)
    out: list[Packet] = []
    out += _fragmented(c0[0], [16], 0x100, [0, 1])
    out += c0[1:3]
    out += _fragmented(c0[3], [8, 16], 0x101, [2, 1, 0])
    out += c0[4:]
    c1 = graceful((v6(1), 46001), (v6(2), 80), T0 + 0.1)
    out += c1[:4]
    out += _fragmented(c1[4], [24], 0x200, [1, 0])
    out += c1[5:]
    lone = IP(src=v4(1), dst=v4(2), id=0x300, proto=6, flags="MF", frag=0) / Raw(bytes(16))
    lone.time = T0 + 0.2
    out.append(lone)
    write("ip_fragments.pcap", pcap(recs(out, ether), 1))


def snaplen() -> None:
    """The pair over Ethernet cut by snap lengths; lengths still come from the headers.

    snaplen_54.pcap: every frame cut to 54 bytes (Ethernet, 20 bytes of IPv4
    and 20 of TCP: the SYN options and all payload cut off); the pair
    IPv4/IPv4. snaplen_v6_74.pcap: IPv6/IPv6 cut to 74 bytes. snaplen_68:
    tcpdump's old default, IPv4/IPv6.
    """
    for name, snap, first, second in (
        ("snaplen_54.pcap", 54, 4, 4),
        ("snaplen_v6_74.pcap", 74, 6, 6),
        ("snaplen_68.pcap", 68, 4, 6),
    ):
        base = recs(pair(first, second), lambda ip: ether(ip, pad=False))
        cut = [Rec(r.ts_ns, r.data[:snap], len(r.data)) for r in base]
        write(name, pcap(cut, 1, snaplen=snap))


def snaplen_tcp_cut() -> None:
    """TCP headers cut inside by the snap length, one frame per depth.

    Connection 0 (10.0.0.1:47000 → 10.0.0.2:80, graceful) with its request
    frame (frame 4) cut to 8, 16 or 19 bytes of TCP header in the files
    snaplen_tcp8.pcap, snaplen_tcp16.pcap and snaplen_tcp19.pcap.
    """
    conn = graceful((v4(1), 47000), (v4(2), 80), T0)
    base = recs(conn, lambda ip: ether(ip, pad=False))
    for keep in (8, 16, 19):
        cut = list(base)
        r = cut[3]
        cut[3] = Rec(r.ts_ns, r.data[: 34 + keep], len(r.data))
        write(f"snaplen_tcp{keep}.pcap", pcap(cut, 1, snaplen=65535))


def icmp_errors() -> None:
    """ICMP errors quoting TCP headers, filed by Wireshark under the quoted stream.

    Connection 0 (10.0.0.1:48000 → 10.0.0.2:80): SYN (frame 1), then an
    ICMP port unreachable from 10.0.0.2 quoting the whole SYN (frame 2),
    then the SYN again (frame 3) and a second error quoting only 8 bytes of
    TCP (frame 4). Connection 1 (fd00::1:48001 → fd00::2:80): SYN (frame 5),
    ICMPv6 unreachable quoting it (frame 6). Frame 7: an ICMP error quoting
    a TCP segment of a 4-tuple seen nowhere else (10.0.0.9:48002 →
    10.0.0.2:22); frame 8: an echo request (not TCP); frame 9: an ICMPv6
    error quoting a SYN behind a destination options header (fd00::1:48003
    → fd00::2:80, a stream of its own); frame 10: an ICMP error quoting the
    first fragment of a TCP segment (10.0.0.1:48004 → 10.0.0.2:80), which
    Wireshark does not read as TCP.
    """
    out: list[Packet] = []
    f = Flow(client=(v4(1), 48000), server=(v4(2), 80), t=T0, ether=False)
    syn = f.c("S", options=SYN_OPTS)
    err = IP(src=v4(2), dst=v4(1)) / ICMP(type=3, code=3) / Raw(bytes(syn))
    err.time = T0 + 0.002
    syn2 = f.c("S", seq=f.client_isn, options=SYN_OPTS, dt=0.002)
    err2 = IP(src=v4(2), dst=v4(1)) / ICMP(type=3, code=3) / Raw(bytes(syn2)[:28])
    err2.time = T0 + 0.004
    out += [syn, err, syn2, err2]
    f6 = Flow(client=(v6(1), 48001), server=(v6(2), 80), t=T0 + 0.004, ether=False)
    syn6 = f6.c("S", options=SYN_OPTS)
    err6 = IPv6(src=v6(2), dst=v6(1)) / ICMPv6DestUnreach(code=4) / Raw(bytes(syn6))
    err6.time = T0 + 0.006
    out += [syn6, err6]
    lone = bytes(IP(src="10.0.0.9", dst=v4(2)) / TCP(sport=48002, dport=22, flags="A", seq=7))
    err3 = IP(src=v4(2), dst="10.0.0.9") / ICMP(type=3, code=13) / Raw(lone)
    err3.time = T0 + 0.007
    echo = IP(src=v4(1), dst=v4(2)) / ICMP(type=8) / Raw(b"ping")
    echo.time = T0 + 0.008
    syn7 = bytes(
        IPv6(src=v6(1), dst=v6(2))
        / IPv6ExtHdrDestOpt()
        / TCP(sport=48003, dport=80, flags="S", seq=1000)
    )
    err7 = IPv6(src=v6(2), dst=v6(1)) / ICMPv6DestUnreach(code=4) / Raw(syn7)
    err7.time = T0 + 0.009
    first = IP(src=v4(1), dst=v4(2), flags="MF", proto=6) / Raw(
        bytes(TCP(sport=48004, dport=80, flags="A", seq=5)) + b"x" * 8
    )
    err8 = IP(src=v4(2), dst=v4(1)) / ICMP(type=3, code=4) / Raw(bytes(first))
    err8.time = T0 + 0.010
    out += [err3, echo, err7, err8]
    write("icmp_errors.pcap", pcap(recs(out, ether), 1))


def tunnelled(inner: bytes, kind: str) -> bytes:
    """``inner`` (an IP packet) in an Ethernet frame, inside the tunnel ``kind``."""
    o = IP(src="192.0.2.1", dst="192.0.2.2")
    frame = ether(inner, pad=False)
    if kind == "ipip":
        outer = IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / Raw(inner)
    elif kind == "6in4":
        outer = IP(src="192.0.2.1", dst="192.0.2.2", proto=41) / Raw(inner)
    elif kind == "gre":
        outer = o / GRE(proto=0x0800) / Raw(inner)
    elif kind == "gre-teb":
        outer = o / GRE(proto=0x6558) / Raw(frame)
    elif kind == "vxlan":
        outer = o / UDP(sport=50000, dport=4789) / VXLAN(vni=42) / Raw(frame)
    elif kind == "erspan2":
        # GRE with a sequence number, ERSPAN version 1 (type II), session 5.
        gre = struct.pack(">HHI", 0x1000, 0x88BE, 1)
        outer = o / Raw(gre + struct.pack(">II", 1 << 28 | 5, 0) + frame)
        outer[IP].proto = 47
    elif kind == "erspan3":
        # ERSPAN version 2 (type III) with its 8-byte platform subheader (O bit).
        gre = struct.pack(">HHI", 0x1000, 0x22EB, 1)
        outer = o / Raw(gre + struct.pack(">III", 2 << 28 | 5, 0, 1) + bytes(8) + frame)
        outer[IP].proto = 47
    else:
        # GENEVE with 8 bytes of options, carrying Ethernet.
        geneve = struct.pack(">BBHI", 2, 0, 0x6558, 42 << 8) + bytes(8)
        outer = o / UDP(sport=50000, dport=6081) / Raw(geneve + frame)
    return ether(bytes(outer))


TUNNELS = ("ipip", "6in4", "gre", "gre-teb", "vxlan", "erspan2", "erspan3", "geneve")


def tunnels() -> None:
    """TCP inside tunnels fintrace decodes: IPv4 in IPv4, IPv6 in IPv4, GRE
    (IPv4 and Ethernet payloads), VXLAN, ERSPAN types II and III, GENEVE.
    Connection i: graceful, client port 49000 + i; the outer addresses are
    192.0.2.1 → 192.0.2.2."""
    out: list[Rec] = []
    for i, kind in enumerate(TUNNELS):
        host = v6 if kind == "6in4" else v4
        conn = graceful((host(1), 49000 + i), (host(2), 80), T0 + i * 0.1)
        out += recs(conn, partial(tunnelled, kind=kind))
    write("tunnels.pcap", pcap(out, 1))


def ring_buffer() -> None:
    """Three files of a rotated ring buffer, named as ``tcpdump -W 3`` wraps them.

    Time order: ring_1.pcap, ring_2.pcap, ring_0.pcap (the writer wrapped
    around). Connections (server 10.0.0.2):

    * L (10.0.0.1:50000 → :80), 12 packets: handshake and request in
      ring_1 (frames 1-4); two data exchanges in ring_2 (frames 2, 3, 5, 6);
      the close in ring_0 (frames 2-5: FA, A, FA, A).
    * R (10.0.0.1:50001 → :443): graceful, 9 packets, frames 5-13 of ring_1;
      then in ring_2 the client sends a SYN with a new ISN on the same
      4-tuple: a new connection R2 (frame 7 of ring_2, unanswered;
      its retransmission is frame 1 of ring_0).
    * N (10.0.0.4:50002 → :22): only in ring_2: SYN, SYN+ACK, ACK, RST
      (frames 1, 4, 8, 9).
    * M (10.0.0.5:50003 → :8080): SYN, SYN+ACK, ACK at the end of ring_1
      (frames 14-16), keeps quiet in ring_2, one ACK with 3 bytes in
      ring_0 (frame 6).
    """
    # Sequence numbers follow from the order of the calls; retime() sets the times.
    lc = Flow(client=(v4(1), 50000), server=(v4(2), 80), ether=False)
    r = Flow(
        client=(v4(1), 50001),
        server=(v4(2), 443),
        ether=False,
        client_isn=20_000,
        server_isn=30_000,
    )
    m = Flow(
        client=(v4(5), 50003),
        server=(v4(2), 8080),
        ether=False,
        client_isn=60_000,
        server_isn=61_000,
    )
    n = Flow(
        client=(v4(4), 50002), server=(v4(2), 22), ether=False, client_isn=40_000, server_isn=41_000
    )
    r2 = Flow(client=(v4(1), 50001), server=(v4(2), 443), ether=False, client_isn=99_000)
    file1 = [
        lc.c("S"),
        lc.s("SA"),
        lc.c("A"),
        lc.c("PA", REQUEST),
        r.c("S"),
        r.s("SA"),
        r.c("A"),
        r.c("PA", REQUEST),
        r.s("PA", RESPONSE),
        r.c("FA"),
        r.s("A"),
        r.s("FA"),
        r.c("A"),
        m.c("S"),
        m.s("SA"),
        m.c("A"),
    ]
    file2 = [
        n.c("S"),
        lc.s("PA", RESPONSE),
        lc.c("PA", b"more"),
        n.s("SA"),
        lc.s("PA", b"data!"),
        lc.c("A"),
        r2.c("S"),
        n.c("A"),
        n.c("RA"),
    ]
    file3 = [r2.c("S", seq=99_000), lc.c("FA"), lc.s("A"), lc.s("FA"), lc.c("A"), m.c("PA", b"abc")]
    retime(file1, T0)
    retime(file2, T0 + 10)
    retime(file3, T0 + 20)
    write("ring/ring_1.pcap", pcap(recs(file1, ether), 1))
    write("ring/ring_2.pcap", pcap(recs(file2, ether), 1))
    write("ring/ring_0.pcap", pcap(recs(file3, ether), 1))


def main() -> None:
    classic_pcap()
    pcapng_sections()
    pcapng_linktypes()
    pcapng_tsresol()
    pcapng_blocks()
    pcapng_other_blocks()
    pcapng_record_blocks()
    llc_snap()
    ipv6_bad_version()
    vlans()
    pppoe_capture()
    mpls_capture()
    cooked_and_raw()
    loopback()
    ipv4_options()
    ipv6_extensions()
    fragments()
    snaplen()
    snaplen_tcp_cut()
    icmp_errors()
    tunnels()
    ring_buffer()
    print("wrote", len(list(OUT.rglob("*.*"))), "files to", OUT)


if __name__ == "__main__":
    main()
