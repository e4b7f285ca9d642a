"""Generate large TCP captures whose every connection's ending is known.

    python bench/generate.py --connections 100000 --concurrency 2000 --seed 1

writes, in ``--out-dir`` (default ``bench/out``):

* ``NAME.pcap``: classic pcap, Ethernet, IPv4 and some IPv6, cut at ``--snaplen``
  like ``tcpdump -s`` (``orig_len > caplen``), frames under 60 bytes padded as a
  mirror port shows them, a few non-TCP frames (DNS over UDP) between them;
* ``NAME.truth.jsonl``: per connection what ``../shared/TEARDOWN.md`` says
  fintrace must report, derived from what the generator made each side do;
* ``NAME.meta.json``: the options, the counts and the command that remakes it.

Connections arrive as a Poisson process whose rate keeps about
``--concurrency`` of them open at once (Little's law on the drawn
durations); each lasts ``--duration`` seconds with RTTs in ``--rtt``. Its
segments are written out in time order through a heap holding one pending
segment per live connection, so memory follows the open connections, not the
capture. Sequence and acknowledgement numbers are those of a correct TCP
exchange, so the truth is never a matter of interpretation.

The mix (``--mix graceful=40,reset=5,...``) picks scenarios: the ten close
types, ``reset`` split over its three phases (or ``reset_established``,
``reset_closing``, ``reset_closed`` given alone). Variants inside a scenario
(who closes first, a FIN carrying data, retransmitted FINs, a final ACK that
never comes, retransmitted data, sequence numbers that wrap, a handshake
before the capture began, a 4-tuple used again with a new ISN) are drawn
with fixed probabilities from the same seeded generator.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import ipaddress
import json
import math
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16
M32 = 0xFFFFFFFF
T0_US = 1_700_000_000_000_000
CLOSE_TYPES = (
    "graceful",
    "piggybacked",
    "simultaneous",
    "half_close",
    "reset",
    "refused",
    "close_wait",
    "unacked_fin",
    "open",
    "attempt",
)
RESET_PHASES = ("reset_established", "reset_closing", "reset_closed")
SCENARIO_NAMES = tuple(t for t in CLOSE_TYPES if t != "reset") + RESET_PHASES
DEFAULT_MIX = (
    "graceful=38,piggybacked=24,half_close=5,simultaneous=1,reset_established=6,"
    "reset_closing=2,reset_closed=1,refused=4,close_wait=5,unacked_fin=2,open=8,attempt=4"
)
SERVICES = ((443, 60), (80, 15), (8080, 10), (5432, 5), (6379, 5), (3306, 5))
ROLE = ("client", "server")
#: How long a long-lived ``open`` connection stays busy, in seconds, and by how
#: much, in µs, the last ones outlast the last arrival (longer than any short
#: connection can last, SYN retransmissions included).
LONG_LIVED_S = (20.0, 200.0)
LONG_LIVED_TAIL_US = (15_000_000, 25_000_000)

# -- what one connection does ---------------------------------------------------

#: One segment: (time µs, direction 0 = client→server / 1 = server→client,
#: flags, seq, ack, payload length).
Seg = tuple[int, int, int, int, int, int]


@dataclass(slots=True)
class Outcome:
    """What the scenario made the sides do, in TEARDOWN.md's terms."""

    close_type: str
    variant: str
    active: int | str | None = None  # 0, 1, "both"
    reset_by: int | None = None
    reset_phase: str | None = None
    time_wait: int | str | None = None
    fin_retransmits: int = 0
    half_close_bytes: int = 0
    final_ack_seen: bool | None = None
    passive_ack: int = -1  # index of the passive side's first ACK of the active FIN
    passive_fin: int = -1  # index of the passive side's FIN
    passive: int = -1
    closed: bool = False  # FIN exchange completed or RST: the 4-tuple may be used again


