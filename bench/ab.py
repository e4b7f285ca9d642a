"""Two builds of fintrace on one capture, in turn, so that both see the same machine.

    python bench/ab.py bench/out/gen-1.6m.pcap OTHER_PYTHON [--rounds 3]

``OTHER_PYTHON`` is the interpreter of another install of fintrace (a venv
made with ``pip install .`` from an earlier commit, say); this one is the
interpreter running the script. Each round runs the analysis once with each,
one after the other, in a fresh process: ``Run.connections()`` into the JSON
lines renderer, writing to ``/dev/null``, timed inside the process from the
run's start to its end (no interpreter start-up), and the process's peak RSS.
Prints every round, each build's best and median time and the range of its peaks,
the median of the rounds' own ratios (each round's two runs one after the other) and
how many rounds this build won, and the ratios of the best and of the median times
and of the median peaks.

On a shared machine the speed of the processor's caches moves with what the
other tenants do, by up to a third over minutes (``docs/performance.md``):
this compares two builds where ``run.py`` rounds taken at different times
cannot. Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

#: Run in each child: prints the seconds the analysis took, its connections and
#: the process's peak RSS in KiB.
CHILD = """
import gc, os, resource, sys, time
from fintrace.pipeline import AnalyzeOptions, Run
from fintrace.render.jsonout import JsonLinesRenderer
with open(os.devnull, "w") as out:
    gc.collect()
    start = time.perf_counter()
    run = Run(AnalyzeOptions(paths=(sys.argv[1],)))
    renderer = JsonLinesRenderer(out)
    renderer.begin(run)
    n = 0
    for conn in run.connections():
        renderer.connection(conn)
        n += 1
    renderer.end(run)
    print(time.perf_counter() - start, n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def fail(message: str) -> NoReturn:
    """Bad input: one line, exit status 2."""
    print(f"ab.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def once(python: str, capture: str) -> tuple[float, int, float]:
    """Seconds, connections and peak RSS (MiB) of one analysis by ``python``'s fintrace."""
    # -I: not the checkout in the current directory, but the install of that interpreter.
    try:
        done = subprocess.run(
            [python, "-I", "-c", CHILD, capture], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        fail(f"{python}: {exc.strerror}")
    if done.returncode != 0 or done.stderr.strip():
        fail(
            f"{python}: "
            + (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        )
    seconds, conns, rss_kb = done.stdout.split()
    return float(seconds), int(conns), int(rss_kb) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("capture")
    p.add_argument("other", help="the Python interpreter of the other install")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    if not Path(a.capture).is_file():
        fail(f"{a.capture}: no such file")
    builds = {"this": sys.executable, "other": a.other}
    times: dict[str, list[float]] = {name: [] for name in builds}
    peaks: dict[str, list[float]] = {name: [] for name in builds}
    counts: set[int] = set()
    for r in range(a.rounds):
        for name, python in builds.items():
            seconds, conns, peak = once(python, a.capture)
            times[name].append(seconds)
            peaks[name].append(peak)
            counts.add(conns)
            print(
                f"round {r + 1}/{a.rounds}  {name:<5}  {seconds:6.3f} s  {peak:6.1f} MiB",
                flush=True,
            )
    if len(counts) != 1:
        fail(f"the builds found different numbers of connections: {sorted(counts)}")
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, python in builds.items():
        print(
            f"{name:<5} best {best[name]:6.3f} s  median {median[name]:6.3f} s  "
            f"peak RSS {min(peaks[name]):.1f}-{max(peaks[name]):.1f} MiB  ({python})"
        )
    # Each round's two runs came one after the other, on the machine as it then was:
    # their ratios compare the builds where the machine's speed moves between rounds
    # (by a third within minutes, docs/performance.md) more than the builds differ.
    paired = [t / o for t, o in zip(times["this"], times["other"], strict=True)]
    won = sum(1 for x in paired if x < 1)
    print(
        f"this / other, round by round: median {statistics.median(paired):.3f} of the time, "
        f"this faster in {won} of {len(paired)} rounds"
    )
    # The peak moves from run to run too (by up to 10 MB on gen-10m): its medians compare.
    peak = {name: statistics.median(p) for name, p in peaks.items()}
    print(f"this / other: {peak['this'] / peak['other']:.3f} of the peak RSS (median)")
    print(
        f"this / other: {best['this'] / best['other']:.2f} of the time (best), "
        f"{median['this'] / median['other']:.2f} (median)"
    )


if __name__ == "__main__":
    main()
