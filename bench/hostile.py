"""Hostile traffic: does fintrace's memory stay bounded by what is open?

    python bench/hostile.py                       # 1,000,000 connections each
    python bench/hostile.py --connections 100000 --explain
    python bench/hostile.py --rate 2000           # 500 s each: idle ones frozen

writes two captures to ``--out-dir`` (default ``bench/out``) with ``struct``
(about 3 s per million packets), then runs
``fintrace analyze --format jsonl -q CAPTURE > /dev/null`` on each and on an
empty capture, measuring wall time and peak RSS of each run (``wait4``):

* ``syn_flood.pcap``: one SYN from each of N distinct 4-tuples (spoofed
  sources 10.128.0.0/9, ports 1024-65535, to 10.0.0.10:80), 100,000 SYNs a
  second (``--rate``). Nothing answers: every 4-tuple is an ``attempt`` that stays in the
  flow table to the end of the capture.
* ``never_closed.pcap``: N connections, each a complete handshake (SYN,
  SYN+ACK, ACK) that never closes: N ``open`` connections, 3N packets.

Bytes per open connection = (peak RSS − peak RSS of the empty run) / N.
``--explain`` then builds the flow table of a smaller flood in this process
and says where those bytes go: ``tracemalloc`` by source line, and
``sys.getsizeof`` of one connection's objects.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from fintrace import COMPILED
from fintrace.decode import Decoder, DecodeStats
from fintrace.flowtable import FlowTable
from fintrace.reader import CaptureFile
from fintrace.reassembly import Reassembler
from fintrace.tracker import HALF_FIELDS, TRACKER_FIELDS

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000
SERVER = bytes((10, 0, 0, 10))
REC = struct.Struct("<IIII")


def pcap_header() -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def _segment(*, src: bytes, dst: bytes, sport: int, dport: int, flags: int) -> bytes:
    """A template Ethernet + IPv4 + TCP frame; callers patch ports and numbers in place."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 65535, 0, 0)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


def _client(i: int) -> tuple[bytes, int]:
    """The i-th distinct client (address, port): 64,512 ports per address."""
    addr = 0x0A800000 + i // 64512
    return addr.to_bytes(4, "big"), 1024 + i % 64512


def write_syn_flood(path: Path, n: int, rate: int = 100_000) -> None:
    template = bytearray(_segment(src=bytes(4), dst=SERVER, sport=0, dport=80, flags=0x02))
    with path.open("wb") as f:
        f.write(pcap_header())
        out = []
        for i in range(n):
            src, sport = _client(i)
            template[26:30] = src
            struct.pack_into(">HHI", template, 34, sport, 80, (i * 7919) & 0xFFFFFFFF)
            t = i * 1_000_000 // rate  # by default 10 µs apart: 100,000 SYNs a second
            out.append(REC.pack(T0 + t // 1_000_000, t % 1_000_000, 54, 54) + template)
            if len(out) == 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))


def write_never_closed(path: Path, n: int, rate: int = 100_000) -> None:
    syn = bytearray(_segment(src=bytes(4), dst=SERVER, sport=0, dport=80, flags=0x02))
    synack = bytearray(_segment(src=SERVER, dst=bytes(4), sport=80, dport=0, flags=0x12))
    ack = bytearray(_segment(src=bytes(4), dst=SERVER, sport=0, dport=80, flags=0x10))
    with path.open("wb") as f:
        f.write(pcap_header())
        out = []
        for i in range(n):
            src, sport = _client(i)
            cisn, sisn = (i * 7919) & 0xFFFFFFFF, (i * 104729) & 0xFFFFFFFF
            syn[26:30] = src
            struct.pack_into(">HHII", syn, 34, sport, 80, cisn, 0)
            synack[30:34] = src
            struct.pack_into(">HHII", synack, 34, 80, sport, sisn, (cisn + 1) & 0xFFFFFFFF)
            ack[26:30] = src
            struct.pack_into(
                ">HHII", ack, 34, sport, 80, (cisn + 1) & 0xFFFFFFFF, (sisn + 1) & 0xFFFFFFFF
            )
            t = i * 1_000_000 // rate
            for k, pkt in enumerate((syn, synack, ack)):
                tt = t + k * 3
                out.append(REC.pack(T0 + tt // 1_000_000, tt % 1_000_000, 54, 54) + pkt)
            if len(out) >= 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))


def measure(capture: Path) -> dict[str, Any]:
    """Wall time and peak RSS of one ``fintrace analyze`` run on ``capture``."""
    cmd = [sys.executable, "-m", "fintrace", "analyze", "--format", "jsonl", "-q", str(capture)]
    with open(os.devnull, "wb") as devnull:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=devnull)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"fintrace failed on {capture} (exit {proc.returncode})")
    # ru_maxrss is in KiB on Linux.
    return {"capture": capture.name, "wall_s": round(wall, 2), "peak_rss": usage.ru_maxrss * 1024}


