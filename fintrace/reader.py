"""Read capture files: classic pcap and pcapng, plain or gzip-compressed.

The reader knows containers, not protocols. :meth:`CaptureFile.pump` hands
each packet record of the next chunk of the file to a :class:`RecordSink`
(the decoder, in ``analyze``) as ``(ts, buf, offset, caplen, origlen,
linktype)``, where ``buf[offset:offset + caplen]`` is the packet: the packet
bytes are never copied, the file is read in large chunks and each record
points into its chunk, and no object is made per record.
:meth:`CaptureFile.records` yields the same as one plain tuple per record.
Every packet record is a frame, numbered as Wireshark numbers
``frame.number``; other pcapng blocks are not.

Problems with a file as a whole raise :class:`~fintrace.errors.CaptureError`
before the first record. Damage found later (a file cut off mid-record, a
block whose length field lies) ends the records with a warning in
:attr:`CaptureFile.warnings`: what came before the damage is still analysed.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from typing import TYPE_CHECKING, BinaryIO, Final

from librt.strings import read_i32_be, read_i32_le
from mypy_extensions import i64

from fintrace import COMPILED
from fintrace.errors import CaptureError

if TYPE_CHECKING:
    import io
    from collections.abc import Iterator

#: ``(ts, buf, offset, caplen, origlen, linktype)``
Record = tuple[float, bytes, int, int, int, int]

CHUNK = 1 << 22
#: Wireshark refuses records larger than this (WTAP_MAX_PACKET_SIZE_STANDARD);
#: a larger length field means the file is damaged, not a huge packet.
MAX_RECORD: Final = 262_144
#: A pcapng block may carry options and padding around a maximal packet.
MAX_BLOCK: Final = 16 * 1024 * 1024

PCAPNG_SHB: Final = 0x0A0D0D0A
PCAPNG_IDB: Final = 1
PCAPNG_PB: Final = 2
PCAPNG_SPB: Final = 3
PCAPNG_EPB: Final = 6
#: Blocks Wireshark 4.0 numbers as frames although they hold no packet: a
#: systemd journal export and custom blocks (copiable or not).
PCAPNG_RECORD_BLOCKS: Final = frozenset({9, 0x00000BAD, 0x40000BAD})
BYTE_ORDER_MAGIC = 0x1A2B3C4D
#: A pcapng record numbered as a frame that holds no packet (linktype of its record).
LT_NO_PACKET: Final = -1
_PCAP_RECORD_LE = struct.Struct("<IIII").unpack_from
_PCAPNG_HDR_LE = struct.Struct("<II").unpack_from
#: Read header fields with u32_le/u32_be (compiled: one machine load each, no
#: object made), not with struct (as Python: one call into C instead of one
#: Python call per field).
FIELD_LOADS: Final = COMPILED
_PCAPNG_EPB_LE = struct.Struct("<IIIII").unpack_from

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


def u32_le(buf: bytes, i: i64) -> i64:
    """The little-endian 32-bit number at ``buf[i:i + 4]`` (compiled: one load, no object)."""
    return i64(read_i32_le(buf, i)) & 0xFFFFFFFF


def u32_be(buf: bytes, i: i64) -> i64:
    """The big-endian 32-bit number at ``buf[i:i + 4]`` (compiled: one load, no object)."""
    return i64(read_i32_be(buf, i)) & 0xFFFFFFFF


def _open(path: str) -> io.BufferedReader:
    """Open a capture for reading, or say in a few words why it cannot be."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CaptureError(path, "no such file") from None
    except NotADirectoryError:
        raise CaptureError(path, "no such file (a parent is not a directory)") from None
    except PermissionError:
        raise CaptureError(path, "permission denied") from None
    except OSError as exc:
        raise CaptureError(path, exc.strerror or "cannot be opened") from None
    if stat.S_ISDIR(st.st_mode):
        raise CaptureError(path, "is a directory, not a capture file")
    try:
        # Closed in CaptureFile.close().
        return open(path, "rb")
    except PermissionError:
        raise CaptureError(path, "permission denied") from None
    except OSError as exc:
        raise CaptureError(path, exc.strerror or "cannot be opened") from None


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
        raw = _open(self.path)
        self._raw = raw
        self.size = os.fstat(raw.fileno()).st_size
        self.compression: str | None = None
        self.warnings: list[str] = []
        self.truncated = False
        self.linktypes: list[int] = []
        self._stream: BinaryIO = raw
        self._read_problem: str | None = None
        # Where pump() goes on: the chunk in hand and the next record in it.
        self._buf = b""
        self._off = 0
        self._consumed_before = 0
        self._ended = False
        self._pcap = False
        # pcap: its record header; pcapng: block and packet headers, the
        # section's interfaces, the last time.
        self._rec = _PCAP_RECORD_LE
        self._hdr = _PCAPNG_HDR_LE
        self._epb = _PCAPNG_EPB_LE
        self._ifaces: list[Interface] = []
        self._last_ts = 0.0
        try:
            # peek, not read and seek back: a pipe (``<(zcat x.pcap)``) cannot seek.
            head = raw.peek(4)[:4]
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
        except OSError as exc:
            raw.close()
            raise CaptureError(self.path, f"read error ({exc.strerror or exc})") from None
        except CaptureError:
            raw.close()
            raise
        problem = self._problem()
        if problem is not None and len(self._head) < 4:
            # The damage is in the gzip layer or the disk; "empty file" would hide that.
            self.close()
            raise CaptureError(self.path, problem)
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
        """Read up to ``n`` bytes; a read error or damage in a compressed stream ends it."""
        if self.compression is None:
            try:
                return self._stream.read(n)
            except OSError as exc:
                # A failing disk or a vanished network share: keep what was read.
                self._read_problem = f"read error ({exc.strerror or exc})"
                self._damaged(self._read_problem)
                return b""
        # Small steps: GzipFile.read(n) drops everything it decompressed in
        # the call when the stream turns out to be cut off or corrupt.
        parts: list[bytes] = []
        got = 0
        read1 = self._stream.read1  # type: ignore[attr-defined]
        while got < n and self._read_problem is None:
            try:
                part: bytes = read1(n - got)
            except EOFError:
                self._read_problem = "the gzip stream is cut off"
                self._warn_truncated(self._read_problem)
                break
            except (gzip.BadGzipFile, zlib.error, OSError) as exc:
                self._read_problem = f"corrupt gzip data ({exc})"
                self.warnings.append(f"{self._read_problem}; analysed up to the damage")
                self.truncated = True
                break
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _problem(self) -> str | None:
        """What ended the reading early, if anything (a method: mypy narrows attributes)."""
        return self._read_problem

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
        self._pcap = True
        self._rec = struct.Struct(endian + "IIII").unpack_from
        self._buf = self._head
        self._off = 24

    def _pump_pcap(self, sink: RecordSink) -> bool:
        little = self._endian == "<"
        scale = self._scale
        linktype = self.linktypes[0]
        buf = self._buf
        # Declared: compiled code keeps them as machine integers.
        off: i64 = self._off
        end: i64 = len(buf)
        rec = self._rec
        sec: i64
        frac: i64
        caplen: i64
        origlen: i64
        while off + 16 <= end:
            if FIELD_LOADS:
                # Compiled, these make no object (struct makes five).
                if little:
                    sec = u32_le(buf, off)
                    frac = u32_le(buf, off + 4)
                    caplen = u32_le(buf, off + 8)
                    origlen = u32_le(buf, off + 12)
                else:
                    sec = u32_be(buf, off)
                    frac = u32_be(buf, off + 4)
                    caplen = u32_be(buf, off + 8)
                    origlen = u32_be(buf, off + 12)
            else:
                # As Python, one call does it in C.
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
                return False
            if nxt > end:
                break
            sink.record(float(sec) + float(frac) * scale, buf, start, caplen, origlen, linktype)
            off = nxt
        return self._refill(buf, off, "record")

    def _refill(self, buf: bytes, off: int, unit: str) -> bool:
        """Keep what is left of ``buf`` from ``off`` and read the next chunk after it."""
        more = self._read(CHUNK)
        if not more:
            if off < len(buf):
                self._warn_truncated(
                    f"the file ends inside a {unit} ({len(buf) - off} bytes left over)"
                )
            return False
        self._buf = buf[off:] + more
        self._consumed_before += off
        self._off = 0
        return True

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
        self._hdr = struct.Struct(endian + "II").unpack_from
        self._epb = struct.Struct(endian + "IIIII").unpack_from
        self._buf = self._head
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

    def _pump_pcapng(self, sink: RecordSink) -> bool:
        buf = self._buf
        off = self._off
        endian = self._endian
        hdr = self._hdr
        epb = self._epb
        ifaces = self._ifaces
        last_ts = self._last_ts
        end = len(buf)
        little = endian == "<"
        # Declared: compiled code keeps them as machine integers.
        btype: i64
        blen: i64 = 0
        iface: i64
        tsh: i64
        tsl: i64
        caplen: i64
        origlen: i64
        while off + 12 <= end:
            if not FIELD_LOADS:
                btype, blen = hdr(buf, off)
            elif little:
                btype = u32_le(buf, off)
                blen = u32_le(buf, off + 4)
            else:
                btype = u32_be(buf, off)
                blen = u32_be(buf, off + 4)
            if btype == PCAPNG_SHB:
                # A new section may switch byte order, its own length included.
                if off + 16 > end:
                    break
                problem = self._section_problem(buf, off)
                if problem:
                    self._damaged(problem)
                    return False
                endian = "<" if buf[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                hdr = self._hdr = struct.Struct(endian + "II").unpack_from
                epb = self._epb = struct.Struct(endian + "IIIII").unpack_from
                self._endian = endian
                little = endian == "<"
                ifaces = self._ifaces = []
                btype, blen = hdr(buf, off)
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                self._damaged(
                    f"a pcapng block at byte {self._abs(off, end)} "
                    f"has an impossible length ({blen})"
                )
                return False
            nxt = off + blen
            if nxt > end:
                break
            if btype == PCAPNG_EPB:
                if blen < 32:  # shorter than its fixed fields and trailing length
                    self._damaged(self._too_short("enhanced packet", off, end, blen))
                    return False
                if not FIELD_LOADS:
                    iface, tsh, tsl, caplen, origlen = epb(buf, off + 8)
                elif little:
                    iface = u32_le(buf, off + 8)
                    tsh = u32_le(buf, off + 12)
                    tsl = u32_le(buf, off + 16)
                    caplen = u32_le(buf, off + 20)
                    origlen = u32_le(buf, off + 24)
                else:
                    iface = u32_be(buf, off + 8)
                    tsh = u32_be(buf, off + 12)
                    tsl = u32_be(buf, off + 16)
                    caplen = u32_be(buf, off + 20)
                    origlen = u32_be(buf, off + 24)
                # 28 bytes of header and the 4-byte trailing length.
                if 32 + caplen > blen:
                    self._damaged(
                        f"a pcapng packet block at byte {self._abs(off, end)} "
                        f"claims {caplen} bytes, more than the block holds"
                    )
                    return False
                if iface >= len(ifaces):
                    self._damaged(
                        f"a packet block names interface {iface}, which was never described"
                    )
                    return False
                ifc = ifaces[iface]
                last_ts = ifc.time((int(tsh) << 32) | tsl)
                self._last_ts = last_ts
                sink.record(last_ts, buf, off + 28, caplen, origlen, ifc.linktype)
            elif btype == PCAPNG_IDB:
                if blen < 20:
                    self._damaged(self._too_short("interface", off, end, blen))
                    return False
                ifaces.append(Interface.read(buf, off, blen, endian))
                if ifaces[-1].linktype not in self.linktypes:
                    self.linktypes.append(ifaces[-1].linktype)
            elif btype == PCAPNG_SPB:
                if not ifaces:
                    self._damaged("a simple packet block comes before any interface")
                    return False
                if blen < 16:
                    self._damaged(self._too_short("simple packet", off, end, blen))
                    return False
                (origlen,) = struct.unpack_from(endian + "I", buf, off + 8)
                ifc = ifaces[0]
                caplen = min(origlen, blen - 16, ifc.snaplen or origlen)
                # A simple packet block has no timestamp; keep time moving.
                sink.record(last_ts, buf, off + 12, caplen, origlen, ifc.linktype)
            elif btype == PCAPNG_PB:
                if blen < 32:
                    self._damaged(self._too_short("packet", off, end, blen))
                    return False
                iface, _drops, tsh, tsl, caplen, origlen = struct.unpack_from(
                    endian + "HHIIII", buf, off + 8
                )
                if iface >= len(ifaces) or 32 + caplen > blen:
                    self._damaged(f"a packet block at byte {self._abs(off, end)} is corrupt")
                    return False
                ifc = ifaces[iface]
                last_ts = ifc.time((int(tsh) << 32) | tsl)
                self._last_ts = last_ts
                sink.record(last_ts, buf, off + 28, caplen, origlen, ifc.linktype)
            elif btype in PCAPNG_RECORD_BLOCKS:
                # Takes a frame number in Wireshark; the decoder counts it.
                sink.record(last_ts, buf, off, 0, 0, LT_NO_PACKET)
            off = nxt
        return self._refill(buf, off, "block")

    def _too_short(self, kind: str, off: int, end: int, blen: int) -> str:
        return f"a pcapng {kind} block at byte {self._abs(off, end)} is too short ({blen} bytes)"

    def _damaged(self, what: str) -> None:
        self.truncated = True
        self.warnings.append(f"{what}; the file is damaged from there and was analysed up to it")

    # -- public ---------------------------------------------------------------

    def pump(self, sink: RecordSink) -> bool:
        """Give ``sink`` every packet record of the next chunk of the file, in order.

        False once the file has no more (it ended, or is damaged from there on:
        see :attr:`warnings`). One call reads at most :data:`CHUNK` bytes, so
        a caller can report progress and hand on results between calls.
        """
        if self._ended:
            return False
        more = self._pump_pcap(sink) if self._pcap else self._pump_pcapng(sink)
        if not more:
            self._ended = True
            self._buf = b""
        return more

    def records(self) -> Iterator[Record]:
        """Every packet record of the file, in file order, as tuples."""
        out = RecordList()
        items = out.items
        more = True
        while more:
            more = self.pump(out)
            yield from items
            items.clear()


class Interface:
    """A pcapng interface: its link type, snap length and how its packets count time."""

    def __init__(self, linktype: int, snaplen: int, unit: float, per_s: int, offset: float) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        #: Seconds per tick, ticks per second, and seconds added to each time.
        self.unit = unit
        self.per_s = per_s
        self.offset = offset

    def time(self, ticks: int) -> float:
        """Whole seconds, then the fraction: the float a pcap of the same packet
        gives (``ticks * unit`` rounds differently in the last bits)."""
        return ticks // self.per_s + (ticks % self.per_s) * self.unit + self.offset

    @staticmethod
    def read(buf: bytes, off: int, blen: int, endian: str) -> Interface:
        """The interface description block at ``buf[off:off + blen]``."""
        linktype, _res, snaplen = struct.unpack_from(endian + "HHI", buf, off + 8)
        unit = 1e-6
        per_s = 1_000_000
        offset = 0.0
        o = off + 16
        stop = off + blen - 4
        while o + 4 <= stop:
            code, olen = struct.unpack_from(endian + "HH", buf, o)
            if code == 0:
                break
            # An option may not reach past its block, whatever its length says.
            val = buf[o + 4 : min(o + 4 + olen, stop)]
            if code == 9 and val:
                r = val[0]
                unit = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0**-r
                per_s = 1 << (r & 0x7F) if r & 0x80 else 10**r
            elif code == 14 and len(val) >= 8:
                (secs,) = struct.unpack(endian + "q", val[:8])
                offset = float(secs)
            o += 4 + ((olen + 3) & ~3)
        return Interface(linktype, snaplen, unit, per_s, offset)


class RecordSink:
    """Where :meth:`CaptureFile.pump` puts each packet record; this one drops them.

    ``buf[off:off + caplen]`` is the packet: ``buf`` is the chunk of the file
    being read, never copied per packet.
    """

    def record(
        self, ts: float, buf: bytes, off: i64, caplen: i64, origlen: i64, linktype: i64
    ) -> None:
        pass


class RecordList(RecordSink):
    """Keeps the records it is given as :data:`Record` tuples."""

    def __init__(self) -> None:
        self.items: list[Record] = []

    def record(
        self, ts: float, buf: bytes, off: i64, caplen: i64, origlen: i64, linktype: i64
    ) -> None:
        self.items.append((ts, buf, off, caplen, origlen, linktype))


def first_timestamp(path: str) -> float | None:
    """The timestamp of a file's first packet, or None if it has none."""
    with CaptureFile(path) as cap:
        for rec in cap.records():
            return rec[0]
    return None
