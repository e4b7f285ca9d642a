"""What went over the wire, read with tshark (the Wireshark oracle), not with fintrace.

The recorder uses it for the few facts only the wire can tell: which
Wireshark stream each connection got, whether the kernel put its ACK of a
FIN on its own FIN, and how often a FIN was sent.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
FIELDS = (
    "frame.number",
    "tcp.stream",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.len",
    "frame.time_epoch",
)


@dataclass(frozen=True, slots=True)
class Seg:
    frame: int
    stream: int
    src: str
    sport: int
    dport: int
    flags: int
    seq: int
    ack: int
    length: int
    ts: float


@dataclass(frozen=True, slots=True)
class Capture:
    segs: list[Seg]
    #: Time of the capture's last packet, TCP or not: "the end of the capture".
    end_ts: float


def read(path: Path) -> Capture:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    segs = []
    end_ts = 0.0
    for line in out.splitlines():
        frame, stream, ip4, ip6, sport, dport, flags, seq, ack, length, ts = line.split("\t")
        end_ts = float(ts)
        if not stream:
            continue
        segs.append(
            Seg(
                int(frame),
                int(stream),
                ip4 or ip6,
                int(sport),
                int(dport),
                int(flags, 16),
                int(seq),
                int(ack),
                int(length),
                float(ts),
            )
        )
    return Capture(segs, end_ts)


def by_stream(segs: list[Seg]) -> dict[int, list[Seg]]:
    out: dict[int, list[Seg]] = {}
    for s in segs:
        out.setdefault(s.stream, []).append(s)
    return out


def client_of(stream: list[Seg]) -> tuple[str, int]:
    """The sender of the stream's first SYN without ACK."""
    for s in stream:
        if s.flags & (SYN | ACK) == SYN:
            return s.src, s.sport
    raise ValueError(f"stream of frame {stream[0].frame} has no SYN")


def _covers(ack: int, fin_end: int) -> bool:
    """ack ≥ fin_end in 32-bit sequence space."""
    return (ack - fin_end) % 2**32 < 2**31


def ack_of_first_fin(stream: list[Seg]) -> Seg | None:
    """The peer's first segment acknowledging the stream's first FIN."""
    first = next((s for s in stream if s.flags & FIN), None)
    if first is None:
        return None
    fin_end = (first.seq + first.length + 1) % 2**32
    for s in stream:
        if (
            s.frame > first.frame
            and (s.src, s.sport) != (first.src, first.sport)
            and s.flags & ACK
            and _covers(s.ack, fin_end)
        ):
            return s
    return None


def passive_fin_piggybacked(stream: list[Seg]) -> bool | None:
    """Whether the first segment acknowledging the first FIN carries the peer's FIN.

    None when no FIN or no acknowledgement of it is on the wire.
    """
    ack = ack_of_first_fin(stream)
    return None if ack is None else bool(ack.flags & FIN)


def close_wait_s(stream: list[Seg], end_ts: float) -> float | None:
    """From the passive side's ACK of the first FIN to its own FIN (or the capture's end)."""
    ack = ack_of_first_fin(stream)
    if ack is None:
        return None
    fin = next(
        (s for s in stream if s.flags & FIN and (s.src, s.sport) == (ack.src, ack.sport)), None
    )
    return (fin.ts if fin is not None else end_ts) - ack.ts


def fins_sent(stream: list[Seg], sender: tuple[str, int]) -> int:
    """FIN segments ``sender`` put on the wire (the first and every retransmission)."""
    return sum(1 for s in stream if (s.src, s.sport) == sender and s.flags & FIN)
