"""Throughput and peak memory of fintrace beside tshark and a bare dpkt loop, same run.

    python bench/run.py bench/out/gen-1.6m.pcap [more captures] [--rounds 3]
    python bench/run.py a.pcap b.pcap --jobs 1,2      # also: --separate --jobs N

For each capture, after reading it once to warm the page cache, every round
runs each tool once, in turn (so a burst of load from elsewhere hurts all of
them alike):

* ``fintrace``: ``python -P -m fintrace analyze --format jsonl -q CAPTURE > /dev/null``,
  by the interpreter that runs this script (``--fintrace`` names another command)
* ``pure`` (only with ``--tools``): the same with ``FINTRACE_PURE=1``, the
  Python source of a compiled install
* ``tshark``:   ``tshark -q -z conv,tcp -r CAPTURE > /dev/null``
* ``dpkt``:     ``for ts, buf in dpkt.pcap.Reader(f): n += 1`` in a fresh interpreter
* ``walk`` (only with ``--tools``): a CPython walk over the record headers

and takes the wall time and the child's peak RSS (``wait4`` rusage, the
largest process of its tree). It prints best and median wall time, packets
per second, peak RSS and the ratios fintrace/tshark and fintrace/dpkt, checks
the targets of issue 6, and writes everything, with the machine and its load,
to a JSON file (default ``bench/out/run-DATE.json``).

The Python tools (fintrace, the dpkt loop, the walk) all run in this script's
interpreter, which the run names with how its ``libpython`` is linked: the
interpreter's build moves fintrace by about a sixth (``docs/performance.md``,
*The interpreter*), more than most changes to fintrace do.

With several captures and ``--jobs 1,2,...``, it also runs
``fintrace analyze --separate --jobs N`` on all of them together and reports
the speed-up over ``--jobs 1``; there the memory is also sampled over the
whole process tree (the sum of the workers), every 0.1 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DPKT_LOOP = """
import sys, dpkt
n = 0
with open(sys.argv[1], "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        n += 1
print(n)
"""
HEADER_WALK = """
import struct, sys
n = 0
with open(sys.argv[1], "rb") as f:
    little = f.read(24)[:4] in (b"\\xd4\\xc3\\xb2\\xa1", b"\\x4d\\x3c\\xb2\\xa1")
    u = struct.Struct("<I" if little else ">I").unpack_from
    buf, off = b"", 0
    while chunk := f.read(1 << 22):
        buf, off = buf[off:] + chunk, 0
        end = len(buf)
        while off + 16 <= end:
            nxt = off + 16 + u(buf, off + 8)[0]
            if nxt > end:
                break
            off, n = nxt, n + 1
print(n)
"""
TOOLS = ("fintrace", "pure", "tshark", "dpkt", "walk")
#: Issue 6: one process on ~1.6M packets.
TARGET_PPS = 800_000
TARGET_VS_TSHARK = 6.0
TARGET_RSS_10M_MB = 250.0
TARGET_RSS_GROWTH = 1.5
#: The memory growth target compares captures at least this many times longer.
GROWTH_MIN_LENGTH_RATIO = 3


@dataclass
class Sample:
    wall_s: float
    maxrss_kb: int
    tree_rss_kb: int | None = None


@dataclass
class Result:
    tool: str
    argv: list[str]
    packets: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def best_s(self) -> float:
        return min(s.wall_s for s in self.samples)

    @property
    def median_s(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def peak_rss_mb(self) -> float:
        return max(s.maxrss_kb for s in self.samples) / 1024

    @property
    def peak_tree_mb(self) -> float | None:
        trees = [s.tree_rss_kb for s in self.samples if s.tree_rss_kb is not None]
        return max(trees) / 1024 if trees else None

    def pps(self, median: bool = False) -> float:
        return self.packets / (self.median_s if median else self.best_s)

    def summary(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "argv": self.argv,
            "packets": self.packets,
            "rounds": [asdict(s) for s in self.samples],
            "best_s": self.best_s,
            "median_s": self.median_s,
            "pps_best": self.pps(),
            "pps_median": self.pps(median=True),
            "peak_rss_mb": self.peak_rss_mb,
            "peak_tree_rss_mb": self.peak_tree_mb,
        }


# -- running one child -----------------------------------------------------------


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and its descendants, polled."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            total = sum(_rss_kb(p) for p in _tree(self.pid))
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak_kb


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(
    argv: list[str], *, sample_tree: bool = False, silent: bool = False
) -> tuple[Sample, str]:
    """Run ``argv`` with stdout to a file; wall time, peak RSS (wait4) and its output.

    ``silent``: the command must write nothing to stderr (fintrace with ``-q``).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        sampler = TreeSampler(proc.pid) if sample_tree else None
        if sampler is not None:
            sampler.start()
        # wait4, not Popen.wait: it hands back this child's own rusage.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        tree = sampler.stop() if sampler is not None else None
        out.seek(0)
        err.seek(0)
        text = out.read(4096).decode(errors="replace")
        if proc.returncode == 0 and silent:
            # Such as the warning of a compiled build that runs its Python source
            # because a module was edited since the build: the figures would be wrong.
            said = err.read().decode(errors="replace").strip()
            if said:
                raise RuntimeError(f"{shlex.join(argv)} wrote to stderr: {said.splitlines()[0]}")
        if proc.returncode != 0:
            message = err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(
                f"{shlex.join(argv)} exited with {proc.returncode}: {' | '.join(message)}"
            )
    return Sample(wall, usage.ru_maxrss, tree), text


def tool_argv(tool: str, capture: Path, fintrace: list[str]) -> tuple[list[str], bool]:
    """The command for a tool, and whether its stdout is discarded (else it prints a count)."""
    if tool == "fintrace":
        return [*fintrace, "analyze", "--format", "jsonl", "-q", str(capture)], True
    if tool == "pure":  # env execs fintrace: the rusage is fintrace's
        return ["env", "FINTRACE_PURE=1", *tool_argv("fintrace", capture, fintrace)[0]], True
    if tool == "tshark":
        return ["tshark", "-q", "-z", "conv,tcp", "-r", str(capture)], True
    if tool == "dpkt":
        return [sys.executable, "-c", DPKT_LOOP, str(capture)], False
    if tool == "walk":
        return [sys.executable, "-c", HEADER_WALK, str(capture)], False
    raise ValueError(tool)


# -- about the capture and the machine ---------------------------------------------


def packet_count(capture: Path) -> int:
    """Frames in the capture: from the generator's meta file, else by walking the headers."""
    meta = capture.with_name(capture.stem + ".meta.json")
    if meta.is_file():
        data = json.loads(meta.read_text())
        if data.get("capture") == capture.name:
            return int(data["packets"])
    _, text = run_child([sys.executable, "-c", HEADER_WALK, str(capture)])
    return int(text.split()[0])


def warm(capture: Path) -> float:
    """Read the file once so every tool starts from the page cache."""
    t0 = time.perf_counter()
    with open(capture, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass
    return time.perf_counter() - t0


def _first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def default_fintrace() -> list[str]:
    """fintrace run by this script's interpreter, as the dpkt loop and the walk are.

    ``-P``: the installed fintrace, not a ``fintrace/`` in the working directory
    (the source tree, when run from the repository).
    """
    return [sys.executable, "-P", "-m", "fintrace"]


def interpreter() -> dict[str, Any]:
    """The interpreter running this script: its path, version, and where its ``libpython`` is.

    ``libpython`` is the shared library this process mapped (a build with
    ``--enable-shared``, whose code is position-independent and called through
    the PLT), or None when the interpreter is linked into the executable, as
    Debian's ``/usr/bin/python3`` is (built with PGO and LTO). ``configure`` is
    what ``configure`` was given of ``--enable-optimizations``, ``--with-lto``
    and ``--enable-shared`` by the build's own record, which for Debian's
    describes its shared library, not its executable.
    """
    libpython = None
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)  # address, perms, offset, dev, inode, path
                if len(fields) == 6 and Path(fields[5].strip()).name.startswith("libpython"):
                    libpython = fields[5].strip()
                    break
    except OSError:
        pass
    args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    flags = ("--enable-optimizations", "--with-lto", "--enable-shared")
    return {
        "path": os.path.realpath(sys.executable),
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "libpython": libpython,
        "configure": [f for f in flags if f in args],
    }


def describe_interpreter(i: dict[str, Any]) -> str:
    """One line: ``CPython 3.11.2 at PATH, libpython in the executable``."""
    where = "libpython in the executable" if i["libpython"] is None else Path(i["libpython"]).name
    return f"{i['implementation']} {i['version']} at {i['path']}, {where}"


def machine(fintrace: list[str]) -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    repo = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(repo), "status", "--porcelain", "--", "fintrace"])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "python": platform.python_version(),
        "interpreter": interpreter(),
        "fintrace_command": fintrace,
        "platform": platform.platform(),
        "tshark": _first_line(["tshark", "--version"]),
        "fintrace_commit": commit,
        "fintrace_tree_modified": dirty is not None,
        "fintrace_version": _first_line([*fintrace, "--version"]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the benchmark -------------------------------------------------------------------


def bench_capture(
    capture: Path, *, tools: list[str], rounds: int, fintrace: list[str]
) -> dict[str, Result]:
    packets = packet_count(capture)
    print(
        f"\n{capture.name}: {packets:,} packets, {capture.stat().st_size / 1e6:.0f} MB "
        f"(page cache warmed in {warm(capture):.1f} s)",
        file=sys.stderr,
    )
    results = {t: Result(t, tool_argv(t, capture, fintrace)[0], packets) for t in tools}
    for r in range(rounds):
        for t in tools:
            argv, quiet = tool_argv(t, capture, fintrace)
            sample, text = run_child(argv, silent=t in ("fintrace", "pure"))
            if not quiet and int(text.split()[0]) != packets:
                raise RuntimeError(f"{t} counted {text.split()[0]} packets, expected {packets}")
            results[t].samples.append(sample)
            print(
                f"  round {r + 1}/{rounds} {t:<9} {sample.wall_s:7.2f} s "
                f"{packets / sample.wall_s / 1e3:8.0f} kpps {sample.maxrss_kb / 1024:7.0f} MB "
                f"load {load()[0]:.2f}",
                file=sys.stderr,
            )
    return results


def table(name: str, results: dict[str, Result]) -> list[str]:
    lines = [
        f"\n{name}",
        f"{'tool':<9} {'best s':>8} {'median s':>9} {'kpps best':>10} {'kpps med':>9} "
        f"{'peak RSS MB':>12}",
    ]
    for r in results.values():
        lines.append(
            f"{r.tool:<9} {r.best_s:>8.2f} {r.median_s:>9.2f} {r.pps() / 1e3:>10.0f} "
            f"{r.pps(median=True) / 1e3:>9.0f} {r.peak_rss_mb:>12.0f}"
        )
    f = results.get("fintrace")
    if f is not None:
        for other in ("pure", "tshark", "dpkt", "walk"):
            o = results.get(other)
            if o is not None:
                lines.append(
                    f"fintrace/{other}: {f.pps() / o.pps():.2f}× (best), "
                    f"{f.pps(median=True) / o.pps(median=True):.2f}× (median)"
                    + (f"; RSS {f.peak_rss_mb / o.peak_rss_mb:.2f}×" if other == "tshark" else "")
                )
    return lines


def targets(per_capture: dict[str, dict[str, Result]]) -> list[str]:
    """Issue 6's targets, judged on the best round."""
    lines = ["\ntargets (issue 6, best round):"]
    rss: list[tuple[int, float]] = []
    for name, results in per_capture.items():
        f = results.get("fintrace")
        if f is None:
            continue
        rss.append((f.packets, f.peak_rss_mb))
        lines.append(
            f"  {name}: {f.pps() / 1e3:.0f} kpps >= {TARGET_PPS / 1e3:.0f}k: "
            f"{_yes(f.pps() >= TARGET_PPS)}"
        )
        t = results.get("tshark")
        if t is not None:
            lines.append(
                f"  {name}: {f.pps() / t.pps():.2f}× tshark >= {TARGET_VS_TSHARK}×: "
                f"{_yes(f.pps() / t.pps() >= TARGET_VS_TSHARK)}"
            )
        if f.packets >= 9_000_000:
            ok = _yes(f.peak_rss_mb <= TARGET_RSS_10M_MB)
            limit = f"{TARGET_RSS_10M_MB:.0f} MB"
            lines.append(f"  {name}: peak RSS {f.peak_rss_mb:.0f} MB <= {limit}: {ok}")
    rss.sort()
    # Growth with the capture's length: only between a long capture and one
    # several times shorter (two captures of 1.6M packets say nothing of it).
    if len(rss) > 1 and rss[-1][0] >= GROWTH_MIN_LENGTH_RATIO * rss[0][0]:
        growth = rss[-1][1] / rss[0][1]
        lines.append(
            f"  peak RSS {rss[-1][0]:,} vs {rss[0][0]:,} packets: {growth:.2f}× "
            f"<= {TARGET_RSS_GROWTH}×: {_yes(growth <= TARGET_RSS_GROWTH)}"
        )
    return lines


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def supports_jobs(fintrace: list[str]) -> bool:
    out = subprocess.run(
        [*fintrace, "analyze", "--help"], capture_output=True, text=True, check=False
    )
    return "--jobs" in out.stdout


def bench_jobs(
    captures: list[Path], *, jobs: list[int], rounds: int, fintrace: list[str]
) -> dict[int, Result]:
    packets = sum(packet_count(c) for c in captures)
    for c in captures:
        warm(c)
    results: dict[int, Result] = {}
    for n in jobs:
        argv = [
            *fintrace,
            "analyze",
            "--separate",
            "--jobs",
            str(n),
            "--format",
            "jsonl",
            "-q",
            *map(str, captures),
        ]
        results[n] = Result(f"jobs={n}", argv, packets)
    for r in range(rounds):
        for n in jobs:
            sample, _ = run_child(results[n].argv, sample_tree=True, silent=True)
            results[n].samples.append(sample)
            print(
                f"  round {r + 1}/{rounds} --jobs {n:<3} {sample.wall_s:7.2f} s "
                f"{packets / sample.wall_s / 1e3:8.0f} kpps tree {sample.tree_rss_kb or 0:,} kB "
                f"load {load()[0]:.2f}",
                file=sys.stderr,
            )
    return results


def jobs_table(results: dict[int, Result]) -> list[str]:
    base = results.get(1) or next(iter(results.values()))
    lines = [
        f"\n--separate --jobs N on {base.packets:,} packets",
        f"{'jobs':>4} {'best s':>8} {'median s':>9} {'kpps best':>10} {'speed-up':>9} "
        f"{'largest RSS MB':>15} {'tree RSS MB':>12}",
    ]
    for n, r in results.items():
        lines.append(
            f"{n:>4} {r.best_s:>8.2f} {r.median_s:>9.2f} {r.pps() / 1e3:>10.0f} "
            f"{base.median_s / r.median_s:>8.2f}× {r.peak_rss_mb:>15.0f} "
            f"{r.peak_tree_mb or 0:>12.0f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("captures", nargs="+", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--tools", default="fintrace,tshark,dpkt", help=f"comma-separated, from {', '.join(TOOLS)}"
    )
    p.add_argument(
        "--fintrace",
        help="command that runs fintrace (default: this interpreter's, python -P -m fintrace)",
    )
    p.add_argument("--jobs", help="with several captures: compare --separate --jobs N, e.g. 1,2")
    p.add_argument("--json", type=Path, help="result file (default bench/out/run-DATE.json)")
    a = p.parse_args(argv)
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        p.error(f"unknown tool(s): {', '.join(unknown)}")
    if "tshark" in tools and shutil.which("tshark") is None:
        p.error("tshark is not installed (leave it out with --tools)")
    for c in a.captures:
        if not c.is_file():
            p.error(f"no such capture: {c}")
    fintrace = shlex.split(a.fintrace) if a.fintrace else default_fintrace()
    jobs = [int(x) for x in a.jobs.split(",")] if a.jobs else []

    info = machine(fintrace)
    doc: dict[str, Any] = {
        "machine": info,
        "load_before": load(),
        "rounds": a.rounds,
        "captures": {},
    }
    per_capture: dict[str, dict[str, Result]] = {}
    lines: list[str] = []
    try:
        for c in a.captures:
            results = bench_capture(c, tools=tools, rounds=a.rounds, fintrace=fintrace)
            per_capture[c.name] = results
            doc["captures"][c.name] = {t: r.summary() for t, r in results.items()}
            lines += table(c.name, results)
        if jobs:
            if len(a.captures) < 2:
                print("--jobs wants several captures; skipped", file=sys.stderr)
            elif not supports_jobs(fintrace):
                print("fintrace analyze has no --jobs option yet; skipped", file=sys.stderr)
                doc["jobs"] = "fintrace has no --jobs"
            else:
                jr = bench_jobs(a.captures, jobs=jobs, rounds=a.rounds, fintrace=fintrace)
                doc["jobs"] = {str(n): r.summary() for n, r in jr.items()}
                lines += jobs_table(jr)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"run: error: {e}", file=sys.stderr)
        return 2
    lines += targets(per_capture)
    doc["load_after"] = load()
    lines.append(
        f"\nmachine: {info['cpu']}, {info['cores']} cores, "
        f"{describe_interpreter(info['interpreter'])}, "
        f"{info['tshark']}; {info['fintrace_version']} at {info['fintrace_commit']}"
        f"{' (modified)' if info['fintrace_tree_modified'] else ''}; "
        f"load {doc['load_before']} before, {doc['load_after']} after; {info['date']}"
    )
    print("\n".join(lines))
    out = a.json or Path("bench/out") / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
