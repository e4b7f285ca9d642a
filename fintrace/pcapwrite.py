"""Copy packets out of captures, byte for byte: the evidence files for Wireshark.

Two operations, both streaming (a file is never held in memory):

* :func:`extract` copies the chosen frames of one or more captures into a
  new file. One pcap in gives a pcap out with the same header (byte order,
  time resolution, link type, snap length); pcapng in gives pcapng out with
  every non-packet block (section headers, interfaces, name resolution,
  statistics) kept. Several inputs of the same pcap header are concatenated
  into one pcap; any other mix becomes one pcapng with one section per input.
* :func:`annotate` writes a pcapng copy of one capture in which chosen
  frames carry a packet comment (``opt_comment``), which Wireshark shows as
  ``frame.comment``.

Packet records are copied as they are on disk, so timestamps keep their
exact resolution (nanoseconds included) and existing comments stay. Frames
are numbered as Wireshark numbers ``frame.number``: every packet record, in
file order, from 1; in pcapng also the systemd journal and custom blocks
Wireshark 4.0 lists as frames (``extract`` leaves those out: they are no
connection's packets). A gzip-compressed input is read through gzip; the
output is never compressed. Records after damage in the file (a length
that cannot be, a record cut off) are not copied: fintrace did not analyse
them either.

This module knows the pcap and pcapng layouts because it writes them; the
reader stays the only one that decodes packets.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from fintrace import __version__
from fintrace.errors import CaptureError, FintraceError, output_file

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping, Sequence

SHB = 0x0A0D0D0A
IDB = 1
PB = 2
SPB = 3
EPB = 6
PACKET_BLOCKS = frozenset({PB, SPB, EPB})
#: Blocks Wireshark 4.0 lists as frames although they hold no packet: a
#: systemd journal export and custom blocks. They take a frame number.
RECORD_BLOCKS = frozenset({9, 0x00000BAD, 0x40000BAD})
OPT_COMMENT = 1
#: As the reader: larger records mean a damaged file, not a huge packet.
MAX_RECORD = 262_144
MAX_BLOCK = 16 * 1024 * 1024
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_NG_MAGIC = b"\x0a\x0d\x0d\x0a"


@dataclass(frozen=True, slots=True)
class Written:
    """What a write produced."""

    format: str
    packets: int
    #: Frames that should have carried a comment but could not (simple packet blocks).
    uncommented: int = 0


def _pad(n: int) -> int:
    return (n + 3) & ~3


def _open(path: str) -> IO[bytes]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError:
        raise CaptureError(path, "no such file") from None
    except OSError as exc:
        raise CaptureError(path, exc.strerror or "cannot be opened") from None
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    raw.seek(0)
    return raw


def _read(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes; a damaged gzip stream ends the input (as in the reader)."""
    try:
        return f.read(n)
    except (EOFError, OSError):
        return b""


class _Input:
    """One capture, opened and identified, read record by record."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f = _open(path)
        head = _read(self.f, 4)
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            self.endian, self.nano = _PCAP_MAGICS[head]
            self.header = head + _read(self.f, 20)
            if len(self.header) < 24:
                raise CaptureError(path, "pcap file header is cut off")
            (network,) = struct.unpack_from(self.endian + "I", self.header, 20)
            self.linktype = network & 0x03FFFFFF
            (self.snaplen,) = struct.unpack_from(self.endian + "I", self.header, 16)
        elif head == _NG_MAGIC:
            self.format = "pcapng"
            self._pending = head
        else:
            self.f.close()
            raise CaptureError(path, "not a pcap or pcapng capture")

    def close(self) -> None:
        self.f.close()

    def pcap_records(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(frame, 16-byte record header, packet bytes)."""
        unpack = struct.Struct(self.endian + "IIII").unpack
        frame = 0
        while True:
            rh = _read(self.f, 16)
            if len(rh) < 16:
                return
            caplen = unpack(rh)[2]
            if caplen > MAX_RECORD:
                return
            data = _read(self.f, caplen)
            if len(data) < caplen:
                return
            frame += 1
            yield frame, rh, data

    def pcapng_blocks(self) -> Iterator[tuple[int, int, str, bytes]]:
        """(frame number or 0 for a block that is no frame, block type, byte order, the block)."""
        endian = "<"
        frame = 0
        first = self._pending
        while True:
            head = first + _read(self.f, 8 - len(first))
            first = b""
            if len(head) < 8:
                return
            if head[:4] == _NG_MAGIC:
                bom = _read(self.f, 4)
                if len(bom) < 4:
                    return
                endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                head += bom
            btype, blen = struct.unpack(endian + "II", head[:8])
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                return
            rest = _read(self.f, blen - len(head))
            if len(rest) < blen - len(head):
                return
            block = head + rest
            if btype in PACKET_BLOCKS or btype in RECORD_BLOCKS:
                frame += 1
                yield frame, btype, endian, block
            else:
                yield 0, btype, endian, block


@contextlib.contextmanager
def _output(path: str, inputs: Sequence[str]) -> Iterator[IO[bytes]]:
    """The output file, closed at the end; a failed write (a full disk) names it."""
    for p in inputs:
        if os.path.exists(path) and os.path.exists(p) and os.path.samefile(path, p):
            raise FintraceError(f"{path}: the output would overwrite an input")
    # Inputs are read through _read, which turns their errors into the end of
    # the input: an OSError here is the output's (a write or the last flush).
    with output_file(path, "wb") as out:
        yield out


# -- pcapng blocks ------------------------------------------------------------


