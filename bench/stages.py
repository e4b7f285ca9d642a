"""Where fintrace's time goes: each stage of the pipeline, timed on its own.

    python bench/stages.py bench/out/gen-1.6m.pcap [--rounds 3]

Runs the pipeline on one capture, stage by stage, in this process (the
collector paused, as ``analyze`` pauses it), and prints the best of
``--rounds`` for each:

* ``read``: the reader's records, handed to a sink that drops them;
* ``decode``: read and decode to segments, handed to a sink that drops them;
* ``table``: read, decode and the flow table with its state trackers (every
  connection finished, none classified);
* ``finish``: classify, build the records, aggregate (the Zeek
  ``conn_state`` and the Community ID included), timed over the trackers
  the table stage gave;
* ``render``: those records through the jsonl renderer, as ``analyze`` writes
  them, to ``/dev/null``.

``read``, ``decode`` and ``table`` each include the stage before;
``finish`` and ``render`` are on their own. table + finish + render is about what ``fintrace analyze
--format jsonl`` takes. Not a test: a measurement, for
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from fintrace.decode import Decoder, DecodeStats, SegmentSink
from fintrace.flowtable import FlowTable
from fintrace.pipeline import AnalyzeOptions, CaptureInfo, Run
from fintrace.reader import CaptureFile, RecordSink
from fintrace.reassembly import Reassembler
from fintrace.render.jsonout import JsonLinesRenderer

if TYPE_CHECKING:
    from collections.abc import Callable

    from fintrace.model import Connection
    from fintrace.tracker import Tracker


def read(path: str) -> int:
    with CaptureFile(path) as cap:
        while cap.pump(RecordSink()):
            pass
    return 0


def decode(path: str) -> tuple[int, int]:
    skipped: Counter[str] = Counter()
    stats = DecodeStats(skipped)
    decoder = Decoder(SegmentSink(), stats, Reassembler(skipped))
    with CaptureFile(path) as cap:
        while cap.pump(decoder):
            pass
    decoder.finish()
    return stats.frames, stats.frames - sum(skipped.values())


def table(path: str, options: AnalyzeOptions) -> list[Tracker]:
    skipped: Counter[str] = Counter()
    t = FlowTable(linger=options.linger_s, remember=options.remember_s)
    decoder = Decoder(t, DecodeStats(skipped), Reassembler(skipped))
    done: list[Tracker] = []
    with CaptureFile(path) as cap:
        while cap.pump(decoder):
            done += [c for c, _ in t.take_finished()]
    decoder.finish()
    return done + [c for c, _ in t.take_finished()] + list(t.drain())


def render(records: list[Connection]) -> None:
    with open(os.devnull, "w") as out:
        renderer = JsonLinesRenderer(out)
        for c in records:
            renderer.connection(c)
        renderer.flush()


def best(rounds: int, work: Callable[[], Any]) -> tuple[float, Any]:
    times = []
    result = None
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("capture")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    path = a.capture
    options = AnalyzeOptions(paths=(path,))
    gc.disable()
    t_read, _ = best(a.rounds, lambda: read(path))
    t_decode, (packets, segs) = best(a.rounds, lambda: decode(path))
    t_table, _ = best(a.rounds, lambda: len(table(path, options)))

    # Trackers are released as they are finished: each round needs its own.
    t_finish = float("inf")
    records: list[Connection] = []
    for _ in range(a.rounds):
        trackers = table(path, options)
        end = max(c.last_ts for c in trackers)
        run = Run(options)
        run.captures.append(CaptureInfo(path, "pcap", None, 0, [1]))
        run._names = [path]
        gc.collect()
        start = time.perf_counter()
        records = [run._connection(c, end) for c in trackers]
        t_finish = min(t_finish, time.perf_counter() - start)
    t_render, _ = best(a.rounds, lambda: render(records))
    conns = len(records)
    rows = [
        ("read", t_read, f"{packets:,} records"),
        ("+ decode", t_decode, f"{segs:,} segments"),
        ("+ flow table and trackers", t_table, f"{conns:,} connections"),
        (
            "finish (classify, records, aggregate)",
            t_finish,
            f"{t_finish / conns * 1e6:.1f} µs each",
        ),
        ("render jsonl", t_render, f"{t_render / conns * 1e6:.1f} µs each"),
    ]
    total = t_table + t_finish + t_render
    print(f"{path}: best of {a.rounds} rounds")
    for name, t, note in rows:
        print(f"  {name:<40} {t:7.2f} s   {note}")
    print(
        f"  {'total (table + finish + render)':<40} {total:7.2f} s   "
        f"{packets / total / 1e3:.0f} k packets/s"
    )


if __name__ == "__main__":
    main()
