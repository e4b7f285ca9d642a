"""Wire the steps together: read → decode → flow table → tracker → classify → aggregate.

:func:`analyze` is the one core call the commands make. It returns a
:class:`Run`: iterating :meth:`Run.connections` drives the whole pipeline
and yields each :class:`~fintrace.model.Connection` as it finishes, so output
can be written while the capture is still being read; afterwards
:attr:`Run.captures` and :meth:`Run.summary` describe the whole run.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import socket
import traceback
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, TypeVar

from fintrace import __version__
from fintrace.aggregate import AggregateOptions, Aggregator
from fintrace.classify import classify, roles
from fintrace.decode import SUPPORTED_LINKTYPES, Decoder, DecodeStats
from fintrace.errors import FintraceError
from fintrace.flowtable import FREEZE_AFTER, FlowTable
from fintrace.interop import community_id, zeek_conn_state
from fintrace.model import (
    NOT_A_LOSS,
    Anomaly,
    Connection,
    Endpoint,
    FileSpan,
    Reuse,
    Role,
    SideCounts,
    SideFrames,
    SideStates,
    SkipReason,
    Transition,
)
from fintrace.reader import CaptureFile, first_timestamp
from fintrace.reassembly import Reassembler
from fintrace.tracker import Tracker, release

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

T = TypeVar("T")

SCHEMA_VERSION = "1.0"
ONE_SIDED: Final = str(Anomaly.ONE_SIDED)
CLIENT: Final = Role.CLIENT
SERVER: Final = Role.SERVER


#: ``progress(bytes_done, bytes_total)``
Progress = Callable[[int, int], None]


#: Seconds of packet time a closed or reset connection waits for late segments
#: (a retransmitted FIN whose ACK was lost, a RST after the close) before it
#: is reported and forgotten: 30 s hold the first seven retransmissions of a
#: FIN at Linux's minimum RTO (0.2 s, doubling: 25.4 s in all); a RST answers
#: within a round trip. Its 4-tuple is remembered for 2×MSL (numbering,
#: reused_tuple) at a few dozen bytes.
DEFAULT_LINGER: Final = 30.0


@dataclass(frozen=True, slots=True)
class AnalyzeOptions:
    """Everything a run depends on; the CLI builds one from its options."""

    paths: tuple[str, ...]
    separate: bool = False
    stuck_after: float = 60.0
    msl: float = 30.0
    #: Seconds of packet time a finished connection waits for late segments
    #: before it is reported; None means :data:`DEFAULT_LINGER` (at most 2×MSL).
    linger: float | None = None
    numbering: str = "wireshark-4.4"
    ephemeral_ports: int = 28232
    #: Record every segment of these streams (of the first file), for ``show``.
    trace_streams: frozenset[int] | None = None
    #: Seconds of packet time an open connection stays idle before it is kept
    #: as bytes (tests set 0: freeze at every chance).
    freeze_after: float = FREEZE_AFTER

    @property
    def linger_s(self) -> float:
        return min(DEFAULT_LINGER, 2 * self.msl) if self.linger is None else self.linger

    @property
    def remember_s(self) -> float:
        """Seconds a finished connection's 4-tuple is remembered: 2×MSL, the TIME_WAIT span."""
        return 2 * self.msl


@dataclass(slots=True)
class CaptureInfo:
    """What one input file held; ``captures[]`` in the JSON document."""

    file: str
    format: str
    compression: str | None
    size_bytes: int
    linktypes: list[int]
    packets: int = 0
    tcp_packets: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    first_ts: float | None = None
    last_ts: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "compression": self.compression,
            "size_bytes": self.size_bytes,
            "linktypes": self.linktypes,
            "packets": self.packets,
            "tcp_packets": self.tcp_packets,
            "skipped": self.skipped,
            "truncated": self.truncated,
            "warnings": self.warnings,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }


#: Address strings already made, so that connections (and the aggregates
#: keyed by their addresses) share one string per address: a lookup in the
#: aggregates then finds its key by identity, without comparing the text of a
#: string made long before. Cleared when full: a capture of countless
#: addresses costs no more than without it.
_IP_TEXT: Final[dict[bytes, str]] = {}
_IP_TEXT_MAX: Final = 1 << 16


