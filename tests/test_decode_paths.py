"""The decoder's fast path and its general path agree exactly (issue 6).

``segments()`` decodes the common shapes inline and sends everything else to
``decode_packet()``; ``segments(..., general_only=True)`` sends every packet
there. On every capture under ``captures/`` and in the shared corpus both
must give the same segment tuples, the same skip counts and the same frame
count; and on packets whose IP and TCP header fields are mutated at random
(lengths that lie, options, fragments, versions, cuts), one record at a time.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fintrace.decode import DecodeStats, Segment, segments
from fintrace.errors import FintraceError
from fintrace.reader import CaptureFile, Record
from fintrace.reassembly import Reassembler

from conftest import CAPTURES, ROOT, capture_files, corpus_files

FILES = [*capture_files(), *corpus_files()]


def label(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(CAPTURES) else path.name


def decode(
    records: list[Record], *, general_only: bool
) -> tuple[list[Segment], dict[str, int], int]:
    skipped: Counter[str] = Counter()
    frags = Reassembler(skipped)
    stats = DecodeStats(skipped)
    segs = list(segments(iter(records), stats, frags, general_only=general_only))
    frags.finish()
    return segs, {k: v for k, v in skipped.items() if v}, stats.frames


def read(path: Path) -> list[Record]:
    with CaptureFile(path) as cap:
        # Records point into the reader's chunks; copy each packet out so
        # the list outlives the file.
        return [
            (ts, bytes(buf[off : off + n]), 0, n, orig, lt)
            for ts, buf, off, n, orig, lt in cap.records()
        ]


@pytest.mark.parametrize("path", FILES, ids=[label(p) for p in FILES])
def test_fast_and_general_paths_agree_on_every_capture(path: Path) -> None:
    try:
        records = read(path)
    except FintraceError as exc:
        # Not a capture: neither path has anything to decode; the refusal is one line.
        assert "\n" not in str(exc)
        return
    fast = decode(records, general_only=False)
    general = decode(records, general_only=True)
    assert fast[2] == general[2] == len(records)
    assert fast[1] == general[1], "skip counts differ"
    mismatched = [(f, g) for f, g in zip(fast[0], general[0], strict=False) if f != g]
    assert not mismatched[:3], f"first differing segments (fast, general): {mismatched[:3]}"
    assert len(fast[0]) == len(general[0])


def test_the_captures_exercise_both_paths() -> None:
    # The agreement above means little unless the captures hold packets the
    # fast path takes and packets only the general path can decode.
    path = CAPTURES / "formats" / "pcap_le_usec.pcap"
    segs, skipped, _ = decode(read(path), general_only=False)
    assert len(segs) == 14 and skipped == {"not_tcp": 1}
    segs, skipped, _ = decode(read(CAPTURES / "formats" / "vlan_stacks.pcap"), general_only=False)
    assert len(segs) == 54


# -- mutated packets ------------------------------------------------------------


def _templates() -> list[Record]:
    """One SYN and one data segment per link type the fast path knows, v4 and v6."""
    out = []
    for name in (
        "pcap_le_usec.pcap",
        "linux_sll.pcap",
        "linux_sll2.pcap",
        "raw_ip_lt101.pcap",
        "raw_ipv4_lt228.pcap",
        "raw_ipv6_lt229.pcap",
        "raw_lt228_with_ipv6.pcap",
        "raw_lt229_with_ipv4.pcap",
        "snaplen_54.pcap",
    ):
        records = read(CAPTURES / "formats" / name)
        out += [records[i] for i in (0, 3, 4, 10, 13)]
    return out


TEMPLATES = _templates()
LINK_HEADER = {1: 14, 113: 16, 276: 20, 101: 0, 228: 0, 229: 0}


@st.composite
def mutated(draw: st.DrawFn) -> Record:
    ts, pkt, _, _, origlen, lt = draw(st.sampled_from(TEMPLATES))
    link = LINK_HEADER[lt]
    data = bytearray(pkt)
    if lt in (228, 229, 101) and draw(st.booleans()):
        lt = draw(st.sampled_from([12, 14, 101, 228, 229]))
    # Overwrite a few bytes of the IP and TCP headers (or the link header's type).
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(max(0, link - 2), min(len(data) - 1, link + 60)))
        data[at] = draw(
            st.sampled_from(
                [
                    0,
                    1,
                    5,
                    6,
                    0x20,
                    0x40,
                    0x45,
                    0x46,
                    0x50,
                    0x60,
                    0x86,
                    0xDD,
                    0x08,
                    0xFF,
                    draw(st.integers(0, 255)),
                ]
            )
        )
    if draw(st.booleans()):
        # A lying IP length field.
        v = data[link] >> 4 if len(data) > link else 0
        where = link + 2 if v == 4 else link + 4
        if len(data) >= where + 2:
            struct.pack_into(">H", data, where, draw(st.integers(0, 200)))
    cut = draw(st.integers(0, len(data)))
    if draw(st.booleans()):
        data = data[:cut]
    wire = max(len(data), origlen + draw(st.integers(-20, 40)))
    # The reader's records point into a chunk that holds the next records:
    # bytes past the captured length must never be read (here, window-scale
    # options that would be believed).
    return ts, bytes(data) + NEXT_RECORD, 0, len(data), wire, lt


NEXT_RECORD = b"\x01\x03\x03\x07" * 16


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(mutated(), min_size=1, max_size=3))
def test_fast_and_general_paths_agree_on_mutated_headers(records: list[Record]) -> None:
    assert decode(records, general_only=False) == decode(records, general_only=True)
