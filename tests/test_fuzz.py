"""Mutation fuzzing of every committed and corpus capture (hypothesis, bounded).

Each example takes one capture, applies one to four mutations (bit flips, a
cut, a rewritten length field, a record or block made shorter with its
lengths kept consistent, a rewritten header byte of a packet, records or
blocks spliced: duplicated, dropped, swapped or borrowed from another file)
and runs ``fintrace analyze --format json`` on the result. The rules of
issue 5 must hold:

* exit status 0 or 2, and no exception but :class:`FintraceError` leaves
  the core (the CLI turns only that one into exit status 2);
* exit 2: nothing on stdout, one line on stderr, ``fintrace: error: <path>: ...``;
* exit 0: a valid JSON document whose ``captures[]`` add up (skip counts
  positive and at most the packets, a truncated file has a warning);
* the run ends within :data:`TIME_BOUND` seconds;
* a rewritten length field never makes fintrace allocate what it claims.

Examples are derandomized (the same inputs on every run) and bounded:
:data:`TOTAL_EXAMPLES` shared among all input files, at least
:data:`MIN_EXAMPLES` each. ``FINTRACE_FUZZ_EXAMPLES=N`` raises the total for
a longer local run; ``fuzz/atheris_fintrace.py`` is the coverage-guided
fuzzer for much longer ones (``docs/fuzzing.md``). A failing input is saved
under the system's temporary directory (the assertion message says where):
minimise it and commit it under ``captures/regressions/``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import struct
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fintrace.cli import main
from fintrace.model import CloseType

from conftest import CAPTURES, capture_files, corpus_files

#: Every input file: the committed captures (regressions included) and the corpus.
FILES = capture_files() + corpus_files()
#: Larger inputs are fuzzed through their first 256 KiB (a cut is one more mutation).
MAX_INPUT = 256 * 1024
TOTAL_EXAMPLES = int(os.environ.get("FINTRACE_FUZZ_EXAMPLES", "2500"))
MIN_EXAMPLES = 4
PER_FILE = max(MIN_EXAMPLES, TOTAL_EXAMPLES // max(1, len(FILES)))
#: Seconds one run may take: inputs are at most 256 KiB, a run takes milliseconds.
TIME_BOUND = 10.0
#: Peak Python allocation allowed on an input whose length fields were rewritten:
#: the reader's 4 MiB read buffer and the run's own objects, nothing like a
#: claimed gigabyte.
MEMORY_BOUND = 48 * 1024 * 1024
FAILURES = Path(tempfile.gettempdir()) / "fintrace-fuzz-failures"

#: Values a length field is rewritten to: the edges of what the reader accepts.
LENGTHS = (
    0, 1, 3, 4, 8, 11, 12, 13, 15, 16, 20, 24, 27, 28, 31, 32, 40, 54, 65535, 65536,
    262_143, 262_144, 262_145, 16 * 1024 * 1024 - 4, 16 * 1024 * 1024, 16 * 1024 * 1024 + 4,
    0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFC, 0xFFFF_FFFF,
)  # fmt: skip
#: Values a packet header byte is rewritten to: IHL, version, data offset and
#: protocol edges (0x45, 0x4F, 0x50, 0xF0, 6, 17, 41, 44, 60, ...).
HEADER_BYTES = (0, 1, 2, 4, 5, 6, 0x11, 0x29, 0x2C, 0x2F, 0x33, 0x3A, 0x3C, 0x40, 0x41, 0x45,
                0x46, 0x4F, 0x50, 0x60, 0x80, 0x86, 0xDD, 0xF0, 0xFF)  # fmt: skip


# -- the structure of a capture: units (records or blocks) and their length fields ----------


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a capture's records or blocks lie and which fields hold lengths."""

    head: int  #: bytes before the first unit (the pcap file header; 0 for pcapng)
    units: tuple[tuple[int, int], ...]  #: (start, end) of each record or block
    lengths: tuple[tuple[int, str], ...]  #: (offset, byte order) of 32-bit length fields
    packets: tuple[tuple[int, int], ...]  #: (start, end) of each packet's bytes