def ip_text(raw: bytes) -> str:
    """The address as text; one shared string per address."""
    text = _IP_TEXT.get(raw)
    if text is None:
        if len(_IP_TEXT) >= _IP_TEXT_MAX:
            _IP_TEXT.clear()
        af = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        text = _IP_TEXT[raw] = socket.inet_ntop(af, raw)
    return text


class Run:
    """One analysis; iterate :meth:`connections` once, then read the rest."""

    def __init__(self, options: AnalyzeOptions, progress: Progress | None = None) -> None:
        if not options.paths:
            raise FintraceError("no capture files given")
        self.options = options
        self._progress = progress
        self.aggregator = Aggregator(
            AggregateOptions(
                msl=options.msl,
                ephemeral_ports=options.ephemeral_ports,
                stuck_after=options.stuck_after,
            )
        )
        self.captures: list[CaptureInfo] = []
        self._files = self._open_all(options.paths)
        self.traces: dict[int, Tracker] = {}
        #: The flow table of each pass (one, or one per file with ``separate``).
        self.tables: list[FlowTable] = []
        self._names: list[str] = []
        self.end_ts = 0.0

    def _open_all(self, paths: tuple[str, ...]) -> list[CaptureFile]:
        files: list[CaptureFile] = []
        try:
            for p in paths:
                files.append(CaptureFile(p))
        except FintraceError:
            for f in files:
                f.close()
            raise
        if len(files) > 1 and not self.options.separate:
            # Rotated ring buffers: analyse in the time order of first packets.
            firsts = {}
            for f in files:
                t = first_timestamp(f.path)
                firsts[f.path] = t if t is not None else float("-inf")
            files.sort(key=lambda f: firsts[f.path])
        return files

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self._files)

    def connections(self) -> Iterator[Connection]:
        """Run the pipeline; yield connections as they finish."""
        gc_was_enabled = gc.isenabled()
        # Pausing the collector saves time in the hot loop; finished
        # connections break their own cycles (tracker.release), so nothing piles up.
        gc.disable()
        try:
            if self.options.separate:
                for f in self._files:
                    table = self._table()
                    yield from self._file(table, f, 0)
                    yield from self._finish(table)
            else:
                table = self._table()
                for i, f in enumerate(self._files):
                    yield from self._file(table, f, i)
                yield from self._finish(table)
        finally:
            for f in self._files:
                f.close()
            if gc_was_enabled:
                gc.enable()

    def _table(self) -> FlowTable:
        o = self.options
        table = FlowTable(
            linger=o.linger_s,
            remember=o.remember_s,
            numbering=o.numbering,
            trace=o.trace_streams,
            freeze_after=o.freeze_after,
        )
        self.tables.append(table)
        return table

    def _file(self, table: FlowTable, cap: CaptureFile, index: int) -> Iterator[Connection]:
        info = CaptureInfo(cap.path, cap.format, cap.compression, cap.size, cap.linktypes)
        self.captures.append(info)
        self._names = [c.file for c in self.captures]
        table.begin_file(index)
        skipped: Counter[str] = Counter()
        frags = Reassembler(skipped)
        stats = DecodeStats(skipped)
        # One loop from the file's bytes to the table: the reader hands each
        # record to the decoder, the decoder each segment to the table; between
        # chunks of the file, the connections that finished are given out.
        decoder = Decoder(table, stats, frags)
        report = self._progress
        done_before = sum(c.size_bytes for c in self.captures[:-1])
        total = self.total_bytes
        try:
            more = True
            while more:
                more = cap.pump(decoder)
                for conn, now in table.take_finished():
                    yield self._connection(conn, now)
                if report is not None:
                    report(done_before + (cap.position() if more else cap.size), total)
        finally:
            decoder.finish()
        frags.finish()
        info.packets = stats.frames
        info.first_ts = stats.first_ts
        info.last_ts = stats.last_ts
        info.linktypes = list(cap.linktypes)
        unsupported = [lt for lt in cap.linktypes if lt not in SUPPORTED_LINKTYPES]
        if unsupported:
            info.warnings.append(
                "link type(s) " + ", ".join(map(str, unsupported)) + " are not decoded"
            )
        info.skipped = {str(k): v for k, v in sorted(skipped.items()) if v}
        info.tcp_packets = info.packets - sum(info.skipped.values())
        info.truncated = cap.truncated
        info.warnings.extend(cap.warnings)
        late = table.late.pop(index, 0)
        if late:
            info.warnings.append(
                f"{late} segment(s) came more than {self.options.linger_s:g} s after their "
                "connection ended and are not in its verdict (--linger waits longer)"
            )
        if stats.last_ts is not None:
            self.end_ts = max(self.end_ts, stats.last_ts)

    def _finish(self, table: FlowTable) -> Iterator[Connection]:
        # The capture ends at its last packet; table.now follows only the
        # slow path, and a plain ACK or data segment may have come later.
        last = self.captures[-1].last_ts if self.options.separate else self.end_ts
        end = table.now if last is None else max(table.now, last)
        for conn in table.drain():
            yield self._connection(conn, end)

    def _capture_name(self, index: int) -> str:
        if self.options.separate:
            return self.captures[-1].file
        return self.captures[index].file

    def _connection(self, conn: Tracker, end_ts: float) -> Connection:
        r = roles(conn)
        v = classify(conn, end_ts=end_ts, stuck_after=self.options.stuck_after, r=r)
        client, server = r.client, r.server
        ck = client.key
        n = 4 if len(ck) == 12 else 16
        cport = (ck[2 * n] << 8) | ck[2 * n + 1]
        sport = (ck[2 * n + 2] << 8) | ck[2 * n + 3]
        caddr = ck[:n]
        saddr = ck[n : 2 * n]
        if conn.anomalies is None:
            anomalies: tuple[str, ...] = (ONE_SIDED,) if v.one_sided else ()
        else:
            anomalies = tuple(conn.anomalies) + ((ONE_SIDED,) if v.one_sided else ())
        names = self._names
        if conn.file_spans is None and not self.options.separate:
            name = names[conn.capture]
            files: tuple[FileSpan, ...] = (
                FileSpan(name, conn.stream, conn.first_frame, conn.last_frame, conn.packets),
            )
        else:
            files = tuple(
                FileSpan(self._capture_name(s[0]), s[1], s[2], s[3], s[4]) for s in conn.spans()
            )
        reuse = conn.reuse
        if client is conn.a:
            # The tracker's records name side a the client: they are the report's.
            transitions = tuple(conn.transitions)
        else:
            transitions = tuple(
                [
                    Transition(SERVER if t.side is CLIENT else CLIENT, t.state, t.frame, t.ts)
                    for t in conn.transitions
                ]
            )
        c = Connection(
            conn.stream,
            files[0].capture,
            Endpoint(ip_text(caddr), cport),
            Endpoint(ip_text(saddr), sport),
            r.inferred,
            conn.first_frame,
            conn.last_frame,
            conn.first_ts,
            conn.last_ts,
            conn.packets,
            SideCounts(client.bytes, server.bytes),
            v.close_type,
            v.active_closer,
            v.reset_by,
            v.reset_phase,
            v.time_wait,
            SideFrames(client.fin_frame or None, server.fin_frame or None),
            (conn.rst_frame or None) if v.reset_by is not None else None,
            v.half_close_bytes,
            v.close_wait_s,
            v.stuck,
            v.final_ack_seen,
            v.fin_retransmits,
            SideStates(client.state, server.state),
            transitions,
            None if reuse is None else Reuse(reuse[0], reuse[1]),
            anomalies,
            community_id(caddr, saddr, cport, sport),
            zeek_conn_state(conn),
            files[-1].capture,
            files,
            conn.rst_lost if v.reset_by is not None else 0,
        )
        self.aggregator.add(c)
        if conn.trace is not None:
            self.traces[conn.stream] = conn
        else:
            release(conn)
        return c

    def summary(self) -> dict[str, Any]:
        return self.aggregator.summary()

    def document_head(self) -> dict[str, Any]:
        return {"fintrace_version": __version__, "schema_version": SCHEMA_VERSION}


