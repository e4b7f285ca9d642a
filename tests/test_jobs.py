"""``analyze --separate --jobs N``: the output of one process, byte for byte.

Each worker process analyses one file, renders its listed connections and
adds them up; the parent copies the rendered parts in file order and merges
the aggregates (``Aggregator.merge``). Here: every format with and without
each filter gives the same bytes with ``--jobs 2`` (and 3, 8) as with
``--jobs 1``; merged aggregates give the summary one aggregator gives, on
every capture, with every aggregate field in use; errors, warnings,
progress and Ctrl-C behave as in one process, and nothing is left behind.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import pickle
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from click.testing import CliRunner, Result

from fintrace.aggregate import AggregateOptions, Aggregator
from fintrace.cli import main
from fintrace.errors import CaptureError
from fintrace.model import Connection, Endpoint
from fintrace.pipeline import AnalyzeOptions, ParallelRun, analyze
from fintrace.render.parts import PartWriter, Splicer

from conftest import CAPTURES, ROOT

if TYPE_CHECKING:
    from collections.abc import Iterable

sys.path.insert(0, str(ROOT / "bench"))

import generate

CLOSES = CAPTURES / "closes"
#: The first lists no refused or reset connection, nor port 443: the
#: filtered json document's first connection comes from a later part.
FILES = [
    str(p)
    for p in (
        CLOSES / "graceful_client_first.pcap",
        CLOSES / "refused.pcap",
        CLOSES / "close_wait_stuck.pcap",
        CAPTURES / "incident" / "incident.pcap.gz",
        CLOSES / "reset_established_client_ipv6.pcap",
        CLOSES / "reused_tuple_in_time_wait.pcap",
        CAPTURES / "report" / "incident.pcap.gz",
    )
]
FILTERS: dict[str, list[str]] = {
    "none": [],
    "close-type": ["--close-type", "refused", "--close-type", "reset"],
    "port": ["--port", "443", "--port", "6379"],
    "host": ["--host", "10.1.0.0/16", "--host", "2001:db8::/32"],
    "stream": ["--stream", "0", "--stream", "3"],
    "stuck": ["--stuck"],
    "nothing": ["--port", "1"],
}
FORMATS = ["table", "json", "jsonl", "csv"]


def fintrace(jobs: int, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["analyze", "--separate", "--jobs", str(jobs), "-q", "--no-color", *args]
    )


def same_as_one_process(*args: str, jobs: int = 2) -> Result:
    one = fintrace(1, *args)
    many = fintrace(jobs, *args)
    assert many.exit_code == one.exit_code, many.output
    assert many.stdout_bytes == one.stdout_bytes
    assert many.stderr == one.stderr
    return one


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("filters", list(FILTERS.values()), ids=list(FILTERS))
def test_every_format_and_filter_as_one_process(fmt: str, filters: list[str]) -> None:
    one = same_as_one_process("--format", fmt, *filters, *FILES)
    assert one.exit_code == 0
    assert one.stdout_bytes or (fmt == "jsonl" and filters == FILTERS["nothing"])


@pytest.mark.parametrize("name", [f for f in FILTERS if f not in ("none", "nothing")])
def test_each_filter_lists_some_connections_of_some_files(name: str) -> None:
    result = fintrace(1, "--format", "jsonl", *FILTERS[name], *FILES)
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    files = {c["capture"] for c in listed}
    assert len(files) > 1
    assert 0 < len(listed) < len(fintrace(1, "--format", "jsonl", *FILES).stdout.splitlines())
    if name in ("close-type", "port"):
        assert FILES[0] not in files


@pytest.mark.parametrize("jobs", [3, 8])
@pytest.mark.parametrize("fmt", ["json", "table"])
def test_more_jobs_than_cores_or_files(fmt: str, jobs: int) -> None:
    assert same_as_one_process("--format", fmt, *FILES, jobs=jobs).exit_code == 0


@pytest.mark.parametrize("limit", ["0", "1", "5", "200"])
def test_table_rows_across_files_and_a_file_given_twice(limit: str) -> None:
    # The same file twice: equal (capture, stream) keys keep file order.
    args = ["--format", "table", "--limit", limit, *FILES, FILES[3], FILES[0]]
    assert same_as_one_process(*args).exit_code == 0


def test_output_file(tmp_path: Path) -> None:
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"{jobs}.json"
        assert fintrace(jobs, "--format", "json", "-o", str(out), *FILES).exit_code == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_standard_output_of_a_process_as_one_process(fmt: str, tmp_path: Path) -> None:
    # Workers are copies of the parent (fork): what the parent had written to
    # its standard output's buffer (the format's head) must come out once.
    outs = []
    for jobs in ("1", "2"):
        argv = ["analyze", "--separate", "--jobs", jobs, "--format", fmt, "-q", *FILES]
        run = subprocess.run(
            [sys.executable, "-m", "fintrace", *argv], capture_output=True, check=True, cwd=tmp_path
        )
        outs.append(run.stdout)
    assert outs[1] == outs[0]


def test_captures_read_from_pipes(tmp_path: Path) -> None:
    # A pipe is read once: the worker reads the file the parent opened.
    pipes = " ".join(f"<(cat {shlex.quote(f)})" for f in FILES[:4])
    outs = []
    for jobs in ("1", "2"):
        analyze = f"analyze --separate --jobs {jobs} --format json -q {pipes}"
        command = f"{shlex.quote(sys.executable)} -m fintrace {analyze}"
        run = subprocess.run(["bash", "-c", command], capture_output=True, check=True, cwd=tmp_path)
        outs.append(run.stdout)
    assert outs[1] == outs[0]
    assert len(json.loads(outs[0])["captures"]) == 4


def test_json_summary_and_captures_as_one_process() -> None:
    docs = [json.loads(fintrace(jobs, "--format", "json", *FILES).stdout) for jobs in (1, 2)]
    assert docs[1]["summary"] == docs[0]["summary"]
    assert docs[1]["captures"] == docs[0]["captures"]
    assert docs[0]["summary"]["connections"] == len(docs[0]["connections"])


def test_warnings_as_one_process() -> None:
    regressions = CAPTURES / "regressions"
    files = [
        FILES[0],
        str(regressions / "gzip_cut_mid_stream.pcap.gz"),
        str(regressions / "pcapng_spb_too_short.pcapng"),
    ]
    one = same_as_one_process("--format", "jsonl", *files)
    assert one.stderr.count("fintrace: warning: ") == 2


# -- merged aggregates ---------------------------------------------------------


def summary_bytes(agg: Aggregator) -> bytes:
    # Bytes, not dicts: the order of keys (most_common ties) must match too.
    return orjson.dumps(agg.summary(), option=orjson.OPT_NON_STR_KEYS)


def per_file(paths: list[str]) -> tuple[Aggregator, list[list[Connection]]]:
    """The aggregator of a ``--separate`` run over ``paths``, and each file's connections."""
    run = analyze(AnalyzeOptions(paths=tuple(paths), separate=True))
    files: dict[str, list[Connection]] = defaultdict(list)
    for c in run.connections():
        files[c.capture].append(c)
    return run.aggregator, list(files.values())


