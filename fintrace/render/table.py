"""The terminal report: what was read, how connections closed, findings, the connections.

Sections, in the order a person looks for them after an incident:

1. One line per capture: packets, time span, packets skipped by reason.
2. Close types with counts and shares, and who closed actively.
3. TIME_WAIT: who holds it, the peak held at once (2×MSL each), and the
   client closest to running out of ephemeral ports.
4. Resets by sender and phase.
5. Findings (:mod:`fintrace.render.findings_view`), most severe first.
6. The connections, one row each, sorted by stream (the first ``--limit``).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from fintrace.findings import PHASES, findings
from fintrace.model import CloseType
from fintrace.render.findings_view import render_findings

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

#: What each close type looks like on the wire, for the summary table.
MEANING = {
    CloseType.REFUSED: "RST answered the SYN",
    CloseType.RESET: "ended by a RST",
    CloseType.SIMULTANEOUS: "both sent FIN at once",
    CloseType.HALF_CLOSE: "peer sent data after the first FIN",
    CloseType.PIGGYBACKED: "FIN, FIN+ACK, ACK",
    CloseType.GRACEFUL: "FIN, ACK, FIN, ACK",
    CloseType.CLOSE_WAIT: "one side never closed",
    CloseType.UNACKED_FIN: "FIN never acknowledged",
    CloseType.OPEN: "still open when the capture ended",
    CloseType.ATTEMPT: "SYN never answered",
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


def share(n: int, total: int) -> str:
    return f"{n / total * 100:.1f}%" if total else "-"


def _row_key(conn: Connection) -> tuple[str, int]:
    return conn.capture, conn.stream


class Rows:
    """The connections the table lists: the first ``limit`` by (capture, stream).

    Keeps the lowest streams, not the first to finish: the list reads in
    stream order, from 0. Trimming now and then bounds the memory. Equal
    keys (a file given twice) keep the order they came in.
    """

    __slots__ = ("kept", "limit", "total")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.kept: list[Connection] = []
        #: Connections offered, listed or not.
        self.total = 0

    def add(self, conn: Connection) -> None:
        self.total += 1
        self.kept.append(conn)
        if self.limit is not None and len(self.kept) >= 2 * self.limit:
            self._trim()

    def extend(self, other: Rows) -> None:
        """Add ``other``'s rows (another file's, from a worker) as if they came after these."""
        listed = other.listed()
        for conn in listed:
            self.add(conn)
        self.total += other.total - len(listed)

    def listed(self) -> list[Connection]:
        """The rows to list, in order."""
        self._trim()
        return sorted(self.kept, key=_row_key)

    def _trim(self) -> None:
        if self.limit is not None:
            self.kept.sort(key=_row_key)
            del self.kept[self.limit :]


class TableRenderer:
    """Rich tables on a console; connections are kept (up to ``limit``) to sort them."""

    def __init__(self, console: Console, *, limit: int | None = 200) -> None:
        self.console = console
        self.rows = Rows(limit)

    def begin(self, run: Run) -> None:
        pass

    def connection(self, conn: Connection) -> None:
        self.rows.add(conn)

    def flush(self) -> None:
        pass  # the table is drawn at the end, sorted

    def end(self, run: Run) -> None:
        # Lazy: the per-client lists are read item by item (findings) or for
        # their first item, never made whole.
        summary = run.aggregator.summary(lazy=True)
        self._overview(run)
        self._close_types(summary)
        self._time_wait(summary["time_wait"])
        self._resets(summary["resets"])
        render_findings(
            self.console, findings(summary, run.captures), show_files=len(run.captures) > 1
        )
        self._connections()

    def _overview(self, run: Run) -> None:
        # One sentence per file: it wraps cleanly at any width, a table does not.
        for cap in run.captures:
            if cap.first_ts is not None and cap.last_ts is not None:
                span = (
                    f"{when(cap.first_ts)} to {when(cap.last_ts)[11:]} UTC "
                    f"({duration(cap.last_ts - cap.first_ts)})"
                )
            else:
                span = "no packets"
            skipped = ", ".join(f"{k} {v}" for k, v in cap.skipped.items()) or "none"
            fmt = cap.format + (f"+{cap.compression}" if cap.compression else "")
            self.console.print(
                Text("Capture ", style="bold")
                + Text(f"{cap.file} ({fmt}): {cap.packets} packets, {cap.tcp_packets} TCP, ")
                + Text(f"{span}; skipped: {skipped}.")
            )
            for w in cap.warnings:
                self.console.print(Text(f"warning: {cap.file}: {w}", style="yellow"))
        self.console.print()

    def _close_types(self, s: dict[str, Any]) -> None:
        total = s["connections"]
        t = Table(
            title=f"Connections: {total}", title_justify="left", show_edge=False, pad_edge=False
        )
        t.add_column("close type")
        t.add_column("count", justify="right")
        t.add_column("share", justify="right")
        t.add_column("on the wire")
        for kind in CloseType:
            n = s["close_types"][kind.value]["count"]
            if n:
                t.add_row(
                    Text(kind.value, style=STYLE[kind]), str(n), share(n, total), MEANING[kind]
                )
        self.console.print(t)
        ac = s["active_closer"]
        parts = [
            f"{who} {ac[who]} ({share(ac[who], total)})"
            for who in ("client", "server", "both")
            if ac[who]
        ]
        self.console.print(
            "Closed first by: "
            + (", ".join(parts) if parts else "nobody")
            + (f"; {ac['none']} not closed" if ac["none"] else "")
            + "."
        )
        self.console.print()

    def _time_wait(self, tw: dict[str, Any]) -> None:
        h = tw["holders"]
        held = h["client"] + h["server"] + h["both"]
        head = Text("TIME_WAIT", style="bold")
        if not held:
            self.console.print(head + Text(": no connection ended in it."))
            self.console.print()
            return
        parts = [f"the {who}'s in {h[who]}" for who in ("client", "server") if h[who]]
        if h["both"]:
            parts.append(f"both sides' in {h['both']}")
        self.console.print(
            head
            + Text(f" (each lasts 2×MSL = {tw['window_s']:g} s) at the end of {held} connections: ")
            + Text(", ".join(parts) + ".")
        )
        t = Table(show_edge=False, pad_edge=False)
        t.add_column("host")
        t.add_column("TIME_WAIT", justify="right")
        t.add_column("peak at once", justify="right")
        t.add_column("peak reached (UTC)")
        for row in tw["by_host"][:5]:
            t.add_row(row["host"], str(row["connections"]), str(row["peak"]), when(row["peak_ts"]))
        self.console.print(t)
        if len(tw["by_host"]) > 5:
            self.console.print(f"{len(tw['by_host']) - 5} more hosts hold TIME_WAIT.")
        if tw["by_tuple"]:
            top = tw["by_tuple"][0]
            self.console.print(
                f"Closest to port exhaustion: {top['client_ip']} → "
                f"{endpoint(top['server_ip'], top['server_port'])}, {top['peak']} of "
                f"{tw['ephemeral_ports']} ephemeral ports in TIME_WAIT at once "
                f"({top['share_of_ephemeral'] * 100:.1f}%)."
            )
        self.console.print()

    def _resets(self, r: dict[str, Any]) -> None:
        if not r.get("total"):
            return
        parts = []
        for who, phases in r["by_sender"].items():
            said = ", ".join(f"{n} {PHASES.get(p, p).split(' (')[0]}" for p, n in phases.items())
            parts.append(f"by the {who}: {said}")
        self.console.print(
            Text("Resets", style="bold") + Text(f": {r['total']}; " + "; ".join(parts) + ".")
        )
        self.console.print()

    def _connections(self) -> None:
        rows = self.rows.listed()
        if not rows:
            return
        multi = len({r.capture for r in rows}) > 1
        # Below 120 columns the per-side details give way to the notes.
        wide = self.console.width >= 120
        t = Table(title="Connections", title_justify="left", show_edge=False, pad_edge=False)
        if multi:
            t.add_column("capture")
        t.add_column("stream", justify="right", no_wrap=True)
        for col in ("client", "server", "close"):
            t.add_column(col, no_wrap=True)
        if wide:
            for col in ("closer", "TIME_WAIT", "end (client/server)", "frames"):
                t.add_column(col, no_wrap=True)
        t.add_column("notes")
        for r in rows:
            notes = []
            if r.reset_phase:
                notes.append(f"RST by {r.reset_by} ({r.reset_phase})")
            elif r.reset_by:
                notes.append(f"RST by {r.reset_by}")
            if r.rst_lost_bytes:
                notes.append(f"{r.rst_lost_bytes} B lost")
            if r.close_wait_s is not None:
                notes.append(f"close_wait {duration(r.close_wait_s)}")
            if r.stuck:
                notes.append("stuck")
            if r.half_close_bytes:
                notes.append(f"{r.half_close_bytes} B after FIN")
            if r.reused_tuple is not None:
                notes.append(f"reuses stream {r.reused_tuple.previous_stream}")
            if r.roles_inferred:
                notes.append("roles inferred")
            notes.extend(r.anomalies)
            cells: list[str | Text] = [
                str(r.stream),
                endpoint(r.client.ip, r.client.port),
                endpoint(r.server.ip, r.server.port),
                Text(r.close_type.value, style=STYLE[r.close_type]),
            ]
            if wide:
                cells += [
                    r.active_closer or "-",
                    r.time_wait or "-",
                    f"{r.end_state.client or '-'}/{r.end_state.server or '-'}",
                    f"{r.first_frame}-{r.last_frame}",
                ]
            cells.append(", ".join(notes))
            if multi:
                cells.insert(0, r.capture)
            t.add_row(*cells)
        self.console.print(t)
        if self.rows.total > len(rows):
            self.console.print(
                f"{self.rows.total - len(rows)} more connections not shown "
                "(use --limit, the filters, or --format jsonl)."
            )