def analyze(options: AnalyzeOptions, progress: Progress | None = None, *, jobs: int = 1) -> Run:
    """Open every input (raising :class:`FintraceError` for a bad one) and return the run.

    ``jobs`` > 1 analyses the files in that many processes; it needs
    ``separate`` (a continuous capture over several files is one connection
    table, which one process must hold).
    """
    if jobs > 1 and len(options.paths) > 1:
        if not options.separate:
            raise FintraceError(
                "--jobs needs --separate: files analysed as one continuous capture "
                "share one connection table"
            )
        return ParallelRun(options, progress, jobs=jobs)
    return Run(options, progress)


#: ``render_part(connections, path)``, called in a worker process with one
#: file's connections: writes what the output shows of them to the new file
#: ``path`` (or nothing) and returns what else the parent needs of them,
#: small and picklable. It reaches the worker by fork, not pickled.
RenderPart = Callable[[Iterator[Connection], str], T]


class Part(NamedTuple, Generic[T]):
    """One file of a :class:`ParallelRun`, as its worker process left it."""

    #: The file ``render_part`` wrote, if it wrote one; removed once the
    #: next part is asked for.
    path: str
    #: What ``render_part`` returned.
    value: T
    capture: CaptureInfo


class ParallelRun(Run):
    """Files analysed in parallel processes, each on its own (``--separate``).

    Each worker process analyses one file, start to end, as a one-file
    :class:`Run`, and renders its connections itself (:meth:`parts`): only
    what the output shows of them, the file's :class:`CaptureInfo` and its
    aggregates come back, and the parent merges the aggregates in file order.
    """

    def __init__(self, options: AnalyzeOptions, progress: Progress | None, *, jobs: int) -> None:
        super().__init__(options, progress)
        self.jobs = jobs

    def parts(self, render_part: RenderPart[T]) -> Generator[Part[T], None, None]:
        """Each file's part, in file order, as soon as that file is done.

        Files are analysed ``jobs`` at a time, each in a new process (its
        memory is that of a one-file run), started in file order; a worker
        reads the file as the parent opened it (a pipe is read once). Parts are
        written to a temporary directory that is removed, and the workers
        stopped, when the iterator ends or is closed: close it
        (``contextlib.closing``). :attr:`captures` and the summary grow file by
        file. A file that cannot be analysed raises :class:`FintraceError` at
        its turn, after the parts of the files before it.
        """
        total = self.total_bytes
        done = 0
        gc_was_enabled = gc.isenabled()
        # Unpickling a file's aggregates would trigger the collector thousands of times.
        gc.disable()
        import tempfile  # here: --jobs only, and 3 ms of every start

        try:
            with tempfile.TemporaryDirectory(prefix="fintrace-") as tmp, _Workers(self.jobs) as w:
                tasks = [
                    _Task(self.options, f, os.path.join(tmp, str(i)), render_part)
                    for i, f in enumerate(self._files)
                ]
                for i, f in enumerate(self._files):
                    task = tasks[i]
                    value, info, aggregator = _result(task, w.finish(i, tasks))
                    self.captures.append(info)
                    self.aggregator.merge(aggregator)
                    if info.last_ts is not None:
                        self.end_ts = max(self.end_ts, info.last_ts)
                    done += f.size
                    if self._progress is not None:
                        self._progress(done, total)
                    try:
                        yield Part(task.part_path, value, info)
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(task.part_path)
        finally:
            for f in self._files:
                f.close()
            if gc_was_enabled:
                gc.enable()

    def connections(self) -> Iterator[Connection]:
        """The connections of every file, in file order, through the workers' part files."""
        with contextlib.closing(self.parts(_pickle_connections)) as parts:
            for part in parts:
                with open(part.path, "rb") as f:
                    while True:
                        try:
                            batch: list[Connection] = pickle.load(f)
                        except EOFError:
                            break
                        yield from batch