def merged(options: AggregateOptions, groups: list[list[Connection]]) -> Aggregator:
    total = Aggregator(options)
    total.merge(Aggregator(options))  # an empty one changes nothing
    for group in groups:
        part = Aggregator(options)
        for c in group:
            part.add(c)
        total.merge(part)
    return total


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three captures of every close type, sharing hosts and services, with many examples each."""
    tmp = tmp_path_factory.mktemp("jobs")
    paths = []
    for seed in (1, 2, 3):
        argv = [
            *("--connections", "700", "--concurrency", "60", "--seed", str(seed)),
            *("--reuse", "0.1", "--reuse-gap", "0.05,30", "--midstream", "0.03"),
            *("--out-dir", str(tmp), "--name", f"gen{seed}"),
        ]
        generate.generate(generate.parse_args(argv))
        paths.append(str(tmp / f"gen{seed}.pcap"))
    return paths


def capture_groups(generated: list[str]) -> dict[str, list[str]]:
    closes = sorted(str(p) for p in CLOSES.glob("*.pcap"))
    return {
        "closes": closes,
        "closes-reversed": closes[::-1],
        "incidents": FILES,
        "generated": generated,
        "everything": [*generated, *FILES, *closes],
    }


@pytest.mark.parametrize(
    "group", ["closes", "closes-reversed", "incidents", "generated", "everything"]
)
def test_merged_files_give_the_summary_of_one_aggregator(group: str, generated: list[str]) -> None:
    whole, files = per_file(capture_groups(generated)[group])
    assert len(files) > 2
    assert summary_bytes(merged(whole.options, files)) == summary_bytes(whole)


def test_merge_anywhere_in_a_file(generated: list[str]) -> None:
    # Many examples per item with equal scores: ranks across the cut.
    whole, files = per_file(generated[:1])
    conns = files[0]
    n = len(conns)
    for cuts in ([1], [n // 2], [n // 3, n // 2, n - 1], list(range(50, n, 97))):
        bounds = [0, *cuts, n]
        groups = [conns[a:b] for a, b in itertools.pairwise(bounds)]
        assert summary_bytes(merged(whole.options, groups)) == summary_bytes(whole), cuts


def test_merge_a_host_that_resets_as_client_in_one_file_and_as_server_in_another() -> None:
    # No capture has one: made from two, the server's address made the client's.
    whole, files = per_file(
        [
            str(CLOSES / "reset_established_client.pcap"),
            str(CLOSES / "reset_established_server.pcap"),
        ]
    )
    by_client, by_server = files[0][0], files[1][0]
    assert (by_client.reset_by, by_server.reset_by) == ("client", "server")
    by_server = by_server.replace(server=Endpoint(by_client.client.ip, by_server.server.port))
    for groups, role in (
        ([[by_client], [by_server]], "both"),
        ([[by_server], [by_client, by_client]], "both"),
        ([[by_client], [by_client]], "client"),
        ([[by_server, by_client], [by_server]], "both"),
    ):
        one = Aggregator(whole.options)
        for c in (c for group in groups for c in group):
            one.add(c)
        assert one.summary()["resets"]["by_host"][0]["role"] == role
        assert summary_bytes(merged(whole.options, groups)) == summary_bytes(one)


def field_state(value: Any) -> bytes:
    return pickle.dumps(dict(value) if isinstance(value, defaultdict) else value)


def test_every_aggregate_field_is_in_use(generated: list[str]) -> None:
    # So that the summary comparisons above cover every field Aggregator
    # has: a field that merge() forgets changes some summary there.
    whole, _ = per_file(capture_groups(generated)["everything"])
    fresh = Aggregator(whole.options)
    unused = [
        name
        for name, value in whole.__getstate__().items()
        if name != "options" and field_state(value) == field_state(getattr(fresh, name))
    ]
    assert not unused


# -- the parallel run itself ---------------------------------------------------


def test_connections_through_workers_as_one_process() -> None:
    options = AnalyzeOptions(paths=tuple(FILES), separate=True)
    one = analyze(options)
    many = analyze(options, jobs=2)
    assert isinstance(many, ParallelRun)
    assert list(many.connections()) == list(one.connections())
    assert summary_bytes(many.aggregator) == summary_bytes(one.aggregator)
    assert [c.as_dict() for c in many.captures] == [c.as_dict() for c in one.captures]


def test_progress_advances_file_by_file() -> None:
    calls: list[tuple[int, int]] = []
    run = analyze(
        AnalyzeOptions(paths=tuple(FILES), separate=True),
        lambda done, total: calls.append((done, total)),
        jobs=2,
    )
    list(run.connections())
    sizes = [os.path.getsize(p) for p in FILES]
    assert calls == [(sum(sizes[: i + 1]), sum(sizes)) for i in range(len(sizes))]


@pytest.fixture
def tmpdir_watched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Temporary files go here, to be checked for leftovers."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def fail_in_worker(monkeypatch: pytest.MonkeyPatch, path: str, how: Any) -> None:
    """The worker analysing ``path`` does ``how(path)`` once it has read a connection.

    Only workers render parts (``PartWriter``); the parent only opens the files.
    """
    real = PartWriter.__call__

    def call(self: PartWriter, connections: Iterable[Connection], part: str) -> Any:
        rest = iter(connections)
        first = next(rest, None)
        if first is not None and first.capture == path:
            how(path)
        return real(self, itertools.chain(() if first is None else (first,), rest), part)

    monkeypatch.setattr(PartWriter, "__call__", call)


def damaged(path: str) -> None:
    raise CaptureError(path, "damaged in the middle")


def test_a_file_failing_in_its_worker_is_one_line_after_the_files_before(
    monkeypatch: pytest.MonkeyPatch, tmpdir_watched: Path
) -> None:
    before = fintrace(1, "--format", "jsonl", *FILES[:2])
    assert before.exit_code == 0
    assert len(before.stdout.splitlines()) == 2  # the first two files' connections
    fail_in_worker(monkeypatch, FILES[2], damaged)
    many = fintrace(2, "--format", "jsonl", *FILES)
    assert many.exit_code == 2
    assert many.stderr == f"fintrace: error: {FILES[2]}: damaged in the middle\n"
    assert many.stdout == before.stdout
    assert not list(tmpdir_watched.iterdir())
    assert not multiprocessing.active_children()


def test_a_killed_worker_is_one_line(monkeypatch: pytest.MonkeyPatch, tmpdir_watched: Path) -> None:
    fail_in_worker(monkeypatch, FILES[1], lambda path: os.kill(os.getpid(), signal.SIGKILL))
    result = fintrace(2, "--format", "json", *FILES)
    assert result.exit_code == 2
    assert result.stderr == (
        f"fintrace: error: {FILES[1]}: the process analysing it was killed (out of memory?)\n"
    )
    assert not list(tmpdir_watched.iterdir())


def test_a_bug_in_a_worker_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(path: str) -> None:
        raise ZeroDivisionError("a bug")

    fail_in_worker(monkeypatch, FILES[1], bug)
    result = fintrace(2, "--format", "jsonl", *FILES)
    assert isinstance(result.exception, RuntimeError)
    assert "ZeroDivisionError: a bug" in str(result.exception)


def test_interrupted_while_writing_stops_the_workers_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, tmpdir_watched: Path
) -> None:
    def interrupt(self: Splicer, path: str, listed: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Splicer, "add", interrupt)
    result = fintrace(2, "--format", "csv", *FILES)
    assert result.exit_code == 130
    assert result.stderr == "fintrace: interrupted\n"
    assert not list(tmpdir_watched.iterdir())
    assert not multiprocessing.active_children()


CTRL_C = r"""
import os, sys, time
from fintrace.cli import main
from fintrace.render.parts import PartWriter

real = PartWriter.__call__
def call(self, connections, path):
    os.write(1, b"reading\n")
    time.sleep(60)  # in a worker: only workers render parts
    return real(self, connections, path)
PartWriter.__call__ = call
main(["analyze", "--separate", "--jobs", "2", "--format", "jsonl", *sys.argv[1:]])
"""


def test_ctrl_c_is_one_line_and_stops_the_workers(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # A terminal sends Ctrl-C to the whole process group, workers included.
    p = subprocess.Popen(
        [sys.executable, "-c", CTRL_C, *FILES[:3]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "reading\n"  # a worker is reading
        time.sleep(0.2)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130
    assert err == "fintrace: interrupted\n"
    assert not list(tmp_path.iterdir())
