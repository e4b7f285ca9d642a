"""Damaged input: analysed up to the damage with a warning, or refused in one line.

Every case of issue 5, each built in ``tmp_path`` from a small capture made
here with ``struct`` (or from ``captures/demo.pcap``). A refusal is exit
status 2 and exactly one line on stderr, ``fintrace: error: <path>: <problem>``;
an analysis of a damaged file is exit status 0, ``captures[].truncated`` and a
warning that says where the damage is; an undecodable packet is counted under
its reason in ``captures[].skipped``. Never a traceback.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from fintrace.cli import main
from fintrace.commands import COMMANDS
from fintrace.model import SkipReason
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.reassembly import MAX_PENDING, Reassembler

from conftest import CAPTURES

if TYPE_CHECKING:
    from collections.abc import Iterator

DEMO = CAPTURES / "demo.pcap"
T0 = 1_700_000_000

# -- building captures with struct ---------------------------------------------------

FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
#: NOP + window scale 0: the windows below are exact, so "outside the window" is exact.
WSCALE0 = b"\x01\x03\x03\x00"


def tcp(
    *,
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1,
    ack: int = 0,
    flags: int = 0x10,
    offset: int | None = None,
    window: int = 65535,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    words = 5 + len(options) // 4 if offset is None else offset
    head = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, words << 4, flags, window, 0, 0)
    return head + options + payload


def ipv4(
    payload: bytes,
    *,
    src: bytes = b"\x0a\x00\x00\x01",
    dst: bytes = b"\x0a\x00\x00\x02",
    proto: int = 6,
    ihl: int = 5,
    total: int | None = None,
    ident: int = 1,
    frag: int = 0x4000,
) -> bytes:
    length = 20 + len(payload) if total is None else total
    head = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, frag, 64, proto, 0, src, dst)
    return head + payload


def ipv6(payload: bytes, *, nh: int = 6, plen: int | None = None) -> bytes:
    src = b"\x20\x01" + bytes(13) + b"\x01"
    dst = b"\x20\x01" + bytes(13) + b"\x02"
    length = len(payload) if plen is None else plen
    return struct.pack(">IHBB16s16s", 6 << 28, length, nh, 64, src, dst) + payload


def eth(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return (
        b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack(">H", ethertype) + payload
    )


def pcap(packets: list[bytes], *, linktype: int = 1) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", T0 + i // 1000, (i % 1000) * 1000, len(p), len(p)) + p)
    return b"".join(out)


def block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def shb(version: int = 1) -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, version, 0, -1))


def idb(linktype: int = 1) -> bytes:
    return block(1, struct.pack("<HHI", linktype, 0, 0))


def epb(i: int, packet: bytes) -> bytes:
    t = (T0 + i) * 1_000_000
    head = struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(packet), len(packet))
    return block(6, head + packet)


def pcapng(packets: list[bytes], *, linktype: int = 1) -> bytes:
    return shb() + idb(linktype) + b"".join(epb(i, p) for i, p in enumerate(packets))


def records(data: bytes) -> list[bytes]:
    """The packets of a little-endian classic pcap (the demo capture)."""
    out = []
    off = 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        out.append(data[off + 16 : off + 16 + caplen])
        off += 16 + caplen
    return out


def set_u32(data: bytes, at: int, value: int, endian: str = "<") -> bytes:
    b = bytearray(data)
    struct.pack_into(endian + "I", b, at, value)
    return bytes(b)


class Conversation:
    """One IPv4 TCP connection over Ethernet with correct sequence numbers."""

    def __init__(self, *, sport: int = 40000, dport: int = 80) -> None:
        self.sport, self.dport = sport, dport
        self.nxt = {"c": 1000, "s": 5000}
        self.packets: list[bytes] = []

    def send(
        self,
        who: str,
        flags: str,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        options: bytes = b"",
    ) -> int:
        """Append one segment; return its frame number."""
        peer = "s" if who == "c" else "c"
        s = self.nxt[who] if seq is None else seq
        f = sum(FLAGS[x] for x in flags)
        seg = tcp(
            sport=self.sport if who == "c" else self.dport,
            dport=self.dport if who == "c" else self.sport,
            seq=s,
            ack=self.nxt[peer] if "A" in flags else 0,
            flags=f,
            options=options,
            payload=payload,
        )
        src, dst = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
        self.packets.append(
            eth(ipv4(seg, src=src if who == "c" else dst, dst=dst if who == "c" else src))
        )
        if seq is None:
            self.nxt[who] = (s + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        return len(self.packets)

    def handshake(self) -> None:
        self.send("c", "S", options=WSCALE0)
        self.send("s", "SA", options=WSCALE0)
        self.send("c", "A")
        self.send("c", "PA", b"x" * 100)
        self.send("s", "A")

    def graceful_close(self) -> None:
        self.send("c", "FA")
        self.send("s", "A")
        self.send("s", "FA")
        self.send("c", "A")


def graceful_packets() -> list[bytes]:
    conv = Conversation()
    conv.handshake()
    conv.graceful_close()
    return conv.packets


# -- running fintrace ------------------------------------------------------------------


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["analyze", "-q", *args])


def assert_refused(result: Result, path: str | Path, problem: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr naming the file and the problem."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fintrace: error: {path}: "), lines[0]
    assert problem in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def analysed(path: Path, *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Exit 0; the capture's entry of ``captures[]`` and the connections."""
    result = cli("--format", "json", str(path), *extra)
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    (cap,) = doc["captures"]
    return cap, doc["connections"]


