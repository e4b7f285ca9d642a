"""Stream numbering at the edges: when does a SYN or SYN+ACK start a new stream?

Each case is a handful of crafted segments on one 4-tuple. The expected
``tcp.stream`` of every packet was read from tshark 4.0.17 (Debian 12) and
tshark 4.4.18 (Debian 13, run in a debootstrap chroot); fintrace must agree
with each release under ``--numbering wireshark-4.0`` / ``wireshark-4.4``.
Where the installed tshark is one of those releases, the test also asks it,
so the recorded expectations are re-checked against the real oracle.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from fintrace.pipeline import AnalyzeOptions, analyze

from conftest import need

A, B = "10.0.0.1", "10.0.0.2"


def ab(flags: str, seq: int, ack: int = 0, load: bytes = b"") -> Packet:
    p = Ether() / IP(src=A, dst=B) / TCP(sport=1000, dport=80, flags=flags, seq=seq, ack=ack)
    return p / Raw(load) if load else p


def ba(flags: str, seq: int, ack: int = 0, load: bytes = b"") -> Packet:
    p = Ether() / IP(src=B, dst=A) / TCP(sport=80, dport=1000, flags=flags, seq=seq, ack=ack)
    return p / Raw(load) if load else p


def quoted(flags: str, seq: int, ack: int = 0) -> Packet:
    """An ICMP port-unreachable quoting a segment from A to B (20 bytes of TCP)."""
    inner = bytes(IP(src=A, dst=B) / TCP(sport=1000, dport=80, flags=flags, seq=seq, ack=ack))
    return Ether() / IP(src="10.0.0.3", dst=A) / ICMP(type=3, code=3) / Raw(inner[:40])


# name: (packets, streams per packet under 4.0, under 4.4)
CASES: dict[str, tuple[Callable[[], list[Packet]], list[int], list[int]]] = {
    "midstream data then SYN seq-1": (
        lambda: [ab("PA", 101, 500, b"x" * 10), ab("S", 100)],
        [0, 0],
        [0, 0],
    ),
    "midstream data then SYN same seq": (
        lambda: [ab("PA", 101, 500, b"x" * 10), ab("S", 101)],
        [0, 1],
        [0, 1],
    ),
    "peer's ACK sets the base": (
        lambda: [ba("PA", 500, 101, b"x" * 10), ab("S", 100)],
        [0, 0],
        [0, 0],
    ),
    "peer's ACK sets the base, other seq": (
        lambda: [ba("PA", 500, 101, b"x"), ab("S", 101)],
        [0, 1],
        [0, 1],
    ),
    "peer's segment without ACK sets none": (
        lambda: [ba("P", 500, 101, b"x"), ab("S", 101)],
        [0, 0],
        [0, 0],
    ),
    "retransmitted SYN": (lambda: [ab("S", 100), ab("S", 100)], [0, 0], [0, 0]),
    "SYN with a new ISN": (lambda: [ab("S", 100), ab("S", 200)], [0, 1], [0, 1]),
    "SYN, RST, same SYN": (
        lambda: [ab("S", 100), ba("RA", 0, 101), ab("S", 100)],
        [0, 0, 0],
        [0, 0, 1],
    ),
    "SYN+ACK again after RST": (
        lambda: [ab("S", 100), ba("SA", 500, 101), ab("R", 101), ba("SA", 500, 101)],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ),
    "SYN+ACK again after FIN": (
        lambda: [
            ab("S", 100),
            ba("SA", 500, 101),
            ab("A", 101, 501),
            ab("FA", 101, 501),
            ba("SA", 500, 101),
        ],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1],
    ),
    "SYN+ACK with a new seq": (
        lambda: [ab("S", 100), ba("SA", 500, 101), ba("SA", 900, 101)],
        [0, 0, 0],
        [0, 0, 1],
    ),
    "SYN+ACK retransmitted": (
        lambda: [ab("S", 100), ba("SA", 500, 101), ba("SA", 500, 101)],
        [0, 0, 0],
        [0, 0, 0],
    ),
    "reverse SYN after FIN": (
        lambda: [ab("S", 100), ba("SA", 500, 101), ab("FA", 101, 501), ba("S", 777)],
        [0, 0, 0, 1],
        [0, 0, 0, 1],
    ),
    "FIN first, then SYN seq-1": (lambda: [ab("FA", 101, 5), ab("S", 100)], [0, 0], [0, 1]),
    "own RST first, then SYN seq-1": (lambda: [ab("R", 101), ab("S", 100)], [0, 0], [0, 1]),
    "SYN+FIN, then the same SYN": (lambda: [ab("FS", 100), ab("S", 100)], [0, 0], [0, 0]),
    "data after FIN, no SYN": (
        lambda: [ab("S", 100), ba("SA", 500, 101), ab("FA", 101, 501), ab("PA", 102, 501, b"y")],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ),
    "ICMP-quoted SYN with another ISN": (lambda: [ab("S", 100), quoted("S", 777)], [0, 1], [0, 1]),
    "ICMP-quoted SYN sets no base": (lambda: [quoted("S", 777), ab("S", 100)], [0, 0], [0, 0]),
    "ICMP-quoted FIN, then the same SYN": (
        lambda: [ab("S", 100), quoted("FA", 101, 5), ab("S", 100)],
        [0, 0, 0],
        [0, 0, 1],
    ),
    "ICMP-quoted RST, then the same SYN": (
        lambda: [ab("S", 100), quoted("R", 101), ab("S", 100)],
        [0, 0, 0],
        [0, 0, 1],
    ),
    "two reuses after FIN": (
        lambda: [
            ab("S", 100),
            ba("SA", 500, 101),
            ab("FA", 101, 501),
            ab("S", 200),
            ba("SA", 700, 201),
            ab("FA", 201, 701),
            ab("S", 200),
        ],
        [0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 2],
    ),
}

RELEASES = {"wireshark-4.0": 1, "wireshark-4.4": 2}


def _write(tmp_path: Path, name: str) -> Path:
    path = tmp_path / (re.sub(r"\W+", "_", name) + ".pcap")
    packets = CASES[name][0]()
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i / 1000
    wrpcap(str(path), packets)
    return path


def _fintrace_streams(path: Path, numbering: str) -> list[int]:
    """The stream of every packet, from the connections' frame spans."""
    conns = sorted(
        analyze(AnalyzeOptions(paths=(str(path),), numbering=numbering)).connections(),
        key=lambda c: c.first_frame,
    )
    out: list[int] = []
    for c in conns:
        # In these cases every packet is TCP (or quotes it) and each stream's
        # packets are contiguous, so spans cover the capture exactly.
        assert c.packets == c.last_frame - c.first_frame + 1
        out.extend([c.stream] * c.packets)
    return out


@pytest.mark.parametrize("numbering", sorted(RELEASES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_fintrace_numbers_as_the_release(tmp_path: Path, name: str, numbering: str) -> None:
    path = _write(tmp_path, name)
    expected = CASES[name][RELEASES[numbering]]
    assert _fintrace_streams(path, numbering) == expected


def _installed_release() -> str | None:
    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"TShark \(Wireshark\) (\d+)\.(\d+)", out.stdout)
    if not m:
        return None
    return {("4", "0"): "wireshark-4.0", ("4", "4"): "wireshark-4.4"}.get(m.groups())


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_expectations_match_the_installed_tshark(tmp_path: Path, name: str) -> None:
    need("tshark")
    release = _installed_release()
    if release is None:
        pytest.skip("the installed tshark is neither 4.0 nor 4.4: no recorded expectations")
    path = _write(tmp_path, name)
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "tcp.stream"],
        capture_output=True,
        text=True,
        check=True,
    )
    streams = [int(s) for s in out.stdout.split()]
    assert streams == CASES[name][RELEASES[release]]
