"""CSV output: one row per connection, columns in a fixed, documented order."""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from fintrace.model import Connection
    from fintrace.pipeline import Run

#: The column order is part of the output contract; append, never reorder.
COLUMNS = (
    "stream",
    "capture",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "roles_inferred",
    "first_frame",
    "last_frame",
    "first_ts",
    "last_ts",
    "packets",
    "client_payload_bytes",
    "server_payload_bytes",
    "close_type",
    "active_closer",
    "reset_by",
    "reset_phase",
    "time_wait",
    "client_fin_frame",
    "server_fin_frame",
    "rst_frame",
    "half_close_bytes",
    "close_wait_s",
    "stuck",
    "final_ack_seen",
    "fin_retransmits",
    "client_end_state",
    "server_end_state",
    "reused_previous_stream",
    "reused_gap_s",
    "anomalies",
    "community_id",
    "zeek_conn_state",
    "rst_lost_bytes",
    "transitions",
)


def _cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def row(c: Connection) -> list[object]:
    ru = c.reused_tuple
    values: list[object] = [
        c.stream,
        c.capture,
        c.client.ip,
        c.client.port,
        c.server.ip,
        c.server.port,
        c.roles_inferred,
        c.first_frame,
        c.last_frame,
        f"{c.first_ts:.6f}",
        f"{c.last_ts:.6f}",
        c.packets,
        c.payload_bytes.client,
        c.payload_bytes.server,
        c.close_type,
        c.active_closer,
        c.reset_by,
        c.reset_phase,
        c.time_wait,
        c.fin_frames.client,
        c.fin_frames.server,
        c.rst_frame,
        c.half_close_bytes,
        None if c.close_wait_s is None else f"{c.close_wait_s:.6f}",
        c.stuck,
        c.final_ack_seen,
        c.fin_retransmits,
        c.end_state.client,
        c.end_state.server,
        ru.previous_stream if ru else None,
        f"{ru.gap_s:.6f}" if ru else None,
        ";".join(c.anomalies),
        c.community_id,
        c.zeek_conn_state,
        c.rst_lost_bytes,
        ";".join(f"{t.side}:{t.state}@{t.frame}" for t in c.transitions),
    ]
    return [_cell(v) for v in values]


class CsvRenderer:
    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.out = out

    def begin(self, run: Run) -> None:
        self.writer.writerow(COLUMNS)

    def connection(self, conn: Connection) -> None:
        self.writer.writerow(row(conn))

    def flush(self) -> None:
        self.out.flush()

    def end(self, run: Run) -> None:
        self.out.flush()