def assert_cut(cap: dict[str, Any], warning: str) -> None:
    assert cap["truncated"] is True
    assert len(cap["warnings"]) == 1, cap["warnings"]
    assert warning in cap["warnings"][0], cap["warnings"]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# -- files that are not captures ---------------------------------------------------------


def test_not_a_capture_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "notes.txt", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_refused(cli(str(p)), p, "not a pcap or pcapng capture (starts with 47 45 54 20)")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "empty.pcap", b"")
    assert_refused(cli(str(p)), p, "empty file")


@pytest.mark.parametrize(
    ("magic", "problem"),
    [
        (b"\x28\xb5\x2f\xfd", "zstd-compressed; decompress it first"),
        (b"\xa1\xb2\xcd\x34", "Kuznetzov's modified pcap is not supported"),
    ],
)
def test_other_kinds_of_file_are_named(tmp_path: Path, magic: bytes, problem: str) -> None:
    p = write(tmp_path, "odd.pcap", magic + bytes(60))
    assert_refused(cli(str(p)), p, problem)


def test_pcap_file_header_cut_off_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "cut.pcap", DEMO.read_bytes()[:10])
    assert_refused(cli(str(p)), p, "pcap file header is cut off")


def test_pcap_unknown_version_is_refused(tmp_path: Path) -> None:
    data = bytearray(DEMO.read_bytes())
    struct.pack_into("<H", data, 4, 7)
    p = write(tmp_path, "v7.pcap", bytes(data))
    assert_refused(cli(str(p)), p, "pcap version 7 is not supported")


def test_pcapng_section_header_cut_off_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "cut.pcapng", shb()[:20])
    assert_refused(cli(str(p)), p, "pcapng section header is cut off")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (shb(version=2), "pcapng version 2 is not supported"),
        (shb()[:8] + b"XXXX" + shb()[12:], "corrupt pcapng section header (bad byte-order magic)"),
        (set_u32(shb(), 4, 12), "corrupt pcapng section header (block length 12)"),
        (set_u32(shb(), 4, 30), "corrupt pcapng section header (block length 30)"),
        (set_u32(shb(), 4, 0x7FFFFFFC), "corrupt pcapng section header (block length 2147483644)"),
    ],
    ids=["unknown-version", "bad-byte-order-magic", "too-small", "not-multiple-of-4", "too-large"],
)
def test_corrupt_first_section_header_is_refused(
    tmp_path: Path, header: bytes, problem: str
) -> None:
    p = write(tmp_path, "bad.pcapng", header + idb() + epb(0, graceful_packets()[0]))
    assert_refused(cli(str(p)), p, problem)


def test_gzip_cut_before_any_capture_data_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "cut.pcap.gz", gzip.compress(DEMO.read_bytes())[:30])
    assert_refused(cli(str(p)), p, "the gzip stream is cut off")


# -- paths ---------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "nothing-here.pcap"
    assert_refused(cli(str(p)), p, "no such file")


def test_path_through_a_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "demo.pcap" / "inner.pcap"
    (tmp_path / "demo.pcap").write_bytes(DEMO.read_bytes())
    assert_refused(cli(str(p)), p, "no such file")


def test_directory_is_refused(tmp_path: Path) -> None:
    assert_refused(cli(str(tmp_path)), tmp_path, "is a directory, not a capture file")