def _option(code: int, value: bytes, endian: str = "<") -> bytes:
    return (
        struct.pack(endian + "HH", code, len(value))
        + value
        + b"\0" * (_pad(len(value)) - len(value))
    )


def _block(btype: int, body: bytes, endian: str = "<") -> bytes:
    n = 12 + len(body)
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def section_header() -> bytes:
    opts = _option(4, f"fintrace {__version__}".encode()) + _option(0, b"")
    # Section length -1: unknown, so no reader trusts a length we did not count.
    return _block(SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts)


def interface(linktype: int, snaplen: int, *, nano: bool, fcs_bytes: int = 0) -> bytes:
    opts = b""
    if nano:
        opts += _option(9, b"\x09")
    if fcs_bytes:
        opts += _option(13, bytes([fcs_bytes]))
    if opts:
        opts += _option(0, b"")
    return _block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def packet(ts_units: int, data: bytes, origlen: int, comment: str | None = None) -> bytes:
    """An enhanced packet block on interface 0 (``ts_units`` in the interface's resolution)."""
    body = struct.pack("<IIIII", 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), origlen)
    body += data + b"\0" * (_pad(len(data)) - len(data))
    if comment:
        body += _option(OPT_COMMENT, comment.encode()) + _option(0, b"")
    return _block(EPB, body)


def _unknown_section_length(block: bytes, endian: str) -> bytes:
    """A copied section header: its length no longer holds once packets are dropped."""
    return block[:16] + struct.pack(endian + "q", -1) + block[24:]


def _with_comment(btype: int, endian: str, block: bytes, comment: str) -> bytes:
    """The packet block with one more ``opt_comment``; a PB becomes an EPB."""
    if btype == EPB:
        fields = block[8:28]
    else:  # PB: interface is 16 bits followed by a drop count, EPB has 32 bits.
        iface, _drops = struct.unpack_from(endian + "HH", block, 8)
        fields = struct.pack(endian + "I", iface) + block[12:28]
    caplen = struct.unpack_from(endian + "I", block, 20)[0]
    data_end = 28 + _pad(caplen)
    options = block[data_end:-4]
    kept = b""
    o = 0
    while o + 4 <= len(options):
        code, olen = struct.unpack_from(endian + "HH", options, o)
        if code == 0:
            break
        kept += options[o : o + 4 + _pad(olen)]
        o += 4 + _pad(olen)
    body = (
        fields
        + block[28:data_end]
        + kept
        + _option(OPT_COMMENT, comment.encode(), endian)
        + _option(0, b"", endian)
    )
    return _block(EPB, body, endian)


# -- the two operations ---------------------------------------------------------


def _pcap_as_pcapng(
    src: _Input, out: IO[bytes], keep: Collection[int] | None, comments: Mapping[int, str]
) -> int:
    """Write one pcap input as a pcapng section; return packets written."""
    (network,) = struct.unpack_from(src.endian + "I", src.header, 20)
    fcs = ((network >> 28) & 0xF) * 2 if network & 0x04000000 else 0
    out.write(section_header())
    out.write(interface(src.linktype, src.snaplen, nano=src.nano, fcs_bytes=fcs))
    unit = 1_000_000_000 if src.nano else 1_000_000
    unpack = struct.Struct(src.endian + "IIII").unpack
    n = 0
    for frame, rh, data in src.pcap_records():
        if keep is not None and frame not in keep:
            continue
        sec, frac, _caplen, origlen = unpack(rh)
        out.write(packet(sec * unit + frac, data, origlen, comments.get(frame)))
        n += 1
    return n


def extract(inputs: Sequence[tuple[str, Collection[int]]], output: str) -> Written:
    """Copy the given frames of each input (path, frames) into ``output``."""
    opened: list[_Input] = []
    try:
        for path, _frames in inputs:
            opened.append(_Input(path))
        pcap_headers = {s.header for s in opened if s.format == "pcap"}
        as_pcap = all(s.format == "pcap" for s in opened) and len(pcap_headers) == 1
        n = 0
        with _output(output, [p for p, _ in inputs]) as out:
            if as_pcap:
                out.write(opened[0].header)
            for src, (_path, frames) in zip(opened, inputs, strict=True):
                if as_pcap:
                    for frame, rh, data in src.pcap_records():
                        if frame in frames:
                            out.write(rh + data)
                            n += 1
                elif src.format == "pcap":
                    n += _pcap_as_pcapng(src, out, frames, {})
                else:
                    for frame, btype, endian, block in src.pcapng_blocks():
                        if btype == SHB:
                            out.write(_unknown_section_length(block, endian))
                        elif not frame or frame in frames:
                            out.write(block)
                            n += 1 if frame else 0
        return Written("pcap" if as_pcap else "pcapng", n)
    finally:
        for s in opened:
            s.close()


def annotate(path: str, comments: Mapping[int, str], output: str) -> Written:
    """A pcapng copy of ``path`` in which frame N carries the comment ``comments[N]``."""
    src = _Input(path)
    try:
        with _output(output, [path]) as out:
            if src.format == "pcap":
                return Written("pcapng", _pcap_as_pcapng(src, out, None, comments))
            n = uncommented = 0
            for frame, btype, endian, block in src.pcapng_blocks():
                note = comments.get(frame) if frame else None
                if note is not None and btype in (EPB, PB):
                    out.write(_with_comment(btype, endian, block, note))
                else:
                    # A simple packet block has no room for options.
                    uncommented += note is not None
                    out.write(block)
                n += 1 if frame else 0
            return Written("pcapng", n, uncommented)
    finally:
        src.close()
