"""Build the regression captures: small inputs that once broke fintrace.

Each was found by fuzzing or by hand while working on issue 5 (damaged
input); ``README.md`` beside this file says what each one broke and what
fintrace must say now, and ``expected.json`` holds that verdict for
``tests/test_fuzz.py``. Deterministic; run from anywhere:
``python captures/regressions/make_regressions.py``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

HERE = Path(__file__).parent
T0 = 1_700_000_000
CLIENT = b"\x0a\x00\x00\x01"
SERVER = b"\x0a\x00\x00\x02"


def segment(*, client_sends: bool, seq: int, ack: int, flags: int) -> bytes:
    """Ethernet + IPv4 + a 20-byte TCP header between 10.0.0.1:40000 and 10.0.0.2:80."""
    src, dst = (CLIENT, SERVER) if client_sends else (SERVER, CLIENT)
    sport, dport = (40000, 80) if client_sends else (80, 40000)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, src, dst)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


def handshake() -> list[bytes]:
    return [
        segment(client_sends=True, seq=1000, ack=0, flags=0x02),
        segment(client_sends=False, seq=5000, ack=1001, flags=0x12),
        segment(client_sends=True, seq=1001, ack=5001, flags=0x10),
    ]


def block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


SHB = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
IDB = block(1, struct.pack("<HHI", 1, 0, 0))


def epb(i: int, packet: bytes) -> bytes:
    t = (T0 + i) * 1_000_000
    head = struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(packet), len(packet))
    return block(6, head + packet)


def pcap(packets: list[bytes]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", T0 + i, 0, len(p), len(p)) + p)
    return b"".join(out)


def build() -> dict[str, bytes]:
    packets = handshake()
    ng = SHB + IDB + b"".join(epb(i, p) for i, p in enumerate(packets))
    z = gzip.compress(pcap(packets * 20), mtime=0)
    return {
        # An enhanced packet block of 12 bytes, the last thing in the file:
        # its fixed fields were unpacked past the end (struct.error).
        "pcapng_epb_too_short_at_end.pcapng": ng + block(6, b""),
        # if_tsoffset claims 8 bytes and the block ends at once: the option
        # value was unpacked past the end of the file (struct.error).
        "pcapng_idb_option_past_end.pcapng": SHB
        + block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 14, 8)),
        # A simple packet block of 12 bytes: a captured length of -4 made a
        # packet out of the next block's bytes.
        "pcapng_spb_too_short.pcapng": ng + block(3, b"") + epb(3, packets[0]),
        # A gzip stream cut at two thirds: everything decompressed in the
        # reader's first 4 MiB read was lost and the file called "empty".
        "gzip_cut_mid_stream.pcap.gz": z[: len(z) * 2 // 3],
    }


if __name__ == "__main__":
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print("wrote", HERE / name)
