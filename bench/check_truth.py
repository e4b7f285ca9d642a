"""Compare fintrace's verdict on a generated capture with the generator's truth.

    python bench/check_truth.py bench/out/gen-100000c-2000o-s1.pcap

runs ``fintrace analyze --format jsonl -q`` on the capture, reads
``<capture stem>.truth.jsonl`` beside it (written by ``generate.py``) and
compares every connection, matched by ``stream``, field by field. Prints the
mismatches grouped by field, with the generator's scenario and a few
``tcp.stream eq N`` examples, and exits 1 on any mismatch (0 when every
connection agrees, 2 when fintrace or the files cannot be run or read).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Fields compared exactly, as ``TEARDOWN.md`` names them.
EXACT = (
    "client",
    "server",
    "roles_inferred",
    "first_frame",
    "last_frame",
    "packets",
    "payload_bytes",
    "close_type",
    "active_closer",
    "reset_by",
    "reset_phase",
    "time_wait",
    "fin_retransmits",
    "half_close_bytes",
    "final_ack_seen",
    "stuck",
    "reused_tuple.previous_stream",
)
#: Fields in seconds: capture timestamps are microseconds, read back as floats.
TIMED = ("first_ts", "last_ts", "close_wait_s", "reused_tuple.gap_s")
FIELDS = EXACT + TIMED
TOLERANCE_S = 2e-6


def _get(row: dict[str, Any], name: str) -> Any:
    head, _, rest = name.partition(".")
    value = row.get(head)
    if rest:
        return None if value is None else value.get(rest)
    if isinstance(value, dict):
        # Kept as a tuple: 600,000 small dicts would double the memory.
        return tuple(sorted(value.items()))
    return value


def project(row: dict[str, Any], fields: Iterable[str]) -> tuple[Any, ...]:
    """Only the compared values of a connection."""
    return tuple(_get(row, f) for f in fields)


@dataclass
class Report:
    compared: int = 0
    #: field → [(stream, fintrace's value, truth's value, scenario)]
    mismatches: dict[str, list[tuple[int, Any, Any, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    by_scenario: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def add(self, name: str, stream: int, got: Any, want: Any, scenario: str) -> None:
        self.mismatches[name].append((stream, got, want, scenario))
        self.by_scenario[name][scenario] += 1

    def render(self, examples: int = 5) -> str:
        lines = [f"{self.compared:,} connections compared"]
        if self.ok:
            lines.append("every connection matches the truth")
            return "\n".join(lines)
        for name, rows in sorted(self.mismatches.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"\n{name}: {len(rows):,} mismatch(es)")
            for scenario, n in self.by_scenario[name].most_common(8):
                lines.append(f"  {n:>8,}  {scenario}")
            for stream, got, want, scenario in rows[:examples]:
                lines.append(
                    f"    tcp.stream eq {stream}  ({scenario}): fintrace {json.dumps(got)}, "
                    f"truth {json.dumps(want)}"
                )
        return "\n".join(lines)


def _same(name: str, got: Any, want: Any) -> bool:
    if name in TIMED:
        if got is None or want is None:
            return got is want
        return bool(abs(got - want) <= TOLERANCE_S)
    return bool(got == want)


def compare(
    truth: Iterable[dict[str, Any]],
    fintrace: Iterable[dict[str, Any]],
    *,
    fields: tuple[str, ...] = FIELDS,
) -> Report:
    """Match connections by stream and compare ``fields``.

    The truth is held (projected); fintrace's output is consumed as it streams.
    """
    want: dict[int, tuple[tuple[Any, ...], str]] = {
        row["stream"]: (project(row, fields), row.get("scenario", "?")) for row in truth
    }
    report = Report()
    for row in fintrace:
        stream = row["stream"]
        entry = want.pop(stream, None)
        if entry is None:
            report.add("missing_in_truth", stream, row.get("close_type"), None, "?")
            continue
        expected, scenario = entry
        report.compared += 1
        for name, g, w in zip(fields, project(row, fields), expected, strict=True):
            if not _same(name, g, w):
                report.add(name, stream, g, w, scenario)
    for stream, (_, scenario) in sorted(want.items()):
        report.add("missing_in_fintrace", stream, None, "a connection", scenario)
    return report


def read_jsonl(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield json.loads(line)


def truth_path(capture: Path) -> Path:
    return capture.with_name(capture.stem + ".truth.jsonl")


def run_fintrace(command: list[str], capture: Path) -> Iterator[dict[str, Any]]:
    """Stream fintrace's connections as it prints them."""
    argv = [*command, "analyze", "--format", "jsonl", "-q", str(capture)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        yield from read_jsonl(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with status {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("capture", type=Path)
    p.add_argument("--truth", type=Path, help="default: CAPTURE's stem + .truth.jsonl")
    p.add_argument(
        "--fintrace",
        default="fintrace",
        help="command that runs fintrace, with any extra options before 'analyze' "
        "(e.g. 'python -m fintrace')",
    )
    p.add_argument("--jsonl", type=Path, help="compare this saved jsonl output instead")
    p.add_argument("--ignore", action="append", default=[], choices=FIELDS, help="skip a field")
    p.add_argument("--examples", type=int, default=5, help="examples shown per field")
    a = p.parse_args(argv)
    fields = tuple(f for f in FIELDS if f not in a.ignore)
    tpath = a.truth or truth_path(a.capture)
    try:
        with open(tpath) as tf:
            if a.jsonl is not None:
                with open(a.jsonl) as jf:
                    report = compare(read_jsonl(tf), read_jsonl(jf), fields=fields)
            else:
                got = run_fintrace(shlex.split(a.fintrace), a.capture)
                report = compare(read_jsonl(tf), got, fields=fields)
    except (OSError, RuntimeError, json.JSONDecodeError) as e:
        print(f"check_truth: error: {e}", file=sys.stderr)
        return 2
    print(report.render(a.examples))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
