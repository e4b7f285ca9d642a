"""The terminal report: summary tables, then one row per connection."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from fintrace.model import CloseType

if TYPE_CHECKING:
    from rich.console import Console

    from fintrace.model import Connection
    from fintrace.pipeline import Run

#: Colour per close type: red for trouble, yellow for things to look at.
STYLE = {
    CloseType.REFUSED: "red",
    CloseType.RESET: "red",
    CloseType.CLOSE_WAIT: "yellow",
    CloseType.UNACKED_FIN: "yellow",
    CloseType.ATTEMPT: "yellow",
    CloseType.SIMULTANEOUS: "cyan",
    CloseType.HALF_CLOSE: "cyan",
    CloseType.PIGGYBACKED: "green",
    CloseType.GRACEFUL: "green",
    CloseType.OPEN: "blue",
}


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class TableRenderer:
    """Rich tables on a console; connections are kept (up to ``limit``) to sort them."""

    def __init__(self, console: Console, *, limit: int | None = 200) -> None:
        self.console = console
        self.limit = limit
        self.rows: list[Connection] = []
        self.shown = 0
        self.total = 0

    def begin(self, run: Run) -> None:
        pass

    def connection(self, conn: Connection) -> None:
        self.total += 1
        if self.limit is None or len(self.rows) < self.limit:
            self.rows.append(conn)

    def end(self, run: Run) -> None:
        c = self.console
        self._overview(run)
        self._summary(run)
        from fintrace.findings import findings
        from fintrace.render.findings_view import render_findings

        render_findings(c, findings(run.summary(), run.captures))
        self._connections()

    def _overview(self, run: Run) -> None:
        t = Table(title="Captures", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("file", "format", "packets", "tcp", "first packet (UTC)", "span", "skipped"):
            t.add_column(col, justify="right" if col in ("packets", "tcp") else "left")
        for cap in run.captures:
            span = (
                (cap.last_ts - cap.first_ts)
                if cap.first_ts is not None and cap.last_ts is not None
                else None
            )
            skipped = ", ".join(f"{k} {v}" for k, v in cap.skipped.items()) or "none"
            fmt = cap.format + (f"+{cap.compression}" if cap.compression else "")
            t.add_row(
                cap.file,
                fmt,
                str(cap.packets),
                str(cap.tcp_packets),
                when(cap.first_ts),
                duration(span),
                skipped,
            )
        self.console.print(t)
        for cap in run.captures:
            for w in cap.warnings:
                self.console.print(Text(f"warning: {cap.file}: {w}", style="yellow"))
        self.console.print()

    def _summary(self, run: Run) -> None:
        s = run.summary()
        total = s["connections"]
        t = Table(
            title=f"Connections: {total}", title_justify="left", show_edge=False, pad_edge=False
        )
        t.add_column("close type")
        t.add_column("count", justify="right")
        t.add_column("share", justify="right")
        for kind in CloseType:
            entry = s["close_types"][kind.value]
            if entry["count"]:
                t.add_row(
                    Text(kind.value, style=STYLE[kind]),
                    str(entry["count"]),
                    f"{entry['share'] * 100:.1f}%",
                )
        self.console.print(t)
        ac = s["active_closer"]
        tw = s["time_wait"]["holders"]
        self.console.print(
            f"Active closer: client {ac['client']}, server {ac['server']}, "
            f"both {ac['both']}, none {ac['none']}.  "
            f"TIME_WAIT held by: client {tw['client']}, server {tw['server']}, "
            f"both {tw['both']}."
        )
        self.console.print()

    def _connections(self) -> None:
        if not self.rows:
            return
        rows = sorted(self.rows, key=lambda r: (r.capture, r.stream))
        multi = len({r.capture for r in rows}) > 1
        t = Table(title="Connections", title_justify="left", show_edge=False, pad_edge=False)
        if multi:
            t.add_column("capture")
        for col in (
            "stream",
            "client",
            "server",
            "close",
            "closer",
            "TIME_WAIT",
            "end (client/server)",
            "frames",
            "notes",
        ):
            t.add_column(col, justify="right" if col == "stream" else "left")
        for r in rows:
            notes = []
            if r.reset_phase:
                notes.append(f"RST by {r.reset_by} ({r.reset_phase})")
            elif r.reset_by:
                notes.append(f"RST by {r.reset_by}")
            if r.close_wait_s is not None:
                notes.append(f"close_wait {duration(r.close_wait_s)}")
            if r.stuck:
                notes.append("stuck")
            if r.half_close_bytes:
                notes.append(f"{r.half_close_bytes} B after FIN")
            if r.roles_inferred:
                notes.append("roles inferred")
            notes.extend(r.anomalies)
            cells: list[str | Text] = [
                str(r.stream),
                endpoint(r.client.ip, r.client.port),
                endpoint(r.server.ip, r.server.port),
                Text(r.close_type.value, style=STYLE[r.close_type]),
                r.active_closer or "-",
                r.time_wait or "-",
                f"{r.end_state.client or '-'}/{r.end_state.server or '-'}",
                f"{r.first_frame}-{r.last_frame}",
                ", ".join(notes),
            ]
            if multi:
                cells.insert(0, r.capture)
            t.add_row(*cells)
        self.console.print(t)
        if self.total > len(rows):
            self.console.print(
                f"{self.total - len(rows)} more connections not shown "
                "(use --limit, the filters, or --format jsonl)."
            )