class _Task(NamedTuple, Generic[T]):
    """One file for a worker; the worker inherits it (fork): nothing is pickled."""

    options: AnalyzeOptions
    #: Opened by the parent, read by the worker.
    capture: CaptureFile
    #: The worker writes ``<prefix>.part`` (render_part's) and ``<prefix>.result``.
    prefix: str
    render_part: RenderPart[T]

    @property
    def capture_path(self) -> str:
        return self.capture.path

    @property
    def part_path(self) -> str:
        return self.prefix + ".part"

    @property
    def result_path(self) -> str:
        return self.prefix + ".result"


class _Workers:
    """At most ``jobs`` worker processes at once, one per file, started in file order."""

    def __init__(self, jobs: int) -> None:
        # Imported here: --jobs only, and 10 ms of every start.
        import multiprocessing
        import multiprocessing.connection

        self.jobs = jobs
        self._ctx = multiprocessing.get_context("fork")
        self._wait = multiprocessing.connection.wait
        self._running: dict[int, BaseProcess] = {}
        self._exitcodes: dict[int, int] = {}
        self._started = 0

    def finish(self, index: int, tasks: list[_Task[T]]) -> int:
        """Wait for the worker of ``tasks[index]`` (keeping ``jobs`` running); its exit code."""
        while index not in self._exitcodes:
            while self._started < len(tasks) and len(self._running) < self.jobs:
                self._start(self._started, tasks[self._started])
                self._started += 1
            self._wait([p.sentinel for p in self._running.values()])
            for i, p in list(self._running.items()):
                if p.exitcode is not None:
                    p.join()
                    self._exitcodes[i] = p.exitcode
                    del self._running[i]
        return self._exitcodes.pop(index)

    def _start(self, index: int, task: _Task[T]) -> None:
        p = self._ctx.Process(target=_work, args=(task,), daemon=True)
        # Ctrl-C stays blocked until the worker ignores it: the parent stops the workers.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._running[index] = p
        task.capture.close()  # the worker has its own copy

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self._running.values():
            p.terminate()
        for p in self._running.values():
            p.join()
        self._running.clear()