def _as_nobody(cwd: Path, args: list[str]) -> tuple[int, str]:
    """Run the CLI in a forked child that dropped root, from ``cwd``.

    Root reads any file whatever its mode, so the permission check can only
    be seen by another user. The child changes into ``cwd`` before dropping
    root (pytest's own temporary directories are closed to other users) and
    uses modules the parent already imported (the interpreter's own files may
    be closed to them too).
    """
    cli(str(DEMO))  # import everything the child will need
    for name in COMMANDS:  # subcommands are imported when run (commands.LazyGroup)
        importlib.import_module(f"fintrace.commands.{name}")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.chdir(cwd)
            os.setgid(65534)
            os.setuid(65534)
            r = CliRunner().invoke(main, args)
            os.write(write_end, json.dumps([r.exit_code, r.stderr]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed"
    exit_code, stderr = json.loads(out)
    return int(exit_code), str(stderr)


def _unreadable(tmp_path: Path, relative: str, command: str = "analyze") -> tuple[int, str]:
    # show takes a stream number after the capture.
    more = ["0"] if command == "show" else []
    if os.geteuid() == 0:
        return _as_nobody(tmp_path, [command, "-q", relative, *more])
    r = CliRunner().invoke(main, [command, "-q", str(tmp_path / relative), *more])
    return r.exit_code, r.stderr.replace(str(tmp_path) + os.sep, "")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to drop root")
@pytest.mark.parametrize("command", ["analyze", "show"])
def test_file_without_read_permission_is_refused(tmp_path: Path, command: str) -> None:
    # show once had click check that its capture is readable, and click's refusal is its
    # usage text. Click sees the file only if the directory lets the user look it up.
    tmp_path.chmod(0o711)
    p = write(tmp_path, "secret.pcap", DEMO.read_bytes())
    p.chmod(0)
    try:
        code, stderr = _unreadable(tmp_path, "secret.pcap", command)
    finally:
        p.chmod(0o644)
    assert code == 2
    assert stderr == "fintrace: error: secret.pcap: permission denied\n"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to drop root")
def test_file_in_a_closed_directory_is_refused(tmp_path: Path) -> None:
    # stat() itself fails here: Path.exists() used to raise instead of saying so.
    d = tmp_path / "locked"
    d.mkdir()
    (d / "x.pcap").write_bytes(DEMO.read_bytes())
    d.chmod(0)
    try:
        code, stderr = _unreadable(tmp_path, "locked/x.pcap")
    finally:
        d.chmod(0o755)
    assert code == 2
    assert stderr == "fintrace: error: locked/x.pcap: permission denied\n"


def test_capture_from_a_pipe_is_read() -> None:
    # A pipe cannot seek back after the format is sniffed (``<(zcat x.pcap)``).
    proc = subprocess.run(
        [sys.executable, "-m", "fintrace", "analyze", "-q", "--format", "jsonl", "/dev/stdin"],
        input=DEMO.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 6


# -- outputs -------------------------------------------------------------------------------


def test_output_to_a_directory_is_refused(tmp_path: Path) -> None:
    assert_refused(cli(str(DEMO), "-o", str(tmp_path)), tmp_path, "cannot write output")


def test_output_under_a_missing_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    assert_refused(cli(str(DEMO), "-o", str(out)), out, "cannot write output")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_to_a_full_disk_is_refused() -> None:
    result = cli("--format", "jsonl", str(DEMO), "-o", "/dev/full")
    assert_refused(result, "/dev/full", "cannot write output (No space left on device)")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_standard_output_on_a_full_disk_is_refused() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "fintrace", "analyze", "-q", "--format", "jsonl", str(DEMO)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2
    assert (
        proc.stderr == "fintrace: error: <stdout>: cannot write output (No space left on device)\n"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["show", "-q", str(DEMO), "0"], "<stdout>"),
        (["check", "-q", "--max-stuck", "0", str(DEMO)], "<stdout>"),
        (["extract", "-q", str(DEMO), "-o", "/dev/full"], "/dev/full"),
        (["annotate", "-q", str(DEMO), "-o", "/dev/full"], "/dev/full"),
        (["report", "-q", str(DEMO), "-o", "/dev/full"], "/dev/full"),
    ],
    ids=["show", "check", "extract", "annotate", "report"],
)
def test_every_command_on_a_full_disk_says_so_in_one_line(args: list[str], named: str) -> None:
    # Standard output is /dev/full too: what is named is what failed first.
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "fintrace", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"fintrace: error: {named}: cannot write output (No space left on device)\n"
    )


#: Every command that writes a file: its arguments before the capture, and its output option.
WRITERS = {
    "analyze": (["analyze", "-q", "--format", "json"], "-o", "cannot write output"),
    "report": (["report", "-q"], "-o", "cannot write output"),
    "extract": (["extract", "-q"], "-o", "cannot write output"),
    "annotate": (["annotate", "-q"], "-o", "cannot write output"),
    "check": (["check", "-q", "--max-stuck", "0"], "--junit", "cannot write JUnit report"),
}


def write_with(command: str, capture: str | Path, output: str | Path) -> Result:
    args, option, _ = WRITERS[command]
    return CliRunner().invoke(main, [*args, str(capture), option, str(output)])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", list(WRITERS))
def test_output_file_on_a_full_disk_is_named_by_every_command(command: str) -> None:
    # extract and annotate once said '<output>': pcapwrite opens the file itself.
    result = write_with(command, DEMO, "/dev/full")
    assert_refused(result, "/dev/full", f"{WRITERS[command][2]} (No space left on device)")


@pytest.mark.parametrize("command", list(WRITERS))
def test_output_to_a_directory_is_refused_by_every_command(tmp_path: Path, command: str) -> None:
    # report, extract, annotate and check --junit once left it to click, whose
    # refusal is its usage text over several lines.
    result = write_with(command, DEMO, tmp_path)
    assert_refused(result, tmp_path, f"{WRITERS[command][2]} (Is a directory)")


@pytest.mark.parametrize("command", list(WRITERS))
@pytest.mark.parametrize("bad", ["missing", "not-a-capture"])
def test_no_output_is_left_behind_when_a_capture_is_refused(
    tmp_path: Path, command: str, bad: str
) -> None:
    # analyze once created its -o before opening the captures: an empty file stayed.
    capture = tmp_path / "in.pcap"
    if bad == "not-a-capture":
        capture.write_text("GET / HTTP/1.1\r\n")
    out = tmp_path / "out"
    result = write_with(command, capture, out)
    assert_refused(result, capture, "no such file" if bad == "missing" else "not a pcap")
    assert not out.exists()