class Conv:
    """Builds one connection's segments; every segment acknowledges all the peer sent."""

    __slots__ = ("bytes", "mss", "nxt", "rng", "rtt", "segs", "t")

    def __init__(self, rng: random.Random, t: int, rtt: int, isn: tuple[int, int], mss: int):
        self.rng = rng
        self.t = t
        self.rtt = rtt
        self.nxt = [isn[0], isn[1]]
        self.mss = mss
        self.segs: list[Seg] = []
        self.bytes = [0, 0]

    def send(
        self,
        d: int,
        flags: int,
        plen: int = 0,
        gap: int = 0,
        *,
        seq: int | None = None,
        ack: int | None = None,
    ) -> int:
        """Append a segment from side ``d``; a given ``seq`` is a retransmission."""
        self.t += gap
        s = self.nxt[d] if seq is None else seq
        if ack is None:
            ack = self.nxt[1 - d] if flags & ACK else 0
        if seq is None:
            self.nxt[d] = (s + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & M32
            self.bytes[d] += plen
        self.segs.append((self.t, d, flags, s, ack, plen))
        return len(self.segs) - 1

    def proc(self) -> int:
        """An application's turnaround: tens of µs to a couple of ms."""
        return int(self.rng.expovariate(1 / 300)) + 20

    def gap_to(self, d: int) -> int:
        """Delay before side ``d`` answers, seen from a capture point by the server."""
        return self.rtt if d == 0 else self.proc()

    def handshake(self) -> None:
        self.send(0, SYN)
        self.send(1, SYN | ACK, gap=self.proc())
        self.send(0, ACK, gap=self.rtt)

    def exchange(self, rounds: int, idle: int, data_retx: float) -> None:
        """Request/response rounds separated by think time, with delayed ACKs."""
        rng = self.rng
        mss = self.mss
        for _ in range(rounds):
            self.send(0, PSH | ACK, rng.randint(80, 1200), gap=idle)
            total = min(int(rng.lognormvariate(8.0, 1.0)) + 1, 12 * mss)
            n = -(-total // mss)
            for i in range(n):
                last = i == n - 1
                plen = total - mss * (n - 1) if last else mss
                seq = self.nxt[1]
                self.send(1, ACK | (PSH if last else 0), plen, self.proc() if i == 0 else 15)
                if rng.random() < data_retx:
                    self.send(1, ACK, plen, 200_000 + self.rtt, seq=seq)
                if i % 2 == 1 or last:
                    self.send(0, ACK, gap=self.rtt)


Builder = Callable[[Conv, random.Random, int], Outcome]


def _fin_tail(cv: Conv, rng: random.Random, x: int, out: Outcome) -> None:
    """After the passive side's FIN: its FIN again when the final ACK was lost (or never came)."""
    y = 1 - x
    fin_seq = (cv.nxt[y] - 1) & M32
    if rng.random() < 0.03:
        n = rng.randint(1, 2)
        rto = 200_000 + 2 * cv.rtt
        for _ in range(n):
            cv.send(y, FIN | ACK, gap=rto, seq=fin_seq)
            rto *= 2
        out.variant += "+final-ack-missing"
        out.fin_retransmits = n
        out.final_ack_seen = False
        out.time_wait = None
        out.closed = False
        return
    cv.send(x, ACK, gap=cv.gap_to(x))
    if rng.random() < 0.05:
        cv.send(y, FIN | ACK, gap=200_000 + 2 * cv.rtt, seq=fin_seq)
        cv.send(x, ACK, gap=cv.gap_to(x))
        out.variant += "+fin-retx"
        out.fin_retransmits = 1


def _active_fin(cv: Conv, rng: random.Random, x: int, gap: int) -> int:
    """The active closer's FIN, sometimes carrying the last bytes."""
    if rng.random() < 0.2:
        return cv.send(x, FIN | PSH | ACK, rng.randint(1, 900), gap)
    return cv.send(x, FIN | ACK, gap=gap)


def _close_delay(rng: random.Random) -> int:
    """How long the passive application takes to close: mostly ms, now and then seconds."""
    if rng.random() < 0.02:
        return rng.randint(1_000_000, 8_000_000)
    return int(rng.expovariate(1 / 4_000)) + 50


def graceful(cv: Conv, rng: random.Random, x: int) -> Outcome:
    y = 1 - x
    out = Outcome("graceful", f"{ROLE[x]}-first", active=x, time_wait=x, passive=y)
    out.final_ack_seen = True
    out.closed = True
    _active_fin(cv, rng, x, cv.gap_to(x))
    out.passive_ack = cv.send(y, ACK, gap=cv.gap_to(y))
    out.passive_fin = cv.send(y, FIN | ACK, gap=_close_delay(rng))
    _fin_tail(cv, rng, x, out)
    return out


def piggybacked(cv: Conv, rng: random.Random, x: int) -> Outcome:
    y = 1 - x
    out = Outcome("piggybacked", f"{ROLE[x]}-first", active=x, time_wait=x, passive=y)
    out.final_ack_seen = True
    out.closed = True
    _active_fin(cv, rng, x, cv.gap_to(x))
    out.passive_fin = out.passive_ack = cv.send(y, FIN | ACK, gap=cv.gap_to(y))
    _fin_tail(cv, rng, x, out)
    return out


def simultaneous(cv: Conv, rng: random.Random, x: int) -> Outcome:
    y = 1 - x
    out = Outcome("simultaneous", "crossing-fins", active="both", time_wait="both")
    out.final_ack_seen = True
    out.closed = True
    cv.send(x, FIN | ACK, gap=cv.gap_to(x))
    # The FINs cross: y's does not yet acknowledge x's.
    cv.send(y, FIN | ACK, gap=rng.randint(5, 200), ack=(cv.nxt[x] - 1) & M32)
    cv.send(x, ACK, gap=cv.rtt // 2 + 10)
    cv.send(y, ACK, gap=rng.randint(5, 200))
    return out


def half_close(cv: Conv, rng: random.Random, x: int) -> Outcome:
    """x shuts down its writing side; y keeps sending, then closes."""
    y = 1 - x
    out = Outcome("half_close", f"{ROLE[x]}-first", active=x, time_wait=x, passive=y)
    out.final_ack_seen = True
    out.closed = True
    cv.send(x, FIN | ACK, gap=cv.gap_to(x))
    before = cv.bytes[y]
    if rng.random() < 0.5:
        out.passive_ack = cv.send(y, ACK, gap=cv.gap_to(y))
        out.variant += "+ack-then-data"
    else:
        out.passive_ack = cv.send(y, PSH | ACK, rng.randint(1, cv.mss), gap=cv.gap_to(y))
        out.variant += "+data-acks-fin"
    for _ in range(rng.randint(1, 4)):
        cv.send(y, PSH | ACK, rng.randint(1, cv.mss), gap=cv.proc())
        cv.send(x, ACK, gap=cv.gap_to(x))
    out.half_close_bytes = cv.bytes[y] - before
    out.passive_fin = cv.send(y, FIN | ACK, gap=_close_delay(rng))
    cv.send(x, ACK, gap=cv.gap_to(x))
    return out


def _rst(cv: Conv, rng: random.Random, d: int, gap: int) -> int:
    """An abortive close; Linux sends RST+ACK, some stacks a bare RST."""
    if rng.random() < 0.8:
        return cv.send(d, RST | ACK, gap=gap)
    return cv.send(d, RST, gap=gap)


def reset_established(cv: Conv, rng: random.Random, x: int) -> Outcome:
    _rst(cv, rng, x, cv.gap_to(x))
    return Outcome(
        "reset",
        f"established-by-{ROLE[x]}",
        active=x,
        reset_by=x,
        reset_phase="established",
        closed=True,
    )


def reset_closing(cv: Conv, rng: random.Random, x: int) -> Outcome:
    y = 1 - x
    out = Outcome("reset", "closing", active=x, reset_phase="closing", passive=y, closed=True)
    cv.send(x, FIN | ACK, gap=cv.gap_to(x))
    r = rng.random()
    if r < 1 / 3:
        # The passive application aborts instead of closing.
        _rst(cv, rng, y, cv.gap_to(y))
        out.reset_by = y
        out.variant = f"{ROLE[y]}-aborts-at-fin"
    elif r < 2 / 3:
        out.passive_ack = cv.send(y, ACK, gap=cv.gap_to(y))
        _rst(cv, rng, y, _close_delay(rng))
        out.reset_by = y
        out.variant = f"{ROLE[y]}-aborts-after-ack"
    else:
        # Data reaching a socket that is already closed is answered with RST.
        out.passive_ack = cv.send(y, ACK, gap=cv.gap_to(y))
        before = cv.bytes[y]
        cv.send(y, PSH | ACK, rng.randint(1, cv.mss), gap=cv.proc())
        out.half_close_bytes = cv.bytes[y] - before
        cv.send(x, RST, gap=cv.gap_to(x))
        out.reset_by = x
        out.variant = f"{ROLE[x]}-resets-late-data"
    return out


def reset_closed(cv: Conv, rng: random.Random, x: int) -> Outcome:
    """A complete close, then a duplicate of x's FIN reaches y, now CLOSED: y answers RST."""
    y = 1 - x
    out = Outcome("reset", "closed-dup-fin", active=x, reset_by=y, reset_phase="closed")
    out.closed = True
    fin_seq = cv.nxt[x]
    fin_ack = cv.nxt[y]
    cv.send(x, FIN | ACK, gap=cv.gap_to(x))
    if rng.random() < 0.5:
        cv.send(y, ACK, gap=cv.gap_to(y))
        cv.send(y, FIN | ACK, gap=_close_delay(rng))
    else:
        cv.send(y, FIN | ACK, gap=cv.gap_to(y))
    cv.send(x, ACK, gap=cv.gap_to(x))
    cv.send(x, FIN | ACK, gap=rng.randint(200_000, 3_000_000), seq=fin_seq, ack=fin_ack)
    cv.send(y, RST, gap=cv.gap_to(y))
    out.fin_retransmits = 1
    return out


def close_wait(cv: Conv, rng: random.Random, x: int) -> Outcome:
    """y acknowledges x's FIN and never closes: its application forgot the socket."""
    y = 1 - x
    out = Outcome("close_wait", f"{ROLE[x]}-first", active=x, passive=y)
    cv.send(x, FIN | ACK, gap=cv.gap_to(x))
    out.passive_ack = cv.send(y, ACK, gap=cv.gap_to(y))
    if rng.random() < 0.5:
        before = cv.bytes[y]
        for _ in range(rng.randint(1, 3)):
            cv.send(y, PSH | ACK, rng.randint(1, cv.mss), gap=rng.randint(10_000, 2_000_000))
            cv.send(x, ACK, gap=cv.gap_to(x))
        out.half_close_bytes = cv.bytes[y] - before
        out.variant += "+data-after-ack"
    return out


def unacked_fin(cv: Conv, rng: random.Random, x: int) -> Outcome:
    """x closes and its peer is gone: the FIN is sent again with back-off, never acknowledged."""
    n = rng.randint(0, 3)
    fin_seq = cv.nxt[x]
    cv.send(x, FIN | ACK, gap=cv.gap_to(x))
    rto = 200_000 + 2 * cv.rtt
    for _ in range(n):
        cv.send(x, FIN | ACK, gap=rto, seq=fin_seq)
        rto *= 2
    return Outcome("unacked_fin", f"{ROLE[x]}-first+{n}-retx", active=x, fin_retransmits=n)


def open_(cv: Conv, rng: random.Random, x: int) -> Outcome:
    return Outcome("open", "idle-at-end")


BUILDERS: dict[str, Builder] = {
    "graceful": graceful,
    "piggybacked": piggybacked,
    "simultaneous": simultaneous,
    "half_close": half_close,
    "reset_established": reset_established,
    "reset_closing": reset_closing,
    "reset_closed": reset_closed,
    "close_wait": close_wait,
    "unacked_fin": unacked_fin,
    "open": open_,
}


def refused(cv: Conv, rng: random.Random) -> Outcome:
    cv.send(0, SYN)
    cv.send(1, RST | ACK, gap=cv.proc(), seq=0)
    return Outcome("refused", "rst-ack", active=1, reset_by=1, closed=True)


def attempt(cv: Conv, rng: random.Random) -> Outcome:
    if rng.random() < 0.6:
        n = rng.randint(0, 3)
        cv.send(0, SYN)
        isn = cv.segs[0][3]
        for i in range(n):
            cv.send(0, SYN, gap=1_000_000 << i, seq=isn)
        return Outcome("attempt", f"syn-unanswered+{n}-retx")
    # The server answers but the client's ACK never shows up.
    n = rng.randint(0, 2)
    cv.send(0, SYN)
    cv.send(1, SYN | ACK, gap=cv.proc())
    isn = cv.segs[1][3]
    for i in range(n):
        cv.send(1, SYN | ACK, gap=1_000_000 << i, seq=isn)
    return Outcome("attempt", f"synack-unacknowledged+{n}-retx")


# -- packets ----------------------------------------------------------------------

ETH_CLIENT = bytes.fromhex("020000000001")
ETH_SERVER = bytes.fromhex("020000000002")
SYN_OPTIONS = bytes.fromhex("020405b4010303070101 0402".replace(" ", ""))  # MSS, WS 7, SACK
V4 = struct.Struct("!16sHH4sH12sIIBBH4x")
V6 = struct.Struct("!18sH38sIIBBH4x")
REC = struct.Struct("<IIII")
FILL = bytes(range(256)) * 64
PCAP_HEADER = struct.Struct("<IHHiIII")


def _ip4_sum(raw: bytes) -> int:
    return sum(struct.unpack("!HH", raw))


class Endpoints:
    """A connection's addresses and the static parts of its headers, per direction."""

    __slots__ = ("client", "csum", "ident", "pre", "server", "v6")

    def __init__(self, client: tuple[bytes, int], server: tuple[bytes, int], rng: random.Random):
        self.client = client
        self.server = server
        self.v6 = len(client[0]) == 16
        c, s = client, server
        ports = (struct.pack("!HH", c[1], s[1]), struct.pack("!HH", s[1], c[1]))
        macs = (ETH_SERVER + ETH_CLIENT, ETH_CLIENT + ETH_SERVER)
        if self.v6:
            addrs = (c[0] + s[0], s[0] + c[0])
            self.pre = tuple(
                (m + b"\x86\xdd\x60\x00\x00\x00", b"\x06\x40" + a + p)
                for m, a, p in zip(macs, addrs, ports, strict=True)
            )
            self.csum = 0
        else:
            addrs = (c[0] + s[0], s[0] + c[0])
            self.pre = tuple(
                (m + b"\x08\x00\x45\x00", a + p) for m, a, p in zip(macs, addrs, ports, strict=True)
            )
            self.csum = 0x4500 + 0x4000 + 0x4006 + _ip4_sum(c[0]) + _ip4_sum(s[0])
        self.ident = [rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF)]

    def frame(self, d: int, flags: int, seq: int, ack: int, plen: int) -> tuple[bytes, int]:
        """The header bytes of a segment and the frame's length on the wire."""
        syn = flags & SYN
        opts = SYN_OPTIONS if syn else b""
        doff = 0x80 if syn else 0x50
        win = (64240 if d == 0 else 65160) if syn else 501
        pre, post = self.pre[d]
        if self.v6:
            tcp_len = 20 + len(opts) + plen
            hdr = V6.pack(pre, tcp_len, post, seq, ack, doff, flags, win) + opts
            return hdr, max(54 + tcp_len, 60)
        total = 40 + len(opts) + plen
        ident = self.ident[d]
        self.ident[d] = (ident + 1) & 0xFFFF
        s = self.csum + total + ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        hdr = (
            V4.pack(
                pre,
                total,
                ident,
                b"\x40\x00\x40\x06",
                ~s & 0xFFFF,
                post,
                seq,
                ack,
                doff,
                flags,
                win,
            )
            + opts
        )
        return hdr, max(14 + total, 60)


def _dns_frame(rng: random.Random) -> bytes:
    """A DNS query over UDP: frames that count in the numbering but carry no TCP."""
    qname = b"\x03www\x07example\x03com\x00"
    dns = struct.pack("!HHHHHH", rng.randint(0, 0xFFFF), 0x0100, 1, 0, 0, 0) + qname + b"\0\1\0\1"
    udp = struct.pack("!HHHH", rng.randint(32768, 60999), 53, 8 + len(dns), 0) + dns
    src, dst = bytes([10, 1, 0, 9]), bytes([10, 0, 0, 53])
    total = 20 + len(udp)
    s = 0x4500 + total + 0x4000 + 0x4011 + _ip4_sum(src) + _ip4_sum(dst)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, ~s & 0xFFFF, src, dst)
    return ETH_SERVER + ETH_CLIENT + b"\x08\x00" + ip + udp


# -- the generator ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    out_dir: Path = Path("bench/out")
    name: str | None = None
    connections: int = 100_000
    concurrency: int = 2_000
    seed: int = 1
    mix: tuple[tuple[str, float], ...] = ()
    ipv6: float = 0.1
    snaplen: int = 96
    duration: tuple[float, float] = (0.5, 5.0)
    rtt_ms: tuple[float, float] = (0.1, 50.0)
    reuse: float = 0.02
    reuse_gap: tuple[float, float] = (0.05, 90.0)
    wrap: float = 0.01
    data_retx: float = 0.01
    midstream: float = 0.005
    long_lived: float = 0.1
    other: float = 0.005
    stuck_after: float = 60.0

    @property
    def stem(self) -> str:
        return self.name or f"gen-{self.connections}c-{self.concurrency}o-s{self.seed}"


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``graceful=40,reset=5,...``: ``reset`` spreads over its three phases."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"mix entry {part!r} is not NAME=WEIGHT")
        w = float(value)
        if w < 0:
            raise ValueError(f"mix weight of {name} is negative")
        names = RESET_PHASES if name == "reset" else (name,)
        for n in names:
            if n not in SCENARIO_NAMES:
                known = ", ".join(SCENARIO_NAMES)
                raise ValueError(f"unknown scenario {n!r}; known: reset, {known}")
            weights[n] = weights.get(n, 0.0) + w / len(names)
    if not any(weights.values()):
        raise ValueError("the mix has no positive weight")
    return tuple(sorted(weights.items()))


#: A closed connection's client, server, client ISN, stream and last packet (µs).
Reuse = tuple[tuple[bytes, int], tuple[bytes, int], int, int, int]


class Live:
    """A connection being written out."""

    __slots__ = ("ep", "first_frame", "i", "last_frame", "out", "prev", "row", "segs", "stream")

    def __init__(self, segs: list[Seg], ep: Endpoints, out: Outcome, row: dict[str, Any]):
        self.segs = segs
        self.ep = ep
        self.out = out
        self.row = row
        self.i = 0
        self.stream = -1
        self.first_frame = 0
        self.last_frame = 0
        self.prev: tuple[int, int] | None = None  # (previous stream, its last packet µs)


@dataclass
class Stats:
    packets: int = 0
    tcp_packets: int = 0
    bytes_written: int = 0
    wire_bytes: int = 0
    first_us: int = 0
    last_us: int = 0
    #: Connections open when each one arrives: Poisson arrivals see time averages.
    open_seen: int = 0
    peak_open: int = 0
    close_types: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)


