"""Read capture files: classic pcap and pcapng, plain or gzip-compressed.

The reader knows containers, not protocols. :meth:`CaptureFile.records`
yields one plain tuple per packet record, ``(ts, buf, offset, caplen,
origlen, linktype)``, where ``buf[offset:offset + caplen]`` is the packet: the
packet bytes are never copied, the file is read in large chunks and each
record points into its chunk. Every packet record is a frame, numbered as
Wireshark numbers ``frame.number``; other pcapng blocks are not.

Problems with a file as a whole raise :class:`~fintrace.errors.CaptureError`
before the first record. Damage found later (a file cut off mid-record, a
block whose length field lies) ends the records with a warning in
:attr:`CaptureFile.warnings`: what came before the damage is still analysed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fintrace.errors import CaptureError

if TYPE_CHECKING:
    from collections.abc import Iterator

#: ``(ts, buf, offset, caplen, origlen, linktype)``
Record = tuple[float, bytes, int, int, int, int]

CHUNK = 1 << 22
#: Wireshark refuses records larger than this (WTAP_MAX_PACKET_SIZE_STANDARD);
#: a larger length field means the file is damaged, not a huge packet.
MAX_RECORD = 262_144
#: A pcapng block may carry options and padding around a maximal packet.
MAX_BLOCK = 16 * 1024 * 1024

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 1
PCAPNG_PB = 2
PCAPNG_SPB = 3
PCAPNG_EPB = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAP_VARIANTS = {
    b"\x34\xcd\xb2\xa1": "Kuznetzov's modified pcap",
    b"\xa1\xb2\xcd\x34": "Kuznetzov's modified pcap",
}
_COMPRESSED = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
    b"\xfd\x37\x7a\x58": "xz",
    b"\x42\x5a\x68": "bzip2",
}


def _describe(head: bytes) -> str:
    if not head:
        return "empty file"
    shown = " ".join(f"{b:02x}" for b in head[:4])
    return f"not a pcap or pcapng capture (starts with {shown})"


class CaptureFile:
    """One capture file, opened and identified; iterate :meth:`records`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.name = self.path
        p = Path(self.path)
        if not p.exists():
            raise CaptureError(self.path, "no such file")
        if p.is_dir():
            raise CaptureError(self.path, "is a directory, not a capture file")
        try:
            raw: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except PermissionError:
            raise CaptureError(self.path, "permission denied") from None
        except OSError as exc:
            raise CaptureError(self.path, exc.strerror or "cannot be opened") from None
        self._raw = raw
        self.size = os.fstat(raw.fileno()).st_size
        self.compression: str | None = None
        self.warnings: list[str] = []
        self.truncated = False
        self.linktypes: list[int] = []
        self._stream: BinaryIO = raw
        try:
            head = raw.read(4)
            raw.seek(0)
            if head[:2] == b"\x1f\x8b":
                self.compression = "gzip"
                self._stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
            else:
                for magic, kind in _COMPRESSED.items():
                    if head.startswith(magic):
                        raise CaptureError(
                            self.path,
                            f"{kind}-compressed; decompress it first (fintrace reads gzip itself)",
                        )
            self._head = self._read(CHUNK)
        except CaptureError:
            raw.close()
            raise
        magic = self._head[:4]
        if magic in _PCAP_MAGIC:
            self.format = "pcap"
            self._open_pcap()
        elif magic == b"\x0a\x0d\x0d\x0a":
            self.format = "pcapng"
            self._open_pcapng()
        elif magic in _PCAP_VARIANTS:
            self.close()
            raise CaptureError(self.path, f"{_PCAP_VARIANTS[magic]} is not supported")
        else:
            self.close()
            raise CaptureError(self.path, _describe(self._head))

    # -- plumbing -------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        """Read up to ``n`` bytes; damage in a compressed stream ends it."""
        if self.compression is None:
            return self._stream.read(n)
        try:
            return self._stream.read(n)
        except EOFError:
            self._warn_truncated("the gzip stream is cut off")
            return b""
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            if self._raw.tell() <= 10:
                raise CaptureError(self.path, f"corrupt gzip data ({exc})") from None
            self.warnings.append(f"corrupt gzip data, analysed up to the damage ({exc})")
            self.truncated = True
            return b""

    def _warn_truncated(self, what: str) -> None:
        if not self.truncated:
            self.truncated = True
            self.warnings.append(f"{what}; analysed up to the cut")

    def position(self) -> int:
        """Bytes of the file on disk consumed so far (for progress)."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return self.size

    def close(self) -> None:
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.close()

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- classic pcap ---------------------------------------------------------

    def _open_pcap(self) -> None:
        endian, self._scale = _PCAP_MAGIC[self._head[:4]]
        self._endian = endian
        if len(self._head) < 24:
            self.close()
            raise CaptureError(self.path, "pcap file header is cut off")
        vmaj, _vmin, _zone, _sig, snaplen, network = struct.unpack_from(
            endian + "HHiIII", self._head, 4
        )
        if vmaj != 2:
            self.close()
            raise CaptureError(self.path, f"pcap version {vmaj} is not supported")
        # The top bits of the link type field carry FCS information.
        self.linktypes = [network & 0x03FFFFFF]
        self.snaplen = snaplen

    def _pcap_records(self) -> Iterator[Record]:
        rec = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        linktype = self.linktypes[0]
        buf = self._head
        off = 24
        while True:
            end = len(buf)
            while off + 16 <= end:
                sec, frac, caplen, origlen = rec(buf, off)
                start = off + 16
                nxt = start + caplen
                if caplen > MAX_RECORD:
                    self.warnings.append(
                        f"a record at byte {self._abs(off, end)} claims {caplen} bytes "
                        f"(more than {MAX_RECORD}); the file is damaged from there "
                        "and was analysed up to that record"
                    )
                    self.truncated = True
                    return
                if nxt > end:
                    break
                yield sec + frac * scale, buf, start, caplen, origlen, linktype
                off = nxt
            more = self._read(CHUNK)
            if not more:
                if off < end:
                    self._warn_truncated(
                        f"the file ends inside a record ({end - off} bytes left over)"
                    )
                return
            buf = buf[off:] + more
            self._consumed_before += off
            off = 0

    _consumed_before = 0

    def _abs(self, off: int, end: int) -> int:
        return self._consumed_before + off

    # -- pcapng ---------------------------------------------------------------

    def _open_pcapng(self) -> None:
        if len(self._head) < 28:
            self.close()
            raise CaptureError(self.path, "pcapng section header is cut off")
        problem = self._section_problem(self._head, 0)
        if problem:
            self.close()
            raise CaptureError(self.path, problem)
        endian = "<" if self._head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        self.snaplen = 0
        self._endian = endian
        # Interface link types are learnt while reading; scan the head for
        # the first section's interfaces so the caller can report them early.
        self.linktypes = []

    @staticmethod
    def _section_problem(buf: bytes, off: int) -> str | None:
        bom = buf[off + 8 : off + 12]
        if bom == b"\x4d\x3c\x2b\x1a":
            endian = "<"
        elif bom == b"\x1a\x2b\x3c\x4d":
            endian = ">"
        else:
            return "corrupt pcapng section header (bad byte-order magic)"
        blen, _bom, vmaj, _vmin = struct.unpack_from(endian + "IIHH", buf, off + 4)
        if blen < 28 or blen % 4 or blen > MAX_BLOCK:
            return f"corrupt pcapng section header (block length {blen})"
        if vmaj != 1:
            return f"pcapng version {vmaj} is not supported"
        return None

    def _pcapng_records(self) -> Iterator[Record]:
        buf = self._head
        off = 0
        endian = self._endian
        hdr = struct.Struct(endian + "II").unpack_from
        epb = struct.Struct(endian + "IIIII").unpack_from
        # per interface: (linktype, seconds per tick, offset seconds, snaplen)
        ifaces: list[tuple[int, float, float, int]] = []
        last_ts = 0.0
        while True:
            end = len(buf)
            while off + 12 <= end:
                btype, blen = hdr(buf, off)
                if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                    self._damaged(
                        f"a pcapng block at byte {self._abs(off, end)} "
                        f"has an impossible length ({blen})"
                    )
                    return
                nxt = off + blen
                if nxt > end:
                    break
                if btype == PCAPNG_EPB:
                    iface, tsh, tsl, caplen, origlen = epb(buf, off + 8)
                    if 28 + caplen > blen:
                        self._damaged(
                            f"a pcapng packet block at byte {self._abs(off, end)} "
                            f"claims {caplen} bytes, more than the block holds"
                        )
                        return
                    if iface >= len(ifaces):
                        self._damaged(
                            f"a packet block names interface {iface}, which was never described"
                        )
                        return
                    lt, unit, tsoff, _snap = ifaces[iface]
                    last_ts = ((tsh << 32) | tsl) * unit + tsoff
                    yield last_ts, buf, off + 28, caplen, origlen, lt
                elif btype == PCAPNG_SHB:
                    problem = self._section_problem(buf, off)
                    if problem:
                        self._damaged(problem)
                        return
                    endian = "<" if buf[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                    hdr = struct.Struct(endian + "II").unpack_from
                    epb = struct.Struct(endian + "IIIII").unpack_from
                    ifaces = []
                elif btype == PCAPNG_IDB:
                    ifaces.append(self._interface(buf, off, blen, endian))
                    if ifaces[-1][0] not in self.linktypes:
                        self.linktypes.append(ifaces[-1][0])
                elif btype == PCAPNG_SPB:
                    if not ifaces:
                        self._damaged("a simple packet block comes before any interface")
                        return
                    (origlen,) = struct.unpack_from(endian + "I", buf, off + 8)
                    lt, _unit, _tsoff, snap = ifaces[0]
                    caplen = min(origlen, blen - 16, snap or origlen)
                    # A simple packet block has no timestamp; keep time moving.
                    yield last_ts, buf, off + 12, caplen, origlen, lt
                elif btype == PCAPNG_PB:
                    iface, _drops, tsh, tsl, caplen, origlen = struct.unpack_from(
                        endian + "HHIIII", buf, off + 8
                    )
                    if iface >= len(ifaces) or 28 + caplen > blen:
                        self._damaged(f"a packet block at byte {self._abs(off, end)} is corrupt")
                        return
                    lt, unit, tsoff, _snap = ifaces[iface]
                    last_ts = ((tsh << 32) | tsl) * unit + tsoff
                    yield last_ts, buf, off + 28, caplen, origlen, lt
                off = nxt
            more = self._read(CHUNK)
            if not more:
                if off < end:
                    self._warn_truncated(
                        f"the file ends inside a block ({end - off} bytes left over)"
                    )
                return
            buf = buf[off:] + more
            self._consumed_before += off
            off = 0

    def _damaged(self, what: str) -> None:
        self.truncated = True
        self.warnings.append(f"{what}; the file is damaged from there and was analysed up to it")

    @staticmethod
    def _interface(buf: bytes, off: int, blen: int, endian: str) -> tuple[int, float, float, int]:
        linktype, _res, snaplen = struct.unpack_from(endian + "HHI", buf, off + 8)
        unit = 1e-6
        tsoff = 0.0
        o = off + 16
        stop = off + blen - 4
        while o + 4 <= stop:
            code, olen = struct.unpack_from(endian + "HH", buf, o)
            if code == 0:
                break
            val = buf[o + 4 : o + 4 + olen]
            if code == 9 and olen >= 1:
                r = val[0]
                unit = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0**-r
            elif code == 14 and olen >= 8:
                (secs,) = struct.unpack(endian + "q", val[:8])
                tsoff = float(secs)
            o += 4 + ((olen + 3) & ~3)
        return linktype, unit, tsoff, snaplen

    # -- public ---------------------------------------------------------------

    def records(self) -> Iterator[Record]:
        """Every packet record of the file, in file order."""
        if self.format == "pcap":
            return self._pcap_records()
        return self._pcapng_records()


def first_timestamp(path: str) -> float | None:
    """The timestamp of a file's first packet, or None if it has none."""
    with CaptureFile(path) as cap:
        for rec in cap.records():
            return rec[0]
    return None
