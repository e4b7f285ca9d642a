"""JSON document and JSON lines output (the public contract, TEARDOWN.md)."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Any, Final, TextIO

import orjson
from librt.strings import BytesWriter

from fintrace import COMPILED
from fintrace.aggregate import LazyList
from fintrace.model import Connection
from fintrace.pipeline import Run
from fintrace.render.jsonwriter import connection_bytes, write_connection

if TYPE_CHECKING:
    from collections.abc import Callable


_dumps: Final = orjson.dumps


def connection_dict(c: Connection) -> dict[str, Any]:
    """The connection as JSON data, field for field as TEARDOWN.md names them."""
    client = c.client
    server = c.server
    payload = c.payload_bytes
    fin_frames = c.fin_frames
    end_state = c.end_state
    reused = c.reused_tuple
    return {
        "stream": c.stream,
        "capture": c.capture,
        "client": {"ip": client.ip, "port": client.port},
        "server": {"ip": server.ip, "port": server.port},
        "roles_inferred": c.roles_inferred,
        "first_frame": c.first_frame,
        "last_frame": c.last_frame,
        "first_ts": c.first_ts,
        "last_ts": c.last_ts,
        "packets": c.packets,
        "payload_bytes": {"client": payload.client, "server": payload.server},
        "close_type": c.close_type,
        "active_closer": c.active_closer,
        "reset_by": c.reset_by,
        "reset_phase": c.reset_phase,
        "time_wait": c.time_wait,
        "fin_frames": {"client": fin_frames.client, "server": fin_frames.server},
        "rst_frame": c.rst_frame,
        "half_close_bytes": c.half_close_bytes,
        "close_wait_s": c.close_wait_s,
        "stuck": c.stuck,
        "final_ack_seen": c.final_ack_seen,
        "fin_retransmits": c.fin_retransmits,
        "end_state": {"client": end_state.client, "server": end_state.server},
        "transitions": [
            {"side": t.side, "state": t.state, "frame": t.frame, "ts": t.ts} for t in c.transitions
        ],
        "reused_tuple": None
        if reused is None
        else {"previous_stream": reused.previous_stream, "gap_s": reused.gap_s},
        "anomalies": c.anomalies,
        "community_id": c.community_id,
        "zeek_conn_state": c.zeek_conn_state,
        "last_capture": c.last_capture,
        "files": [
            {
                "capture": f.capture,
                "stream": f.stream,
                "first_frame": f.first_frame,
                "last_frame": f.last_frame,
                "packets": f.packets,
            }
            for f in c.files
        ],
        "rst_lost_bytes": c.rst_lost_bytes,
    }


def connection_json(conn: Connection) -> bytes:
    """The connection's JSON text, as the renderers write it."""
    return connection_bytes(conn) if COMPILED else _dumps(connection_dict(conn))


class JsonLinesRenderer:
    """One connection object per line, written as each connection finishes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # Bytes, gathered: not a str made and encoded again per connection.
        self.chunks = _Chunks(out)

    def begin(self, run: Run) -> None:
        pass

    def connection(self, conn: Connection) -> None:
        chunks = self.chunks
        chunks.connection(conn)
        chunks.write(b"\n")

    def flush(self) -> None:
        self.chunks.flush()

    def end(self, run: Run) -> None:
        self.chunks.flush()
        self.out.flush()


class JsonRenderer:
    """One document; connections are streamed into it as they finish."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.first = True
        self.chunks = _Chunks(out)

    def begin(self, run: Run) -> None:
        head = orjson.dumps(run.document_head()).decode()
        self.out.write(head[:-1] + ',"connections":[')

    def connection(self, conn: Connection) -> None:
        if not self.first:
            self.chunks.write(b",\n")
        else:
            self.chunks.write(b"\n")
            self.first = False
        self.chunks.connection(conn)

    def flush(self) -> None:
        self.chunks.flush()

    def end(self, run: Run) -> None:
        captures = [c.as_dict() for c in run.captures]
        # The summary of millions of connections holds an item per client and
        # service: those lists come as LazyLists, each item made, written and
        # dropped in turn, in chunks of bytes, never the whole text at once.
        tail = {"captures": captures, "summary": run.aggregator.summary(lazy=True)}
        chunks = self.chunks
        chunks.write(b"\n],")
        _stream_members(tail, chunks.write)  # the document's "{" is in begin()
        chunks.write(b"}\n")
        chunks.flush()
        self.out.flush()


def stream_json(value: Any, write: Callable[[bytes], object]) -> None:
    """Write ``value`` as ``orjson.dumps(value, option=OPT_NON_STR_KEYS)`` would, byte
    for byte, but a :class:`~fintrace.aggregate.LazyList` one item at a time."""
    if isinstance(value, dict):
        write(b"{")
        _stream_members(value, write)
        write(b"}")
    elif isinstance(value, LazyList):
        write(b"[")
        for i, item in enumerate(value):
            if i:
                write(b",")
            write(_dumps(item, option=orjson.OPT_NON_STR_KEYS))
        write(b"]")
    else:
        write(_dumps(value, option=orjson.OPT_NON_STR_KEYS))


def _stream_members(value: dict[Any, Any], write: Callable[[bytes], object]) -> None:
    """The members of a JSON object, without its braces."""
    for i, (k, v) in enumerate(value.items()):
        if i:
            write(b",")
        # A key as orjson writes it in an object (an enum by its value).
        write(_dumps({k: 0}, option=orjson.OPT_NON_STR_KEYS)[1:-3])
        write(b":")
        stream_json(v, write)


class _Chunks:
    """Bytes gathered into writes of about 64 KiB to a text stream (larger ones cost memory: freed
    pieces of a megabyte fragment the heap)."""

    LIMIT = 1 << 16

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.buf = BytesWriter()

    def write(self, data: bytes) -> None:
        buf = self.buf
        buf.write(data)
        if len(buf) >= self.LIMIT:
            self.flush()

    def connection(self, conn: Connection) -> None:
        """The connection's JSON object, as :func:`connection_dict` gives it."""
        if COMPILED:
            # The same bytes, written straight from the record (render/jsonwriter).
            write_connection(self.buf, conn)
        else:
            # As Python, orjson's one call into C is the quicker.
            self.buf.write(_dumps(connection_dict(conn)))

    def flush(self) -> None:
        buf = self.buf
        if len(buf):
            _write_bytes(self.out, memoryview(buf.getvalue()))
            buf.truncate(0)


def _write_bytes(out: TextIO, data: memoryview) -> None:
    """Write UTF-8 ``data`` to a text stream, straight to its bytes when they are UTF-8 too."""
    buffer = getattr(out, "buffer", None)
    encoding = getattr(out, "encoding", None) or "ascii"
    if buffer is None or codecs.lookup(encoding).name != "utf-8":
        out.write(bytes(data).decode())
        return
    out.flush()
    buffer.write(data)