def _work(task: _Task[Any]) -> None:
    """A worker process: analyse one file, leave what the parent needs in files."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    result: tuple[str, Any]
    try:
        result = ("ok", _analyze_one(task))
    except FintraceError as exc:
        # Only the message crosses back: a subclass's arguments may not rebuild it.
        result = ("error", str(exc))
    except OSError as exc:
        # The reader turns its own errors into FintraceError: this is the part file.
        result = (
            "error",
            f"{task.part_path}: cannot write the output of {task.capture_path} "
            f"({exc.strerror or exc})",
        )
    except Exception:  # a bug: the parent raises it with this traceback
        result = ("crash", traceback.format_exc())
    with open(task.result_path + ".tmp", "wb") as f:
        pickle.dump(result, f, pickle.HIGHEST_PROTOCOL)
    os.replace(task.result_path + ".tmp", task.result_path)


def _analyze_one(task: _Task[T]) -> tuple[T, CaptureInfo, Aggregator]:
    run = _FileRun(task.options, task.capture)
    conns = run.connections()
    value = task.render_part(conns, task.part_path)
    for _ in conns:  # whatever render_part left: the aggregates need every connection
        pass
    return value, run.captures[0], run.aggregator


class _FileRun(Run):
    """A worker's run: one file, as the parent opened it (fork copied it here)."""

    def __init__(self, options: AnalyzeOptions, capture: CaptureFile) -> None:
        self._capture = capture
        super().__init__(replace(options, paths=(capture.path,)))

    def _open_all(self, paths: tuple[str, ...]) -> list[CaptureFile]:
        return [self._capture]


def _result(task: _Task[T], exitcode: int) -> tuple[T, CaptureInfo, Aggregator]:
    """What ``task``'s worker left, or the error it met."""
    try:
        with open(task.result_path, "rb") as f:
            kind, value = pickle.load(f)
    except FileNotFoundError:
        if exitcode == -signal.SIGKILL:
            how = "was killed (out of memory?)"
        elif exitcode < 0:
            how = f"was killed by signal {-exitcode}"
        else:
            how = f"ended without a result (exit status {exitcode})"
        raise FintraceError(f"{task.capture_path}: the process analysing it {how}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(task.result_path)
    if kind == "error":
        raise FintraceError(value)
    if kind == "crash":
        raise RuntimeError(f"analysing {task.capture_path} failed in a worker process:\n{value}")
    return value  # type: ignore[no-any-return]


#: Connections per pickle in :func:`_pickle_connections`: one memo per batch.
_BATCH = 1024


def _pickle_connections(conns: Iterator[Connection], path: str) -> None:
    with open(path, "wb") as f:
        batch: list[Connection] = []
        for c in conns:
            batch.append(c)
            if len(batch) == _BATCH:
                pickle.dump(batch, f, pickle.HIGHEST_PROTOCOL)
                batch = []
        pickle.dump(batch, f, pickle.HIGHEST_PROTOCOL)


def skipped_loss(skipped: dict[str, int]) -> int:
    """Packets skipped for a reason that is a loss (fragments that were used are not)."""
    return sum(v for k, v in skipped.items() if SkipReason(k) not in NOT_A_LOSS)