def explain(n: int, out_dir: Path) -> None:
    """Where the bytes of one open connection go, in this process."""
    for name, write in (("syn_flood", write_syn_flood), ("never_closed", write_never_closed)):
        path = out_dir / f"explain_{name}_{n}.pcap"
        write(path, n)
        try:
            _explain_one(name, path, n)
        finally:
            path.unlink()


def _explain_one(name: str, path: Path, n: int) -> None:
    skipped: Counter[str] = Counter()
    table = FlowTable(linger=60.0)
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    decoder = Decoder(table, DecodeStats(skipped), Reassembler(skipped))
    with CaptureFile(path) as cap:
        while cap.pump(decoder):  # as analyze reads: no object per packet
            table.take_finished()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"\n{name}: the flow table holds {total / n:.0f} bytes per connection "
          f"({n:,} connections, tracemalloc by source line):")  # fmt: skip
    for s in stats[:10]:
        frame = s.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {s.size_diff / n:7.0f} B/conn  {where}")
    conn = next(iter(table.table.values())).conn
    halves = (conn.a, conn.b)
    parts: dict[str, int] = {
        "Tracker (slots)": sys.getsizeof(conn),
        "2 x Half (slots)": sum(sys.getsizeof(h) for h in halves),
        f"transitions list + {len(conn.transitions)} Moves": sys.getsizeof(conn.transitions)
        + sum(sys.getsizeof(t) for t in conn.transitions),
        "file_spans (None in one file)": sys.getsizeof(conn.file_spans)
        + sum(sys.getsizeof(s) for s in conn.file_spans or ()),
        "2 flow keys (bytes)": sum(sys.getsizeof(h.key) for h in halves),
    }
    if not COMPILED:  # compiled, numbers are stored in the objects above, not as objects
        parts["ints above the small-int cache"] = sum(
            sys.getsizeof(v)
            for o, slots in ((conn, TRACKER_FIELDS), *((h, HALF_FIELDS) for h in halves))
            for v in (getattr(o, a) for a in slots)
            if type(v) is int and not -5 <= v <= 256
        )
        parts["floats"] = sum(
            sys.getsizeof(v)
            for o, slots in ((conn, TRACKER_FIELDS), *((h, HALF_FIELDS) for h in halves))
            for v in {id(getattr(o, a)): getattr(o, a) for a in slots}.values()
            if type(v) is float and v != 0.0
        )
    print("  sys.getsizeof of one connection's own objects:")
    for k, v in parts.items():
        print(f"  {v:7d} B  {k}")
    print(f"  {sum(parts.values()):7d} B  sum (the table's dict entries not included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument(
        "--rate",
        type=int,
        default=100_000,
        help="connections a second (default 100,000: 10 s for a million, before any is idle\n"
        "for the 30 s after which fintrace freezes it; 10,000 or fewer shows freezing)",
    )
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--keep", action="store_true", help="keep the generated captures")
    ap.add_argument("--explain", action="store_true", help="break the bytes per connection down")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    n = args.connections
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    empty = out_dir / "empty.pcap"
    empty.write_bytes(pcap_header())
    flood, never = out_dir / "syn_flood.pcap", out_dir / "never_closed.pcap"
    t = time.perf_counter()
    write_syn_flood(flood, n, args.rate)
    write_never_closed(never, n, args.rate)
    print(f"generated {n:,} SYNs and {n:,} never-closed connections, {args.rate:,} a second "
          f"({n / args.rate:,.0f} s of traffic), in {time.perf_counter() - t:.1f} s")  # fmt: skip
    base = measure(empty)
    rows = [base]
    print(f"{'capture':<20} {'packets':>10} {'wall s':>8} {'peak RSS MB':>12} {'B/conn':>8}")
    print(f"{'empty.pcap':<20} {0:>10,} {base['wall_s']:>8} {base['peak_rss'] / 2**20:>12.1f}")
    for path, packets in ((flood, n), (never, 3 * n)):
        r = measure(path)
        r["connections"] = n
        r["packets"] = packets
        r["bytes_per_connection"] = round((r["peak_rss"] - base["peak_rss"]) / n)
        rows.append(r)
        print(f"{path.name:<20} {packets:>10,} {r['wall_s']:>8} {r['peak_rss'] / 2**20:>12.1f} "
              f"{r['bytes_per_connection']:>8}")  # fmt: skip
    load = os.getloadavg()
    print(f"load average before/after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"cores {os.cpu_count()}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "loadavg": load}, indent=1))
    if not args.keep:
        for p in (flood, never, empty):
            p.unlink()
    if args.explain:
        explain(min(n, 200_000), out_dir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"(this script's own peak RSS: {usage.ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
