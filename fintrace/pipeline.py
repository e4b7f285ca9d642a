"""Wire the steps together: read → decode → flow table → tracker → classify → aggregate.

:func:`analyze` is the one core call the commands make. It returns a
:class:`Run`: iterating :meth:`Run.connections` drives the whole pipeline
and yields each :class:`~fintrace.model.Connection` as it finishes, so output
can be written while the capture is still being read; afterwards
:attr:`Run.captures` and :meth:`Run.summary` describe the whole run.
"""

from __future__ import annotations

import gc
import multiprocessing
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fintrace import __version__
from fintrace.aggregate import AggregateOptions, Aggregator
from fintrace.classify import classify, roles
from fintrace.decode import SUPPORTED_LINKTYPES, DecodeStats, segments
from fintrace.errors import FintraceError
from fintrace.flowtable import FlowTable
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

if TYPE_CHECKING:
    from fintrace.tracker import Half, Tracker

SCHEMA_VERSION = "1.0"
ONE_SIDED = str(Anomaly.ONE_SIDED)
CLIENT = Role.CLIENT
SERVER = Role.SERVER
_tuple_new = tuple.__new__


#: ``progress(bytes_done, bytes_total)``
Progress = Callable[[int, int], None]


#: Seconds of packet time a closed or reset connection waits for late segments
#: (a retransmitted FIN whose ACK was lost, a RST after the close) before it
#: is reported and forgotten: 30 s hold the first seven retransmissions of a
#: FIN at Linux's minimum RTO (0.2 s, doubling: 25.4 s in all); a RST answers
#: within a round trip. Its 4-tuple is remembered for 2×MSL (numbering,
#: reused_tuple) at a few dozen bytes.
DEFAULT_LINGER = 30.0


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
#: keyed by their addresses) share one string per address. Cleared when full:
#: a capture of countless addresses costs no more than without it.
_IP_TEXT: dict[bytes, str] = {}
_IP_TEXT_MAX = 1 << 16


def ip_text(raw: bytes) -> str:
    """The address as text; one shared string per address."""
    text = _IP_TEXT.get(raw)
    if text is None:
        if len(_IP_TEXT) >= _IP_TEXT_MAX:
            _IP_TEXT.clear()
        af = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
        text = _IP_TEXT[raw] = socket.inet_ntop(af, raw)
    return text


def endpoint(half: Half) -> Endpoint:
    key = half.key
    n = 4 if len(key) == 12 else 16
    return Endpoint(ip_text(key[:n]), (key[2 * n] << 8) | key[2 * n + 1])


def _release(conn: Tracker) -> None:
    """Break the tracker's reference cycles (side → connection, side → peer).

    The collector is paused while the pipeline runs, so a finished
    connection is freed by reference counting alone, at once.
    """
    for half in (conn.a, conn.b):
        del half.conn
        del half.peer


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
        # connections break their own cycles (_release), so nothing piles up.
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
        return FlowTable(
            linger=o.linger_s, remember=o.remember_s, numbering=o.numbering, trace=o.trace_streams
        )

    def _file(self, table: FlowTable, cap: CaptureFile, index: int) -> Iterator[Connection]:
        info = CaptureInfo(cap.path, cap.format, cap.compression, cap.size, cap.linktypes)
        self.captures.append(info)
        self._names = [c.file for c in self.captures]
        table.begin_file(index)
        skipped: Counter[str] = Counter()
        frags = Reassembler(skipped)
        stats = DecodeStats(skipped)
        records = cap.records() if self._progress is None else self._with_progress(cap)
        for conn in table.consume(segments(records, stats, frags)):
            yield self._connection(conn, table.now)
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

    def _with_progress(self, cap: CaptureFile) -> Iterator[tuple[float, bytes, int, int, int, int]]:
        if self._progress is None:
            yield from cap.records()
            return
        done_before = sum(c.size_bytes for c in self.captures[:-1])
        total = self.total_bytes
        report = self._progress
        step = 0
        for rec in cap.records():
            step += 1
            if step >= 65536:
                step = 0
                report(done_before + cap.position(), total)
            yield rec
        report(done_before + cap.size, total)

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
        if conn.anomalies is None:
            anomalies: tuple[str, ...] = (ONE_SIDED,) if v.one_sided else ()
        else:
            anomalies = tuple(conn.anomalies) + ((ONE_SIDED,) if v.one_sided else ())
        names = self._names
        if len(conn.file_spans) == 1 and not self.options.separate:
            s = conn.file_spans[0]
            name = names[s[0]]
            files: tuple[FileSpan, ...] = (
                FileSpan(name, s[1], s[2], conn.last_frame, conn.packets),
            )
        else:
            files = tuple(
                FileSpan(self._capture_name(s[0]), s[1], s[2], s[3], s[4]) for s in conn.spans()
            )
        transitions = tuple(
            [
                _tuple_new(Transition, (CLIENT if h is client else SERVER, state, frame, ts))
                for h, state, frame, ts in conn.transitions
            ]
        )
        c = Connection(
            conn.stream,
            files[0].capture,
            Endpoint(ip_text(ck[:n]), cport),
            Endpoint(ip_text(ck[n : 2 * n]), sport),
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
            None if conn.reuse is None else Reuse(*conn.reuse),
            anomalies,
            community_id(ck[:n], ck[n : 2 * n], cport, sport),
            zeek_conn_state(conn),
            files[-1].capture,
            files,
            conn.rst_lost if v.reset_by is not None else 0,
        )
        self.aggregator.add(c)
        if conn.trace is not None:
            self.traces[conn.stream] = conn
        else:
            _release(conn)
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


def _analyze_one(args: tuple[AnalyzeOptions, str]) -> tuple[list[Connection], CaptureInfo]:
    """Worker of :class:`ParallelRun`: one file, start to end, in its own process."""
    options, path = args
    run = Run(replace(options, paths=(path,)))
    conns = list(run.connections())
    return conns, run.captures[0]


class ParallelRun(Run):
    """Files analysed in parallel processes; connections come file by file, in order."""

    def __init__(self, options: AnalyzeOptions, progress: Progress | None, *, jobs: int) -> None:
        super().__init__(options, progress)
        self.jobs = jobs
        for f in self._files:
            f.close()

    def connections(self) -> Iterator[Connection]:
        work = [(self.options, f.path) for f in self._files]
        total = self.total_bytes
        done = 0
        ctx = multiprocessing.get_context("fork")
        gc_was_enabled = gc.isenabled()
        gc.disable()  # unpickling a file's connections would trigger it thousands of times
        with ctx.Pool(min(self.jobs, len(work))) as pool:
            for (conns, info), f in zip(pool.imap(_analyze_one, work), self._files, strict=True):
                self.captures.append(info)
                add = self.aggregator.add
                for c in conns:
                    add(c)
                    yield c
                done += f.size
                if self._progress is not None:
                    self._progress(done, total)
        if gc_was_enabled:
            gc.enable()


def skipped_loss(skipped: dict[str, int]) -> int:
    """Packets skipped for a reason that is a loss (fragments that were used are not)."""
    return sum(v for k, v in skipped.items() if SkipReason(k) not in NOT_A_LOSS)
