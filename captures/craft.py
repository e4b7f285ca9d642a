"""Craft TCP conversations with correct sequence numbers, for captures and tests.

A :class:`Flow` is one TCP connection between a client and a server. Each
call to :meth:`Flow.c` (client sends) or :meth:`Flow.s` (server sends)
appends one segment whose sequence number is the sender's next sequence
number and whose acknowledgement number is everything the sender has seen
from its peer, unless ``seq=`` or ``ack=`` say otherwise. SYN and FIN consume
one sequence number, as on the wire. Timestamps advance by ``dt`` seconds per
segment (default 1 ms), so captures are deterministic.

    f = Flow()
    f.c("S"); f.s("SA"); f.c("A")
    f.c("PA", b"GET / HTTP/1.1\\r\\n\\r\\n"); f.s("PA", b"HTTP/1.1 200 OK\\r\\n\\r\\n")
    f.c("FA"); f.s("A"); f.s("FA"); f.c("A")
    write_pcap("graceful.pcap", f.packets)

Several flows can be interleaved with :func:`merge` (by timestamp).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, PcapWriter

T0 = 1_700_000_000.0
M32 = 0xFFFFFFFF
CLIENT_MAC = "02:00:00:00:00:01"
SERVER_MAC = "02:00:00:00:00:02"


@dataclass
class _Side:
    ip: str
    port: int
    mac: str
    nxt: int
    seen: int | None = None  # peer's sequence space acknowledged so far


@dataclass
class Flow:
    """One TCP connection, built segment by segment."""

    client: tuple[str, int] = ("10.0.0.1", 40000)
    server: tuple[str, int] = ("10.0.0.2", 80)
    client_isn: int = 1_000
    server_isn: int = 5_000
    t: float = T0
    dt: float = 0.001
    window: int = 64240
    ether: bool = True
    packets: list[Packet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._c = _Side(self.client[0], self.client[1], CLIENT_MAC, self.client_isn & M32)
        self._s = _Side(self.server[0], self.server[1], SERVER_MAC, self.server_isn & M32)

    @property
    def ipv6(self) -> bool:
        return ":" in self.client[0]

    def c(self, flags: str, data: bytes = b"", **kw: Any) -> Packet:
        """The client sends one segment."""
        return self._send(self._c, self._s, flags, data, **kw)

    def s(self, flags: str, data: bytes = b"", **kw: Any) -> Packet:
        """The server sends one segment."""
        return self._send(self._s, self._c, flags, data, **kw)

    def _send(self, me: _Side, peer: _Side, flags: str, data: bytes, *, seq: int | None = None,
              ack: int | None = None, dt: float | None = None, window: int | None = None,
              options: list[tuple[str, Any]] | None = None, record: bool = True) -> Packet:
        self.t += self.dt if dt is None else dt
        s = me.nxt if seq is None else seq & M32
        if ack is None:
            a = peer.nxt if "A" in flags else 0
        else:
            a = ack & M32
        tcp = TCP(sport=me.port, dport=peer.port, flags=flags, seq=s, ack=a,
                  window=self.window if window is None else window, options=options or [])
        ip: Packet = (IPv6(src=me.ip, dst=peer.ip) if self.ipv6 else
                      IP(src=me.ip, dst=peer.ip, flags="DF"))
        pkt = ip / tcp
        if data:
            pkt = pkt / Raw(data)
        if self.ether:
            pkt = Ether(src=me.mac, dst=peer.mac) / pkt
        pkt.time = self.t
        # Only a segment at or beyond the sender's next sequence number moves it.
        end = (s + len(data) + ("S" in flags) + ("F" in flags)) & M32
        if seq is None or ((end - me.nxt) & M32) < 0x80000000:
            me.nxt = end
        if record:
            self.packets.append(pkt)
        return pkt

    @property
    def client_nxt(self) -> int:
        return self._c.nxt

    @property
    def server_nxt(self) -> int:
        return self._s.nxt


def merge(*flows: Iterable[Packet]) -> list[Packet]:
    """Interleave the packets of several flows by timestamp (stable)."""
    out = [p for f in flows for p in f]
    out.sort(key=lambda p: float(p.time))
    return out


def write_pcap(path: str, packets: Iterable[Packet], *, nano: bool = False,
               linktype: int | None = None) -> None:
    """Write a classic pcap (little endian, microseconds unless ``nano``)."""
    with PcapWriter(path, nano=nano, linktype=linktype, sync=False) as w:
        for p in packets:
            w.write(p)


def write_pcapng(path: str, packets: Iterable[Packet]) -> None:
    with PcapNgWriter(path) as w:
        for p in packets:
            w.write(p)