class Generator:
    def __init__(self, o: Options) -> None:
        self.o = o
        self.rng = random.Random(o.seed)
        names = [n for n, _ in o.mix]
        self._names = names
        self._cum = list(_accumulate(w for _, w in o.mix))
        self.stats = Stats()
        self._k4 = 0
        self._k6 = 0
        self._pool_t: list[int] = []
        self._pool: list[tuple[tuple[bytes, int], tuple[bytes, int], int, int] | None] = []
        self._pool_head = 0
        self._services = [p for p, w in SERVICES for _ in range(w)]
        self._arrivals_end = T0_US

    # -- one connection -----------------------------------------------------------

    def _scenario(self, established_only: bool) -> str:
        rng = self.rng
        while True:
            name = self._names[bisect.bisect_right(self._cum, rng.random() * self._cum[-1])]
            if not established_only or name not in ("refused", "attempt"):
                return name

    def _endpoints(self, now: int) -> tuple[tuple[bytes, int], tuple[bytes, int], Live | None]:
        rng = self.rng
        if rng.random() < self.o.ipv6:
            k = self._k6
            self._k6 += 1
            host = k % 4000
            client = (b"\x20\x01\x0d\xb8\x00\x01" + bytes(8) + host.to_bytes(2, "big"),)
            server_ip = b"\x20\x01\x0d\xb8\xff\xff" + bytes(9) + bytes([rng.randint(1, 40)])
        else:
            k = self._k4
            self._k4 += 1
            host = k % 4000
            client = (bytes([10, 1, host // 250, host % 250 + 1]),)
            server_ip = bytes([10, 200, 0, rng.randint(1, 40)])
        port = 32768 + (k // 4000) % 28232
        return (client[0], port), (server_ip, rng.choice(self._services)), None

    def _reused(self, now: int) -> Reuse | None:
        """A closed connection's 4-tuple, closed about a drawn gap ago."""
        lo, hi = self.o.reuse_gap
        target = now - int(self.rng.uniform(lo, hi) * 1e6)
        head = self._pool_head
        i = bisect.bisect_right(self._pool_t, target, lo=head) - 1
        while i >= head and self._pool[i] is None:
            i -= 1
        if i < head:
            # Nothing closed that long ago (early in the capture): the oldest will do.
            i = head
            while i < len(self._pool) and self._pool[i] is None:
                i += 1
            if i == len(self._pool):
                return None
        entry = self._pool[i]
        assert entry is not None
        self._pool[i] = None
        client, server, isn, stream = entry
        return client, server, isn, stream, self._pool_t[i]

    def _shape(self, t: int, long_lived: bool) -> tuple[int, int, int]:
        """Request rounds, the idle time before each, and before the close."""
        rng = self.rng
        if long_lived:
            # A pooled connection (database, keep-alive) still busy when the
            # capture stops, well after every short connection has ended: the
            # capture's last frames are plain data and ACKs.
            end = self._arrivals_end + rng.randint(*LONG_LIVED_TAIL_US)
            budget = max(min(int(rng.uniform(*LONG_LIVED_S) * 1e6), end - t), 5_000_000)
            rounds = min(budget // rng.randint(2_000_000, 10_000_000) + 1, 60)
            return rounds, budget // rounds, 0
        budget = int(rng.uniform(*self.o.duration) * 1e6)
        rounds = rng.choice((1, 1, 1, 1, 2, 2, 3))
        idle = budget // (rounds + 1)
        return rounds, idle, idle

    def start(self, t: int, index: int) -> Live:
        o, rng, st = self.o, self.rng, self.stats
        midstream = index < o.midstream * o.connections
        name = self._scenario(established_only=midstream)
        reuse = None
        if not midstream and rng.random() < o.reuse:
            reuse = self._reused(t)
        if reuse is not None:
            client, server, old_isn, prev_stream, prev_last = reuse
        else:
            client, server, _ = self._endpoints(t)
            old_isn = -1
        v6 = len(client[0]) == 16
        mss = 1440 if v6 else 1460
        isn_c, isn_s = rng.getrandbits(32), rng.getrandbits(32)
        while isn_c == old_isn:
            isn_c = rng.getrandbits(32)
        wrapped = rng.random() < o.wrap
        if wrapped:
            if rng.random() < 0.5:
                isn_c = (1 << 32) - rng.randint(1, 1200)
            else:
                isn_s = (1 << 32) - rng.randint(1, 8000)
        lo, hi = o.rtt_ms
        rtt = int(math.exp(rng.uniform(math.log(lo), math.log(hi))) * 1000)
        cv = Conv(rng, t, rtt, (isn_c, isn_s), mss)
        if name == "refused":
            out = refused(cv, rng)
        elif name == "attempt":
            out = attempt(cv, rng)
        else:
            long_lived = name == "open" and rng.random() < o.long_lived
            rounds, idle, tail = self._shape(t, long_lived)
            cv.handshake()
            cv.exchange(rounds, idle, o.data_retx)
            cv.t += tail
            closer_is_server = rng.random() < (0.2 if name in ("half_close", "close_wait") else 0.4)
            out = BUILDERS[name](cv, rng, 1 if closer_is_server else 0)
            if long_lived:
                out.variant = "long-lived"
        segs = cv.segs
        row: dict[str, Any] = {
            "stream": -1,
            "client": {"ip": _ip_text(client[0]), "port": client[1]},
            "server": {"ip": _ip_text(server[0]), "port": server[1]},
            "roles_inferred": midstream,
            "close_type": out.close_type,
            "scenario": f"{name}/{out.variant}",
            "active_closer": _role(out.active),
            "reset_by": _role(out.reset_by),
            "reset_phase": out.reset_phase,
            "time_wait": _role(out.time_wait),
            "fin_retransmits": out.fin_retransmits,
            "half_close_bytes": out.half_close_bytes,
            "final_ack_seen": out.final_ack_seen,
            "payload_bytes": {"client": cv.bytes[0], "server": cv.bytes[1]},
            "stuck": False,
            "close_wait_s": None,
            "reused_tuple": None,
            "isn": {"client": isn_c, "server": isn_s},
        }
        if out.passive_fin >= 0 and out.passive_ack >= 0:
            row["close_wait_s"] = (segs[out.passive_fin][0] - segs[out.passive_ack][0]) / 1e6
        if midstream:
            # The capture began after the handshake (a ring buffer's first file).
            if out.passive_ack >= 0:
                out.passive_ack -= 3
            segs = segs[3:]
            st.features["midstream"] += 1
        ep = Endpoints(client, server, rng)
        live = Live(segs, ep, out, row)
        if reuse is not None:
            live.prev = (prev_stream, prev_last)
            st.features["reused_tuple"] += 1
        st.close_types[out.close_type] += 1
        st.variants[row["scenario"]] += 1
        if wrapped:
            st.features["seq_wrap"] += 1
        if v6:
            st.features["ipv6"] += 1
        return live

    def finish(self, lv: Live, end_us: int) -> dict[str, Any]:
        """The truth row of a connection whose last packet was written."""
        row, out, segs = lv.row, lv.out, lv.segs
        row["stream"] = lv.stream
        row["first_frame"] = lv.first_frame
        row["last_frame"] = lv.last_frame
        row["packets"] = len(segs)
        row["first_ts"] = segs[0][0] / 1e6
        row["last_ts"] = segs[-1][0] / 1e6
        if lv.prev is not None:
            row["reused_tuple"] = {
                "previous_stream": lv.prev[0],
                "gap_s": (segs[0][0] - lv.prev[1]) / 1e6,
            }
        if out.close_type == "close_wait":
            passive_last = max(s[0] for s in segs if s[1] == out.passive)
            row["close_wait_s"] = (end_us - segs[out.passive_ack][0]) / 1e6
            row["stuck"] = end_us - passive_last >= self.o.stuck_after * 1e6
        return row

    def closed(self, lv: Live) -> None:
        """Offer a closed connection's 4-tuple for use again."""
        if not lv.out.closed or lv.row["roles_inferred"]:
            return
        c, s = lv.row["client"], lv.row["server"]
        entry = (
            (_ip_bytes(c["ip"]), c["port"]),
            (_ip_bytes(s["ip"]), s["port"]),
            lv.row["isn"]["client"],
            lv.stream,
        )
        self._pool_t.append(lv.segs[-1][0])
        self._pool.append(entry)
        horizon = lv.segs[-1][0] - int(self.o.reuse_gap[1] * 1e6) - 1_000_000
        if self._pool_t[self._pool_head] < horizon:
            self._pool_head = bisect.bisect_left(self._pool_t, horizon, lo=self._pool_head)
            if self._pool_head > 100_000:
                del self._pool_t[: self._pool_head]
                del self._pool[: self._pool_head]
                self._pool_head = 0

    # -- the capture ----------------------------------------------------------------

    def arrival_rate(self, samples: int = 4000) -> float:
        """Arrivals per µs that keep ``concurrency`` connections open (Little's law).

        The mean span of a connection depends on the mix and on where the
        long-lived ones are cut, so it is measured on connections built by a
        throwaway generator of another seed, twice, the second time with the
        arrival window the first estimate gives.
        """
        o = self.o
        probe = Generator(replace(o, seed=o.seed + 7919, midstream=0.0, reuse=0.0))
        rate = o.concurrency / (sum(o.duration) / 2) / 1e6
        for _ in range(2):
            window = int(o.connections / rate)
            probe._arrivals_end = T0_US + window
            total = 0
            for i in range(samples):
                t = T0_US + window * i // samples
                segs = probe.start(t, i).segs
                total += segs[-1][0] - segs[0][0]
            rate = o.concurrency / max(total / samples, 1.0)
        return rate

    def write(self, pcap: Any, truth: Any) -> None:
        o, rng, st = self.o, self.rng, self.stats
        snap = o.snaplen
        write = pcap.write
        rec = REC.pack
        pcap.write(PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, snap, 1))
        dns = [_dns_frame(rng) for _ in range(16)]
        zeros = bytes(64)
        rate = self.arrival_rate()
        self._arrivals_end = T0_US + int(o.connections / rate)
        heap: list[tuple[int, int, Live]] = []
        push, pop, replace = heapq.heappush, heapq.heappop, heapq.heapreplace
        tie = 0
        admitted = 0
        next_start = T0_US
        frame = 0
        stream = 0
        open_now = 0
        pending: list[Live] = []
        other = o.other
        while True:
            top = heap[0][0] if heap else 1 << 62
            while admitted < o.connections and next_start <= top:
                lv = self.start(next_start, admitted)
                st.open_seen += open_now
                admitted += 1
                push(heap, (lv.segs[0][0], tie, lv))
                tie += 1
                next_start += int(rng.expovariate(rate)) + 1
                top = heap[0][0]
            if not heap:
                break
            t, _, lv = heap[0]
            _, d, flags, seq, ack, plen = lv.segs[lv.i]
            sec, usec = divmod(t, 1_000_000)
            if other and rng.random() < other:
                f = dns[frame & 15]
                n = min(len(f), snap)
                write(rec(sec, usec, n, len(f)) + f[:n])
                frame += 1
                st.bytes_written += 16 + n
            hdr, wire = lv.ep.frame(d, flags, seq, ack, plen)
            cap = wire if wire < snap else snap
            room = cap - len(hdr)
            if room <= 0:
                data = hdr[:cap]
            elif plen >= room:
                data = hdr + FILL[:room]
            else:
                data = hdr + FILL[:plen] + zeros[: room - plen]
            write(rec(sec, usec, cap, wire) + data)
            frame += 1
            st.tcp_packets += 1
            st.bytes_written += 16 + cap
            st.wire_bytes += wire
            if lv.i == 0:
                lv.stream = stream
                stream += 1
                lv.first_frame = frame
                open_now += 1
                st.peak_open = max(st.peak_open, open_now)
            lv.last_frame = frame
            lv.i += 1
            if lv.i < len(lv.segs):
                replace(heap, (lv.segs[lv.i][0], tie, lv))
                tie += 1
                continue
            pop(heap)
            open_now -= 1
            self.closed(lv)
            if lv.out.close_type == "close_wait":
                pending.append(lv)  # its truth needs the end of the capture
            else:
                truth.write(json.dumps(self.finish(lv, 0)) + "\n")
        st.packets = frame
        st.first_us = T0_US
        st.last_us = t if frame else T0_US
        for lv in pending:
            truth.write(json.dumps(self.finish(lv, st.last_us)) + "\n")


def _accumulate(values: Any) -> Any:
    total = 0.0
    for v in values:
        total += v
        yield total


def _role(x: int | str | None) -> str | None:
    if x is None:
        return None
    if isinstance(x, str):
        return x
    return ROLE[x]


def _ip_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _ip_bytes(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# -- command line -------------------------------------------------------------------


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    a, b = float(lo), float(hi or lo)
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"{text!r}: want MIN,MAX with 0 <= MIN <= MAX")
    return a, b


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=Path("bench/out"))
    p.add_argument("--name", help="file stem (default: from the counts and the seed)")
    p.add_argument("--connections", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=2_000, help="connections open at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"NAME=WEIGHT,... (default {DEFAULT_MIX})")
    p.add_argument("--ipv6", type=float, default=0.1, help="share of IPv6 connections")
    p.add_argument("--snaplen", type=int, default=96, help="bytes kept per frame, as tcpdump -s")
    p.add_argument("--duration", type=_pair, default=(0.5, 5.0), help="seconds MIN,MAX")
    p.add_argument("--rtt", type=_pair, default=(0.1, 50.0), help="milliseconds MIN,MAX")
    p.add_argument("--reuse", type=float, default=0.02, help="share reusing a closed 4-tuple")
    p.add_argument("--reuse-gap", type=_pair, default=(0.05, 90.0), help="seconds MIN,MAX")
    p.add_argument("--wrap", type=float, default=0.01, help="share whose sequence numbers wrap")
    p.add_argument("--data-retx", type=float, default=0.01, help="share of data sent twice")
    p.add_argument(
        "--midstream",
        type=float,
        default=0.005,
        help="share of connections (the first) whose handshake predates the capture",
    )
    p.add_argument(
        "--long-lived",
        type=float,
        default=0.1,
        help="share of open connections busy for minutes, until the capture ends",
    )
    p.add_argument("--other", type=float, default=0.005, help="non-TCP frames per TCP frame")
    p.add_argument(
        "--stuck-after",
        type=float,
        default=60.0,
        help="idle seconds that make a CLOSE_WAIT stuck (fintrace's --stuck-after)",
    )
    a = p.parse_args(argv)
    if a.snaplen < 60:
        p.error("--snaplen below 60 would cut TCP headers")
    try:
        mix = parse_mix(a.mix)
    except ValueError as e:
        p.error(str(e))
    return Options(
        out_dir=a.out_dir,
        name=a.name,
        connections=a.connections,
        concurrency=a.concurrency,
        seed=a.seed,
        mix=mix,
        ipv6=a.ipv6,
        snaplen=a.snaplen,
        duration=a.duration,
        rtt_ms=a.rtt,
        reuse=a.reuse,
        reuse_gap=a.reuse_gap,
        wrap=a.wrap,
        data_retx=a.data_retx,
        midstream=a.midstream,
        long_lived=a.long_lived,
        other=a.other,
        stuck_after=a.stuck_after,
    )


def generate(o: Options) -> dict[str, Any]:
    """Write the capture, its truth and its meta file; return the meta data."""
    o.out_dir.mkdir(parents=True, exist_ok=True)
    pcap_path = o.out_dir / f"{o.stem}.pcap"
    truth_path = o.out_dir / f"{o.stem}.truth.jsonl"
    g = Generator(o)
    t0 = time.perf_counter()
    with open(pcap_path, "wb", buffering=1 << 22) as pcap, open(truth_path, "w") as truth:
        g.write(pcap, truth)
    elapsed = time.perf_counter() - t0
    st = g.stats
    span = max(st.last_us - st.first_us, 1) / 1e6
    meta: dict[str, Any] = {
        "capture": pcap_path.name,
        "truth": truth_path.name,
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(o).items()
            if k != "out_dir"
        },
        "packets": st.packets,
        "tcp_packets": st.tcp_packets,
        "connections": sum(st.close_types.values()),
        "file_bytes": st.bytes_written + 24,
        "wire_bytes": st.wire_bytes,
        "span_s": round(span, 3),
        "mean_open": round(st.open_seen / max(o.connections, 1), 1),
        "peak_open": st.peak_open,
        "packets_per_connection": round(st.tcp_packets / max(sum(st.close_types.values()), 1), 2),
        "close_types": dict(sorted(st.close_types.items())),
        "features": dict(sorted(st.features.items())),
        "variants": dict(sorted(st.variants.items())),
        "generate_s": round(elapsed, 1),
    }
    (o.out_dir / f"{o.stem}.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    meta = generate(o)
    print(
        f"{o.out_dir / meta['capture']}: {meta['packets']:,} frames, "
        f"{meta['connections']:,} connections ({meta['packets_per_connection']} packets each), "
        f"{meta['file_bytes'] / 1e6:.0f} MB, {meta['span_s']:.0f} s of traffic, "
        f"{meta['mean_open']:.0f} open on average (peak {meta['peak_open']}), "
        f"made in {meta['generate_s']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