# -- files cut short or with lying length fields ------------------------------------------------


def test_pcap_cut_in_a_record_header_is_analysed_to_the_cut(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    first = 24 + 16 + len(records(data)[0])
    p = write(tmp_path, "cut.pcap", data[: first + 7])
    cap, conns = analysed(p)
    assert_cut(cap, "the file ends inside a record (7 bytes left over); analysed up to the cut")
    assert cap["packets"] == 1
    assert len(conns) == 1


def test_pcap_cut_in_packet_data_is_analysed_to_the_cut(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    whole = records(data)
    keep = 24 + sum(16 + len(r) for r in whole[:20])
    p = write(tmp_path, "cut.pcap", data[: keep + 16 + 30])
    cap, _ = analysed(p)
    assert_cut(cap, "the file ends inside a record (46 bytes left over)")
    assert cap["packets"] == 20


def test_pcapng_cut_in_a_block_is_analysed_to_the_cut(tmp_path: Path) -> None:
    data = pcapng(records(DEMO.read_bytes()))
    p = write(tmp_path, "cut.pcapng", data[:-10])
    cap, _ = analysed(p)
    assert_cut(cap, "the file ends inside a block")
    assert cap["packets"] == len(records(DEMO.read_bytes())) - 1


def test_gzip_cut_in_the_middle_keeps_what_came_before(tmp_path: Path) -> None:
    # Big enough that the cut lies far inside the reader's first chunk: all
    # that was decompressed before it must still be analysed.
    packets = [eth(ipv4(tcp(sport=1024 + i, payload=bytes(200)))) for i in range(5000)]
    z = gzip.compress(pcap(packets))
    p = write(tmp_path, "cut.pcap.gz", z[: len(z) * 9 // 10])
    cap, _ = analysed(p)
    assert_cut(cap, "the gzip stream is cut off; analysed up to the cut")
    assert 4000 < cap["packets"] < 5000


def test_corrupt_gzip_data_keeps_what_came_before(tmp_path: Path) -> None:
    packets = [eth(ipv4(tcp(sport=1024 + i, payload=bytes(200)))) for i in range(5000)]
    z = bytearray(gzip.compress(pcap(packets)))
    z[len(z) // 2] ^= 0xFF
    p = write(tmp_path, "bad.pcap.gz", bytes(z))
    cap, _ = analysed(p)
    assert cap["truncated"] is True
    assert cap["warnings"][0].startswith("corrupt gzip data (")
    assert 0 < cap["packets"] < 5000


def _second_record_at(data: bytes) -> int:
    return 24 + 16 + len(records(data)[0])


@pytest.mark.parametrize("claim", [0xF000_0000, 0xFFFF_FFFF, 262_145])
def test_pcap_record_claiming_gigabytes_is_analysed_up_to_it(tmp_path: Path, claim: int) -> None:
    data = DEMO.read_bytes()
    at = _second_record_at(data)
    p = write(tmp_path, "huge.pcap", set_u32(data, at + 8, claim))
    cap, _ = analysed(p)
    assert_cut(cap, f"a record at byte {at} claims {claim} bytes (more than 262144)")
    assert cap["packets"] == 1


def test_lying_lengths_allocate_nothing_like_what_they_claim(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    at = _second_record_at(data)
    # A pcap record of 4 GB, and a pcapng block just under the largest block
    # fintrace accepts (16 MiB) in a file of a few kilobytes.
    big_pcap = write(tmp_path, "huge.pcap", set_u32(data, at + 8, 0xF000_0000))
    ng = pcapng(records(data))
    first_block_length = len(shb() + idb()) + 4
    big_ng = write(tmp_path, "huge.pcapng", set_u32(ng, first_block_length, 16 * 1024 * 1024 - 4))
    for path in (big_pcap, big_ng):
        tracemalloc.start()
        try:
            run = analyze(AnalyzeOptions(paths=(str(path),)))
            for _ in run.connections():
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert run.captures[0].truncated
        # The reader asks the OS for 4 MiB chunks; a lie of gigabytes must not show.
        assert peak < 12 * 1024 * 1024, (path.name, peak)


#: Where the second block of :func:`_ng_with_second_block` starts.
SECOND_AT = len(shb() + idb() + epb(0, graceful_packets()[0]))


def _ng_with_second_block(second: bytes) -> bytes:
    packets = graceful_packets()
    return (
        shb()
        + idb()
        + epb(0, packets[0])
        + second
        + b"".join(epb(i, p) for i, p in enumerate(packets[1:], 1))
    )


@pytest.mark.parametrize(
    ("length", "warning"),
    [
        (8, "has an impossible length (8)"),
        (0, "has an impossible length (0)"),
        (90, "has an impossible length (90)"),
        (91, "has an impossible length (91)"),
        (0xFFFF_FFF0, "has an impossible length (4294967280)"),
    ],
    ids=["too-small", "zero", "not-multiple-of-4", "odd", "too-large"],
)
def test_pcapng_block_length_that_lies_ends_the_analysis_there(
    tmp_path: Path, length: int, warning: str
) -> None:
    second = set_u32(epb(1, graceful_packets()[1]), 4, length)
    p = write(tmp_path, "lying.pcapng", _ng_with_second_block(second))
    cap, _ = analysed(p)
    assert_cut(cap, f"a pcapng block at byte {SECOND_AT} {warning}; the file is damaged from there")
    assert cap["packets"] == 1


def test_pcapng_block_length_beyond_the_file_is_a_cut(tmp_path: Path) -> None:
    second = set_u32(epb(1, graceful_packets()[1]), 4, 1 << 20)
    p = write(tmp_path, "lying.pcapng", _ng_with_second_block(second))
    cap, _ = analysed(p)
    assert_cut(cap, "the file ends inside a block")
    assert cap["packets"] == 1


def test_pcapng_packet_larger_than_its_block_ends_the_analysis(tmp_path: Path) -> None:
    second = set_u32(epb(1, graceful_packets()[1]), 20, 0xFFFF_FF00)
    p = write(tmp_path, "lying.pcapng", _ng_with_second_block(second))
    cap, _ = analysed(p)
    assert_cut(cap, "claims 4294967040 bytes, more than the block holds")
    assert cap["packets"] == 1


@pytest.mark.parametrize(
    ("second", "warning"),
    [
        (
            block(6, bytes(4)),
            f"a pcapng enhanced packet block at byte {SECOND_AT} is too short (16 bytes)",
        ),
        (block(2, bytes(4)), f"a pcapng packet block at byte {SECOND_AT} is too short (16 bytes)"),
        (
            block(3, b""),
            f"a pcapng simple packet block at byte {SECOND_AT} is too short (12 bytes)",
        ),
        (block(1, b""), f"a pcapng interface block at byte {SECOND_AT} is too short (12 bytes)"),
    ],
    ids=["epb", "pb", "spb", "idb"],
)
def test_pcapng_block_too_short_for_its_type(tmp_path: Path, second: bytes, warning: str) -> None:
    # Read past their end, these blocks once gave garbage packets (a negative
    # captured length for the simple packet block) or a struct.error.
    p = write(tmp_path, "short.pcapng", _ng_with_second_block(second))
    cap, _ = analysed(p)
    assert_cut(cap, warning)
    assert cap["packets"] == 1


def test_pcapng_short_enhanced_packet_block_at_the_very_end(tmp_path: Path) -> None:
    head = pcapng(graceful_packets()[:2])
    p = write(tmp_path, "short.pcapng", head + block(6, b""))
    cap, _ = analysed(p)
    assert_cut(cap, f"a pcapng enhanced packet block at byte {len(head)} is too short (12 bytes)")
    assert cap["packets"] == 2


def test_interface_option_longer_than_its_block_is_ignored(tmp_path: Path) -> None:
    # if_tsoffset (14) claiming 8 bytes with 4 left in the block.
    bad_idb = block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 14, 8) + b"\xff" * 4)
    packets = graceful_packets()
    p = write(
        tmp_path, "opt.pcapng", shb() + bad_idb + b"".join(epb(i, x) for i, x in enumerate(packets))
    )
    cap, conns = analysed(p)
    assert cap["truncated"] is False
    assert cap["packets"] == len(packets)
    assert [c["close_type"] for c in conns] == ["graceful"]


@pytest.mark.parametrize(
    ("header", "warning"),
    [
        (shb(version=3), "pcapng version 3 is not supported"),
        (shb()[:8] + b"XXXX" + shb()[12:], "bad byte-order magic"),
    ],
    ids=["unknown-version", "corrupt"],
)
def test_later_section_header_that_is_corrupt(tmp_path: Path, header: bytes, warning: str) -> None:
    packets = graceful_packets()
    data = shb() + idb() + epb(0, packets[0]) + header + idb() + epb(1, packets[1])
    p = write(tmp_path, "sections.pcapng", data)
    cap, _ = analysed(p)
    assert_cut(cap, warning)
    assert cap["packets"] == 1


def test_second_section_in_the_other_byte_order_is_read(tmp_path: Path) -> None:
    # Its length is in its own byte order, not the previous section's.
    packets = graceful_packets()
    big_shb = struct.pack(">II", 0x0A0D0D0A, 28) + struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)
    big_shb += struct.pack(">I", 28)
    big_idb = struct.pack(">IIHHII", 1, 20, 1, 0, 0, 20)
    t = (T0 + 5) * 1_000_000
    rest = b""
    for p in packets[1:]:
        body = struct.pack(">IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(p), len(p)) + p
        body += bytes(-len(body) % 4)
        rest += struct.pack(">II", 6, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))
    data = shb() + idb() + epb(0, packets[0]) + big_shb + big_idb + rest
    cap, conns = analysed(write(tmp_path, "mixed.pcapng", data))
    assert cap["truncated"] is False, cap["warnings"]
    assert cap["packets"] == len(packets)
    assert [c["close_type"] for c in conns] == ["graceful"]


# -- link types and packets that cannot be decoded -------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_unknown_link_type_is_counted_and_named(tmp_path: Path, fmt: str) -> None:
    packets = graceful_packets()
    data = pcap(packets, linktype=4242) if fmt == "pcap" else pcapng(packets, linktype=4242)
    cap, conns = analysed(write(tmp_path, f"lt.{fmt}", data))
    assert conns == []
    assert cap["skipped"] == {"unsupported_linktype": len(packets)}
    assert cap["warnings"] == ["link type(s) 4242 are not decoded"]
    assert cap["truncated"] is False


def _one_bad_packet(tmp_path: Path, bad: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A graceful connection with one damaged packet after its handshake."""
    packets = graceful_packets()
    packets.insert(3, bad)
    return analysed(write(tmp_path, "bad.pcap", pcap(packets)))


def _assert_connection_unharmed(conns: list[dict[str, Any]], anomalies: list[str]) -> None:
    (conn,) = conns
    assert conn["close_type"] == "graceful"
    assert conn["payload_bytes"] == {"client": 100, "server": 0}
    assert conn["anomalies"] == anomalies


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (eth(ipv4(tcp(), ihl=4)), "bad_ip_header"),
        (eth(ipv4(tcp(), ihl=0)), "bad_ip_header"),
        (eth(ipv4(b"", ihl=15)), "truncated_ip_header"),
        (eth(ipv4(tcp(), total=12)), "bad_ip_header"),
        (eth(ipv4(tcp())[:15]), "truncated_ip_header"),
        (eth(ipv4(tcp()[:10])), "truncated_tcp_header"),
        (eth(ipv6(tcp())[:30], 0x86DD), "truncated_ip_header"),
        (eth(b"", 0x0800)[:9], "truncated_link_header"),
    ],
    ids=[
        "ihl-4",
        "ihl-0",
        "ihl-past-end",
        "total-below-ihl",
        "ipv4-header-cut",
        "tcp-header-cut",
        "ipv6-header-cut",
        "ethernet-cut",
    ],
)
def test_undecodable_packet_is_counted_under_its_reason(
    tmp_path: Path, bad: bytes, reason: str
) -> None:
    cap, conns = _one_bad_packet(tmp_path, bad)
    assert cap["skipped"] == {reason: 1}
    assert cap["tcp_packets"] == cap["packets"] - 1
    _assert_connection_unharmed(conns, [])


def test_ip_length_past_the_end_of_the_packet_counts_only_what_is_there(tmp_path: Path) -> None:
    # The header claims 1500 bytes, the frame holds 10 bytes of payload: the
    # connection is credited with 10, as Wireshark's tcp.len says.
    conv = Conversation()
    conv.handshake()
    frame = eth(
        ipv4(tcp(seq=conv.nxt["c"], ack=conv.nxt["s"], flags=0x18, payload=b"y" * 10), total=1500)
    )
    conv.packets.append(frame)
    conv.nxt["c"] += 10
    conv.graceful_close()
    cap, conns = analysed(write(tmp_path, "long.pcap", pcap(conv.packets)))
    assert cap["skipped"] == {}
    assert conns[0]["payload_bytes"] == {"client": 110, "server": 0}
    assert conns[0]["close_type"] == "graceful"


def test_ipv6_payload_length_past_the_end_counts_only_what_is_there(tmp_path: Path) -> None:
    seg = tcp(flags=0x18, payload=b"z" * 10)
    cap, conns = analysed(write(tmp_path, "long6.pcap", pcap([eth(ipv6(seg, plen=1400), 0x86DD)])))
    assert cap["skipped"] == {}
    assert conns[0]["payload_bytes"] == {"client": 10, "server": 0}


@pytest.mark.parametrize(
    ("offset", "anomaly"),
    [(4, "bad_tcp_header"), (0, "bad_tcp_header"), (15, "bad_tcp_header")],
    ids=["offset-4", "offset-0", "offset-past-end"],
)
def test_tcp_data_offset_that_lies_is_an_anomaly_not_a_state_change(
    tmp_path: Path, offset: int, anomaly: str
) -> None:
    # A FIN+RST with a bogus header belongs to the stream (Wireshark files it
    # there) but must not close or reset the connection.
    bad = eth(ipv4(tcp(seq=1100, ack=5001, flags=0x15, offset=offset)))
    cap, conns = _one_bad_packet(tmp_path, bad)
    assert cap["skipped"] == {}
    _assert_connection_unharmed(conns, [anomaly])
    assert conns[0]["packets"] == 10


def test_ipv6_extension_headers_that_never_end(tmp_path: Path) -> None:
    chain = b"".join(bytes([60, 0]) + bytes(6) for _ in range(100))
    cap, conns = _one_bad_packet(tmp_path, eth(ipv6(chain + tcp(), nh=60), 0x86DD))
    assert cap["skipped"] == {"ipv6_extension_chain": 1}
    _assert_connection_unharmed(conns, [])


def test_ipv6_extension_header_longer_than_the_packet(tmp_path: Path) -> None:
    cap, conns = _one_bad_packet(tmp_path, eth(ipv6(bytes([6, 255]) + bytes(6), nh=0), 0x86DD))
    assert cap["skipped"] == {"truncated_ip_header": 1}
    _assert_connection_unharmed(conns, [])


def test_overlapping_fragments_are_reassembled_once(tmp_path: Path) -> None:
    seg = tcp(seq=1, flags=0x18, payload=b"A" * 64)
    first = eth(ipv4(seg[:48], frag=0x2000, ident=7))
    # The second fragment repeats bytes 16..47 of the first.
    second = eth(ipv4(seg[16:], frag=16 // 8, ident=7))
    cap, conns = analysed(write(tmp_path, "overlap.pcap", pcap([first, second])))
    assert cap["skipped"] == {"ip_fragment": 1}
    assert cap["tcp_packets"] == 1
    assert conns[0]["payload_bytes"] == {"client": 64, "server": 0}


def test_endless_fragments_are_counted_and_dropped(tmp_path: Path) -> None:
    # 1,000 fragments of one datagram, each saying "more follow".
    frags = [eth(ipv4(b"B" * 8, frag=0x2000 | i, ident=9)) for i in range(1000)]
    packets = graceful_packets() + frags
    cap, conns = analysed(write(tmp_path, "endless.pcap", pcap(packets)))
    assert sum(cap["skipped"].values()) == 1000
    assert set(cap["skipped"]) == {"bad_fragment", "unreassembled_fragment"}
    _assert_connection_unharmed(conns, [])


def test_fragments_past_64k_are_bad_fragments(tmp_path: Path) -> None:
    cap, conns = _one_bad_packet(tmp_path, eth(ipv4(b"C" * 16, frag=0x2000 | 0x1FFF, ident=3)))
    assert cap["skipped"] == {"bad_fragment": 1}
    _assert_connection_unharmed(conns, [])


def test_datagrams_that_never_complete_are_bounded() -> None:
    skipped: Counter[str] = Counter()
    frags = Reassembler(skipped)
    n = MAX_PENDING * 3
    for i in range(n):
        key = b"4" + i.to_bytes(8, "big")
        assert frags.add(key, 0, b"x" * 8, True) is None
        skipped["ip_fragment"] += 1  # what the decoder counts for a held fragment
        assert len(frags._pending) <= MAX_PENDING
    frags.finish()
    assert skipped == Counter({"unreassembled_fragment": n})


def test_overlapping_fragments_cannot_pile_up_memory() -> None:
    # 512 datagrams of 64 overlapping 8,000-byte fragments each (offsets 8
    # bytes apart): 256 MB if every fragment were kept until the end.
    skipped: Counter[str] = Counter()
    frags = Reassembler(skipped)
    tracemalloc.start()
    try:
        for d in range(512):
            key = b"4" + d.to_bytes(8, "big")
            for k in range(64):
                # A new bytes object each time, as the decoder slices each packet.
                result = frags.add(key, k * 8, bytes([k]) * 8000, True)
                skipped[str(result) if isinstance(result, SkipReason) else "ip_fragment"] += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    frags.finish()
    assert peak < 48 * 1024 * 1024, peak
    assert sum(skipped.values()) == 512 * 64
    assert skipped["bad_fragment"] > 0


# -- hostile traffic: RST and FIN outside the window ------------------------------------------


def _window_case(tmp_path: Path, who: str, flags: str, seq_offset: int) -> dict[str, Any]:
    conv = Conversation()
    conv.handshake()
    frame = conv.send(who, flags, seq=(conv.nxt[who] + seq_offset) & 0xFFFFFFFF)
    conv.graceful_close()
    _, conns = analysed(write(tmp_path, "window.pcap", pcap(conv.packets)))
    (conn,) = conns
    conn["_frame"] = frame
    return conn


@pytest.mark.parametrize("who", ["c", "s"])
def test_rst_outside_the_window_is_noted_not_trusted(tmp_path: Path, who: str) -> None:
    # Windows are 65535 bytes (scale 0): a million bytes ahead is outside.
    conn = _window_case(tmp_path, who, "R", 1_000_000)
    assert conn["anomalies"] == ["rst_out_of_window"]
    assert conn["close_type"] == "graceful"
    assert conn["rst_frame"] is None
    assert conn["reset_by"] is None


def test_rst_inside_the_window_is_trusted(tmp_path: Path) -> None:
    # The control for the test above: the same RST in the window resets.
    conn = _window_case(tmp_path, "s", "R", 1000)
    assert conn["close_type"] == "reset"
    assert conn["rst_frame"] == conn["_frame"]
    assert "rst_out_of_window" not in conn["anomalies"]


@pytest.mark.parametrize("who", ["c", "s"])
def test_fin_outside_the_window_is_noted_not_trusted(tmp_path: Path, who: str) -> None:
    conn = _window_case(tmp_path, who, "FA", 1_000_000)
    assert conn["anomalies"] == ["fin_out_of_window"]
    assert conn["close_type"] == "graceful"
    # The FINs on record are those of the real close (frames 7 and 9), not the forged one.
    assert conn["fin_frames"] == {"client": 7, "server": 9}
    assert conn["_frame"] == 6


def test_fin_inside_the_window_is_trusted(tmp_path: Path) -> None:
    conn = _window_case(tmp_path, "s", "FA", 0)
    assert conn["fin_frames"]["server"] == conn["_frame"]
    assert "fin_out_of_window" not in conn["anomalies"]


# -- Ctrl-C --------------------------------------------------------------------------------------


def _slow_capture(tmp_path: Path) -> Path:
    """A capture of 100,000 distinct connections (every SYN takes the slow path)."""
    rec = struct.Struct("<IIII")
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    template = eth(ipv4(tcp(flags=0x02, options=WSCALE0)))
    for i in range(100_000):
        pkt = bytearray(template)
        struct.pack_into(">I", pkt, 26, 0x0A000000 | (i >> 8))  # source address
        struct.pack_into(">H", pkt, 34, 1024 + (i & 0xFF))  # source port
        out.append(rec.pack(T0 + i // 1000, (i % 1000) * 1000, len(pkt), len(pkt)) + pkt)
    return write(tmp_path, "syns.pcap", b"".join(out))


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd) == str(path) for fd in os.listdir(fd_dir))
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the run start")
def test_ctrl_c_ends_with_130_and_no_traceback(tmp_path: Path) -> None:
    cap = _slow_capture(tmp_path)
    # The same file forty times over (about 25 s): a run still busy when the
    # signal comes, however loaded the machine.
    args = ["analyze", "-q", "--format", "jsonl", *[str(cap)] * 40]
    # A shell's background job (pytest ... &) ignores Ctrl-C, and a child
    # inherits that; a handled signal is reset to the default at exec.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fintrace", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        deadline = time.monotonic() + 30
        while not _has_open(proc.pid, cap) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # inside the analysis loop, not the file opening
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert stderr == "fintrace: interrupted\n"


def test_ctrl_c_swallowed_by_a_finalizer_still_ends_with_130(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """Python drops an exception raised in a finalizer; a Ctrl-C there still ends the run."""
    from fintrace.cli import _errors

    swallowed: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: swallowed.append(u.exc_type))
    # As in a terminal, whatever ran pytest.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, before))

    def closes_on_free() -> Iterator[int]:
        try:
            yield 1
        finally:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the generator is freed

    with pytest.raises(SystemExit) as exc, _errors(debug=False):
        gen = closes_on_free()
        next(gen)
        del gen
    assert swallowed == [KeyboardInterrupt]
    assert exc.value.code == 130
    assert capsys.readouterr().err == "fintrace: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_ignored_by_the_parent_stays_ignored(request: pytest.FixtureRequest) -> None:
    from fintrace.cli import _errors

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, before))
    with _errors(debug=False):
        signal.raise_signal(signal.SIGINT)  # ignored: no exit
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


# -- warnings reach the user whatever the format ---------------------------------------------------


def _cut_demo(tmp_path: Path) -> tuple[Path, str]:
    """The demo capture without its last 5 bytes, and the warning on stderr it must give."""
    p = write(tmp_path, "cut.pcap", DEMO.read_bytes()[:-5])
    last = records(DEMO.read_bytes())[-1]
    left = 16 + len(last) - 5
    return p, (
        f"fintrace: warning: {p}: the file ends inside a record ({left} bytes left over); "
        "analysed up to the cut"
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "table"])
def test_warning_about_a_cut_file_reaches_stderr_in_every_format(tmp_path: Path, fmt: str) -> None:
    # With jsonl and csv the warnings were once printed nowhere. cli() passes
    # -q: quiet is about the progress bar, the warnings still show.
    p, warning = _cut_demo(tmp_path)
    result = cli("--format", fmt, str(p))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [warning]
    # Standard output stays the format's, nothing else.
    out = result.stdout
    if fmt == "jsonl":
        assert len([json.loads(line) for line in out.splitlines()]) == 6
    elif fmt == "csv":
        assert len(list(csv.reader(io.StringIO(out)))) == 1 + 6
    elif fmt == "json":
        assert json.loads(out)["captures"][0]["warnings"] == [warning.split(f"{p}: ", 1)[1]]
    else:
        # The table's capture overview says it in the same words.
        assert warning.removeprefix("fintrace: ") in out
    assert "fintrace: warning" not in out


def test_warnings_of_every_capture_reach_stderr_with_an_output_file(tmp_path: Path) -> None:
    p, warning = _cut_demo(tmp_path)
    other = write(tmp_path, "lt.pcap", pcap(graceful_packets(), linktype=4242))
    out = tmp_path / "out.csv"
    result = cli("--format", "csv", "--separate", str(p), str(other), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        warning,
        f"fintrace: warning: {other}: link type(s) 4242 are not decoded",
    ]
    assert "fintrace: warning" not in out.read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["check", "-q", "--max-stuck", "1"],
        ["report", "-q", "-o", "{tmp}/r.html"],
        ["extract", "-q", "-o", "{tmp}/x.pcap"],
        ["annotate", "-q", "-o", "{tmp}/x.pcapng"],
        ["show", "-q"],
    ],
    ids=["check", "report", "extract", "annotate", "show"],
)
def test_warning_about_a_cut_file_reaches_stderr_in_every_command(
    tmp_path: Path, args: list[str]
) -> None:
    p, warning = _cut_demo(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    more = ["0"] if args[0] == "show" else []
    result = CliRunner().invoke(main, [*args, str(p), *more])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines().count(warning) == 1, result.stderr
    assert "fintrace: warning" not in result.stdout