def layout(data: bytes) -> Layout:
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        return _pcapng_layout(data)
    return _pcap_layout(data)


def _pcap_layout(data: bytes) -> Layout:
    endian = ">" if data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "<"
    units, lengths, packets = [], [(16, endian)], []
    off = 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, off + 8)[0]
        end = off + 16 + caplen
        if end > len(data):
            break
        units.append((off, end))
        lengths += [(off + 8, endian), (off + 12, endian)]
        packets.append((off + 16, end))
        off = end
    return Layout(24, tuple(units), tuple(lengths), tuple(packets))


def _pcapng_layout(data: bytes) -> Layout:
    units, lengths, packets = [], [], []
    endian = "<"
    off = 0
    while off + 12 <= len(data):
        if data[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            endian = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, blen = struct.unpack_from(endian + "II", data, off)
        if blen < 12 or blen % 4 or off + blen > len(data):
            break
        units.append((off, off + blen))
        lengths += [(off + 4, endian), (off + blen - 4, endian)]
        if btype == 6 and blen >= 32:
            lengths += [(off + 20, endian), (off + 24, endian)]
            caplen = struct.unpack_from(endian + "I", data, off + 20)[0]
            packets.append((off + 28, min(off + 28 + caplen, off + blen)))
        elif btype == 3 and blen >= 16:
            lengths.append((off + 8, endian))
            packets.append((off + 12, off + blen - 4))
        elif btype == 1 and blen >= 20:
            lengths.append((off + 12, endian))
        off += blen
    return Layout(0, tuple(units), tuple(lengths), tuple(packets))


# -- mutations --------------------------------------------------------------------------------


@cache
def original(path: Path) -> tuple[bytes, bool]:
    """The capture's bytes (decompressed if gzip) and whether it was gzip."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)[:MAX_INPUT], True
        except (OSError, EOFError):
            return raw[:MAX_INPUT], False
    return raw[:MAX_INPUT], False


def _flip(draw: st.DrawFn, data: bytearray) -> str:
    n = draw(st.integers(1, 8))
    for _ in range(n):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    return "flip"


def _cut(draw: st.DrawFn, data: bytearray) -> str:
    del data[draw(st.integers(0, len(data) - 1)) :]
    return "cut"


def _length(draw: st.DrawFn, data: bytearray) -> str:
    fields = layout(bytes(data)).lengths
    if not fields:
        return _flip(draw, data)
    at, endian = draw(st.sampled_from(fields))
    if at + 4 > len(data):
        return "none"
    old = struct.unpack_from(endian + "I", data, at)[0]
    new = draw(st.sampled_from((*LENGTHS, old + 1, old - 1, old + 4, old - 4, old * 2)))
    struct.pack_into(endian + "I", data, at, new & 0xFFFF_FFFF)
    return "length"


def _header_byte(draw: st.DrawFn, data: bytearray) -> str:
    packets = layout(bytes(data)).packets
    if not packets:
        return _flip(draw, data)
    start, end = draw(st.sampled_from(packets))
    if end <= start:
        return "none"
    i = start + draw(st.integers(0, min(80, end - start) - 1))
    data[i] = draw(st.sampled_from(HEADER_BYTES))
    return "header"


def _splice(draw: st.DrawFn, data: bytearray) -> str:
    lay = layout(bytes(data))
    units = [bytes(data[a:b]) for a, b in lay.units]
    if not units:
        return _cut(draw, data)
    tail = bytes(data[lay.units[-1][1] :])
    how = draw(st.sampled_from(("duplicate", "drop", "swap", "borrow", "reverse")))
    i = draw(st.integers(0, len(units) - 1))
    j = draw(st.integers(0, len(units)))
    if how == "duplicate":
        units.insert(j, units[i])
    elif how == "drop":
        del units[i]
    elif how == "swap":
        k = min(j, len(units) - 1)
        units[i], units[k] = units[k], units[i]
    elif how == "reverse":
        units.reverse()
    else:
        other, _ = original(draw(st.sampled_from(FILES)))
        donor = layout(other).units
        if donor:
            a, b = draw(st.sampled_from(donor))
            units.insert(j, other[a:b])
    data[:] = bytes(data[: lay.head]) + b"".join(units) + tail
    return "splice"


def _shrink(draw: st.DrawFn, data: bytearray) -> str:
    """Make one record or block shorter, its length fields kept consistent.

    What a cut packet or a writer's bug looks like: a block too short for
    its type whose neighbours are intact, or such a block at the very end.
    """
    raw = bytes(data)
    lay = layout(raw)
    if not lay.units:
        return _cut(draw, data)
    k = draw(st.integers(0, len(lay.units) - 1))
    start, end = lay.units[k]
    if lay.head:  # classic pcap: a shorter packet, consistent caplen
        endian = lay.lengths[0][1]
        new = draw(st.integers(0, max(0, end - start - 16)))
        struct.pack_into(endian + "I", data, start + 8, new)
        if draw(st.booleans()):
            struct.pack_into(endian + "I", data, start + 12, new)
        del data[start + 16 + new : end]
        return "shrink"
    endian = next((e for at, e in lay.lengths if at == start + 4), "<")
    new = draw(st.sampled_from([n for n in (12, 16, 20, 24, 28, 32) if n <= end - start]))
    struct.pack_into(endian + "I", data, start + 4, new)
    struct.pack_into(endian + "I", data, start + new - 4, new)
    del data[start + new : end]
    return "shrink"


MUTATIONS = (_flip, _cut, _length, _header_byte, _splice, _shrink)


@st.composite
def mutated(draw: st.DrawFn, path: Path) -> tuple[bytes, tuple[str, ...]]:
    """The capture at ``path`` with one to four mutations; and their names."""
    base, gzipped = original(path)
    data = bytearray(base)
    done = []
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        done.append(draw(st.sampled_from(MUTATIONS))(draw, data))
    out = bytes(data)
    if gzipped and draw(st.booleans()):
        out = gzip.compress(out, mtime=0)
        if draw(st.booleans()) and out:
            # Damage the compressed stream itself.
            z = bytearray(out)
            z[draw(st.integers(0, len(z) - 1))] ^= 0xFF
            out = bytes(z[: draw(st.integers(1, len(z)))])
            done.append("gzip-damage")
    return out, tuple(done)


# -- the rules --------------------------------------------------------------------------------


class Hang(Exception):
    """The run took longer than TIME_BOUND."""


@contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _keep(data: bytes, name: str) -> Path:
    FAILURES.mkdir(parents=True, exist_ok=True)
    p = FAILURES / f"{hashlib.sha256(data).hexdigest()[:16]}-{name}"
    p.write_bytes(data)
    return p


def check_run(path: Path, *, measure_memory: bool = False) -> dict[str, Any] | None:
    """Run the CLI on ``path`` and assert the rules; the JSON document on exit 0."""
    data = path.read_bytes()
    if measure_memory:
        tracemalloc.start()
    started = time.monotonic()
    try:
        with time_bound(TIME_BOUND):
            result = CliRunner().invoke(main, ["analyze", "-q", "--format", "json", str(path)])
        peak = tracemalloc.get_traced_memory()[1] if measure_memory else 0
    finally:
        if measure_memory:
            tracemalloc.stop()
    elapsed = time.monotonic() - started
    where = f"(input kept as {_keep(data, path.name)})"
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"{type(exc).__name__}: {exc} escaped {where}") from exc
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.output} {where}"
    assert elapsed < TIME_BOUND, f"{elapsed:.1f} s {where}"
    assert peak < MEMORY_BOUND, f"peak {peak} bytes {where}"
    assert "Traceback" not in result.stderr, where
    if result.exit_code == 2:
        assert result.stdout == "", where
        lines = result.stderr.splitlines()
        assert len(lines) == 1, f"{result.stderr!r} {where}"
        assert lines[0].startswith(f"fintrace: error: {path}: "), f"{lines[0]!r} {where}"
        return None
    doc: dict[str, Any] = json.loads(result.stdout)
    for cap in doc["captures"]:
        skipped = cap["skipped"]
        assert all(v > 0 for v in skipped.values()), f"{skipped} {where}"
        assert sum(skipped.values()) <= cap["packets"], f"{skipped} {where}"
        assert cap["tcp_packets"] == cap["packets"] - sum(skipped.values()), where
        assert not cap["truncated"] or cap["warnings"], where
    close_types = {c.value for c in CloseType}
    for conn in doc["connections"]:
        assert conn["close_type"] in close_types, where
        assert conn["packets"] >= 1, where
    return doc


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fintrace-fuzz-") as d:
        yield Path(d)


def _id(p: Path) -> str:
    return str(p.relative_to(p.parent.parent))


@pytest.mark.skipif(not FILES, reason="no captures to mutate")
@pytest.mark.parametrize("path", FILES, ids=[_id(p) for p in FILES])
@settings(
    max_examples=PER_FILE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_capture_is_analysed_or_refused(
    workdir: Path, path: Path, data: st.DataObject
) -> None:
    blob, done = data.draw(mutated(path), label="mutated capture")
    target = workdir / path.name
    target.write_bytes(blob)
    check_run(target, measure_memory="length" in done)


# -- regressions: every input a fuzzer broke fintrace with -------------------------------------

REGRESSIONS = sorted((CAPTURES / "regressions").glob("*.pcap*"))


def readable_records(path: Path) -> int:
    """Complete records in what can be decompressed of a cut gzip'd pcap (the oracle)."""
    z = zlib.decompressobj(wbits=31)
    data = z.decompress(path.read_bytes())
    return len(_pcap_layout(data).packets)


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_regression_capture(path: Path) -> None:
    expected = json.loads((path.parent / "expected.json").read_text())[path.name]
    doc = check_run(path, measure_memory=True)
    if expected["exit"] == 2:
        assert doc is None
        return
    assert doc is not None
    (cap,) = doc["captures"]
    packets = expected["packets"]
    if isinstance(packets, str):
        packets = readable_records(path)
        assert packets > 0
    assert cap["packets"] == packets
    assert cap["truncated"] == expected["truncated"]
    assert cap["skipped"] == expected["skipped"]


def test_every_regression_capture_has_an_expectation() -> None:
    path = CAPTURES / "regressions" / "expected.json"
    listed = set(json.loads(path.read_text())) if path.exists() else set()
    assert listed == {p.name for p in REGRESSIONS}


# Found by fuzz/atheris_fintrace.py (packet target): the fast path decoded IPv4
# in LINKTYPE_IPV6, which Wireshark and the general path refuse.
def test_fast_and_general_paths_agree_on_ipv4_in_link_type_229() -> None:
    from collections import Counter

    from fintrace.decode import DecodeStats, segments
    from fintrace.reassembly import Reassembler

    tcp = struct.pack(">HHIIBBHHH", 443, 40001, 90001, 70006, 0x50, 0x10, 64240, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, b"\n\0\0\3", b"\n\0\0\1")
    found = []
    for general_only in (False, True):
        skipped: Counter[str] = Counter()
        records = iter([(0.0, ip + tcp, 0, 40, 40, 229)])
        stats, frags = DecodeStats(skipped), Reassembler(skipped)
        segs = list(segments(records, stats, frags, general_only=general_only))
        found.append((segs, dict(skipped)))
    assert found[0] == found[1]
