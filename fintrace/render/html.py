"""The HTML report: one self-contained page with the summary, the findings,
charts and a table of connections.

Everything is inline (styles, the table script, the charts), so the page
opens without network access and prints. The charts are SVG drawn here from
what fintrace already computed (the timeline's buckets and the run's
summary): a vector image prints sharply, needs no script to appear and
stays small because it is drawn from at most a few hundred buckets however
many connections there are. The connections travel as one JSON blob of
columns (strings such as hosts interned once) that the inline script pages
through, sorts and filters in the browser.
"""

from __future__ import annotations

import datetime as dt
import math
from array import array
from importlib import resources
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from fintrace import __version__
from fintrace.findings import findings, stream_filter
from fintrace.model import CloseType
from fintrace.render.table import duration, endpoint, when
from fintrace.timeline import MAX_HOSTS, RESET_PHASES, Series, Timeline

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from fintrace.model import Connection
    from fintrace.pipeline import Run

#: Rows of the connection table per page.
PAGE_SIZE = 100
#: Hosts drawn in the TIME_WAIT chart, and services in the CLOSE_WAIT chart.
MAX_HOST_LINES = 6
MAX_SERVICE_ROWS = 15

#: One colour per close type: greens for clean closes, amber for things left
#: hanging, reds for resets, as in the terminal table.
COLORS = {
    CloseType.GRACEFUL: "#43a047",
    CloseType.PIGGYBACKED: "#a5d6a7",
    CloseType.SIMULTANEOUS: "#00897b",
    CloseType.HALF_CLOSE: "#80cbc4",
    CloseType.OPEN: "#64b5f6",
    CloseType.CLOSE_WAIT: "#ffa000",
    CloseType.UNACKED_FIN: "#ffe082",
    CloseType.ATTEMPT: "#9e9e9e",
    CloseType.RESET: "#e53935",
    CloseType.REFUSED: "#8e24aa",
}
#: Resets: blues when the client sent the RST, reds when the server did.
_RESET_SHADES = {
    "client": ("#0d47a1", "#1e88e5", "#64b5f6", "#bbdefb", "#5c6bc0", "#90a4ae"),
    "server": ("#b71c1c", "#e53935", "#ff8a65", "#ffccbc", "#8e24aa", "#a1887f"),
}
_LINES = ("#1565c0", "#e65100", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457")

_W, _H = 960, 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 16, 14, 42


# -- the connection table ------------------------------------------------------------------


#: The table's integer columns (report.js reads them by name); strings are
#: indices into the interned ``strings``.
_INT_COLUMNS = (
    "cap stream ch cp sh sp type closer rby rph tw stuck pk bc bs ff lf notes".split()  # noqa: SIM905
)


class _Table:
    """Connections kept as typed columns, 8 bytes a value; strings are interned."""

    def __init__(self) -> None:
        self.ints = {name: array("q") for name in _INT_COLUMNS}
        self.first = array("d")
        self.last = array("d")
        self.close_wait = array("d")  # NaN for none
        self.strings: dict[str, int] = {"": 0}

    def __len__(self) -> int:
        return len(self.first)

    def _s(self, text: str) -> int:
        i = self.strings.get(text)
        if i is None:
            i = self.strings[text] = len(self.strings)
        return i

    def add(self, c: Connection) -> None:
        s = self._s
        notes = []
        if c.rst_lost_bytes:
            notes.append(f"RST lost {c.rst_lost_bytes} B")
        if c.half_close_bytes:
            notes.append(f"{c.half_close_bytes} B after FIN")
        if c.reused_tuple is not None:
            notes.append(f"reused after {c.reused_tuple.gap_s:.3f} s")
        if c.roles_inferred:
            notes.append("roles inferred")
        notes.extend(c.anomalies)
        values = (
            s(c.capture), c.stream, s(c.client.ip), c.client.port, s(c.server.ip),
            c.server.port, s(c.close_type), s(c.active_closer or ""), s(c.reset_by or ""),
            s(c.reset_phase or ""), s(c.time_wait or ""), int(c.stuck), c.packets,
            c.payload_bytes.client, c.payload_bytes.server, c.first_frame, c.last_frame,
            s(", ".join(notes)),
        )  # fmt: skip
        for column, v in zip(self.ints.values(), values, strict=True):
            column.append(v)
        self.first.append(c.first_ts)
        self.last.append(c.last_ts)
        self.close_wait.append(math.nan if c.close_wait_s is None else c.close_wait_s)

    def blob(self, base: float) -> Iterator[Markup]:
        """The rows in stream order as JSON columns, safe inside a ``<script>`` element,
        one column at a time so that a large table is never held twice."""
        cap, stream = self.ints["cap"], self.ints["stream"]
        order = sorted(range(len(self)), key=lambda i: cap[i] << 40 | stream[i])
        strings = orjson.dumps(list(self.strings))
        # '<', '>' and '&' only occur inside JSON strings, where the escapes mean the same.
        strings = strings.replace(b"<", b"\\u003c").replace(b">", b"\\u003e")
        strings = strings.replace(b"&", b"\\u0026")
        head = orjson.dumps({"base_ms": base * 1000, "page": PAGE_SIZE})[:-1]
        yield Markup((head + b',"strings":' + strings + b',"cols":{').decode())
        first, last, cw = self.first, self.last, self.close_wait
        columns: list[tuple[str, Callable[[int], Any]]] = [
            (name, col.__getitem__) for name, col in self.ints.items()
        ]
        columns += [
            ("t", lambda i: round((first[i] - base) * 1000, 3)),
            ("dur", lambda i: round((last[i] - first[i]) * 1000, 3)),
            ("cw", lambda i: None if math.isnan(cw[i]) else round(cw[i] * 1000, 3)),
        ]
        for n, (name, value) in enumerate(columns):
            sep = "," if n else ""
            body = orjson.dumps([value(i) for i in order]).decode()
            yield Markup(f'{sep}"{name}":{body}')
        yield Markup("}}")


# -- axes ----------------------------------------------------------------------------------


def nice_ceiling(value: float) -> tuple[float, float]:
    """An axis maximum ≥ value and its tick step, both 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0, 1.0
    raw = value / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(step, 1.0)  # counts: never a fractional tick
    return math.ceil(value / step) * step, step


_TIME_STEPS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


def time_ticks(start: float, end: float, *, most: int = 8) -> list[tuple[float, str]]:
    """Round instants between start and end, labelled as UTC clock times."""
    span = max(end - start, 1e-3)
    step = next((s for s in _TIME_STEPS if span / s <= most), None)
    if step is None:
        step = 86400 * math.ceil(span / 86400 / most)
    fmt = "%m-%d" if step >= 86400 else "%H:%M" if step >= 60 else "%H:%M:%S"
    ticks = []
    t = math.ceil(start / step - 1e-9) * step
    while t <= end + 1e-9:
        label = dt.datetime.fromtimestamp(t, dt.UTC).strftime(fmt)
        if step < 1:
            label += f".{round(t * 1000) % 1000:03d}"
        ticks.append((t, label))
        t += step
    return ticks


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _el(tag: str, body: str = "", **attrs: float | str) -> str:
    """One SVG element; ``class_`` names the class, other underscores become hyphens."""
    a = " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{v:.1f}"'
        if isinstance(v, float)
        else f'{k.rstrip("_").replace("_", "-")}="{escape(v)}"'
        for k, v in attrs.items()
    )
    return f"<{tag} {a}>{body}</{tag}>" if body else f"<{tag} {a}/>"


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def _txt(x: float, y: float, text: str, cls: str, anchor: str = "middle") -> str:
    return _el("text", str(escape(text)), x=x, y=y, text_anchor=anchor, class_=cls)


def _svg(name: str, label: str, parts: list[str], height: int = _H) -> Markup:
    return Markup(
        f'<svg class="chart" data-chart="{name}" viewBox="0 0 {_W} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg>"
    )


class _TimeFrame:
    """Maps the timeline's buckets and values onto the plot area."""

    def __init__(self, s: Series, y_max: float, y_of: Callable[[float], float] | None = None):
        self.s = s
        self.x0, self.x1 = float(_LEFT), float(_W - _RIGHT)
        self.y0, self.y1 = float(_H - _BOTTOM), float(_TOP)
        self._y = y_of or (lambda v: v / y_max)

    def x(self, ts: float) -> float:
        s = self.s
        return self.x0 + (ts - s.start) / (s.buckets * s.width_s) * (self.x1 - self.x0)

    def xb(self, i: int) -> float:
        return self.x(self.s.start + i * self.s.width_s)

    def y(self, v: float) -> float:
        return self.y0 - self._y(v) * (self.y0 - self.y1)

    def axes(self, y_ticks: Sequence[tuple[float, str]], y_label: str) -> list[str]:
        s, x0, x1, y0, y1 = self.s, self.x0, self.x1, self.y0, self.y1
        out = [_el("rect", class_="plot", x=x0, y=y1, width=x1 - x0, height=y0 - y1)]
        for v, label in y_ticks:
            y = self.y(v)
            out.append(_el("line", class_="grid", x1=x0, x2=x1, y1=y, y2=y))
            out.append(_txt(x0 - 6, y + 4, label, "tick", "end"))
        end = s.start + s.buckets * s.width_s
        for t, label in time_ticks(s.start, end):
            x = self.x(t)
            out.append(_el("line", class_="axis", x1=x, x2=x, y1=y0, y2=y0 + 5))
            out.append(_txt(x, y0 + 18, label, "tick"))
        day = utc_day(s.start) + ("" if utc_day(end) == utc_day(s.start) else f" – {utc_day(end)}")
        out.append(_txt(x1, _H - 6, f"UTC, {day}; bars of {duration(s.width_s)}", "note", "end"))
        middle = (y0 + y1) / 2
        out.append(
            _el("text", str(escape(y_label)), class_="note", text_anchor="middle",
                transform=f"translate(14 {middle:.0f}) rotate(-90)")
        )  # fmt: skip
        return out

    def span(self, i: int) -> str:
        s = self.s
        t = s.start + i * s.width_s
        return f"{when(t)[11:]} + {duration(s.width_s)}"


# -- charts --------------------------------------------------------------------------------


def _empty(name: str, label: str, message: str) -> Markup:
    return _svg(name, label, [_txt(_W / 2, 60.0, message, "empty")], height=100)


def stacked_bars(
    name: str,
    s: Series,
    groups: dict[str, tuple[int, ...]],
    colors: dict[str, str],
    *,
    label: str,
    y_label: str,
    empty: str,
) -> Markup:
    """Counts per bucket, one colour per group, stacked; a tooltip per bucket."""
    totals = [sum(g[i] for g in groups.values()) for i in range(s.buckets)]
    if not any(totals):
        return _empty(name, label, empty)
    top, step = nice_ceiling(max(totals))
    f = _TimeFrame(s, top)
    ticks = [(k * step, f"{k * step:g}") for k in range(int(top / step) + 1)]
    parts = f.axes(ticks, y_label)
    gap = 1.0 if f.xb(1) - f.xb(0) > 4 else 0.0
    for i, total in enumerate(totals):
        if not total:
            continue
        x, w = f.xb(i), f.xb(i + 1) - f.xb(i) - gap
        base = 0
        tip = []
        for key, counts in groups.items():
            n = counts[i]
            if n:
                top_y, bottom_y = f.y(base + n), f.y(base)
                parts.append(
                    _el("rect", class_="bar", x=x, y=top_y, width=w, height=bottom_y - top_y,
                        fill=colors[key])
                )  # fmt: skip
                base += n
                tip.append(f"{key} {n}")
        title = _title(f"{f.span(i)}: {', '.join(tip)}")
        parts.append(
            _el("rect", title, class_="hover", x=x, y=f.y1, width=w + gap, height=f.y0 - f.y1)
        )
    return _svg(name, label, parts)


def _symlog(top: float) -> Callable[[float], float]:
    scale = math.log10(1 + top)
    return lambda v: math.log10(1 + max(v, 0)) / scale


def time_wait_chart(s: Series, summary: dict[str, Any]) -> tuple[Markup, list[dict[str, Any]]]:
    """TIME_WAIT held per host at the end of each bucket, on a log scale that
    keeps the ephemeral port range in view however small the counts are."""
    tw = summary["time_wait"]
    label = "TIME_WAIT held per host over time"
    hosts = [h for h in tw["by_host"] if h["host"] in s.time_wait][:MAX_HOST_LINES]
    if not hosts:
        return _empty("time_wait", label, "No connection ended in TIME_WAIT."), []
    ports = tw["ephemeral_ports"]
    top = 10 ** math.ceil(math.log10(max([ports] + [h["peak"] for h in hosts]) + 1))
    f = _TimeFrame(s, top, _symlog(top))
    ticks = [(0.0, "0")] + [(10.0**k, f"{10**k:,}") for k in range(round(math.log10(top)) + 1)]
    parts = f.axes(ticks, "held at once (log scale)")
    y = f.y(ports)
    parts.append(_el("line", class_="ref", x1=f.x0, x2=f.x1, y1=y, y2=y))
    parts.append(_txt(f.x1 - 4, y - 5, f"ephemeral port range: {ports:,}", "ref-label", "end"))
    legend = []
    for host, color in zip(hosts, _LINES, strict=False):
        values = s.time_wait[host["host"]]
        points = [f"{f.xb(0):.1f},{f.y(0):.1f}"]
        points += [f"{f.xb(i + 1):.1f},{f.y(v):.1f}" for i, v in enumerate(values)]
        tip = _title(f"{host['host']}: peak {host['peak']} at {when(host['peak_ts'])[11:]}")
        parts.append(_el("polyline", tip, class_="line", stroke=color, points=" ".join(points)))
        px, py = f.x(host["peak_ts"]), f.y(host["peak"])
        parts.append(_el("circle", tip, class_="peak", cx=px, cy=py, r=3.5, fill=color))
        legend.append({"name": host["host"], "color": color, "value": f"peak {host['peak']:,}"})
    return _svg("time_wait", label, parts), legend


def _decade(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"


def close_wait_chart(summary: dict[str, Any]) -> Markup:
    """Per service: ``close_wait_s`` p50–p95 as a bar, a whisker to the max,
    and the stuck ones (still in CLOSE_WAIT at the end) as a red diamond at the oldest."""
    cw = summary["close_wait"]
    label = "CLOSE_WAIT time per service"
    rows: dict[str, dict[str, Any]] = {}
    for svc in cw["stuck_by_service"]:
        rows[svc["service"]] = {"stuck": svc}
    for svc in cw["by_service"]:
        rows.setdefault(svc["service"], {})["spread"] = svc
    if not rows:
        return _empty("close_wait", label, "No side waited in CLOSE_WAIT.")
    names = list(rows)[:MAX_SERVICE_ROWS]
    longest = max(
        [cw["stuck_after_s"]]
        + [r["stuck"]["oldest_s"] for r in rows.values() if "stuck" in r]
        + [r["spread"]["max_s"] for r in rows.values() if "spread" in r]
    )
    lo_exp, hi_exp = -3, max(0, math.ceil(math.log10(max(longest, 1e-3)) + 1e-9))
    # Labels are measured at about 6.2 px per character of the 11 px font.
    left = min(12 + 6.2 * max(len(n) for n in names), 300.0)
    right, row_h, top = _W - 120.0, 24.0, 24.0
    bottom = top + row_h * len(names)
    height = round(bottom + 34)

    def x(v: float) -> float:
        e = math.log10(max(v, 10.0**lo_exp))
        return left + (e - lo_exp) / (hi_exp - lo_exp) * (right - left)

    parts = [_el("rect", class_="plot", x=left, y=top, width=right - left, height=bottom - top)]
    for e in range(lo_exp, hi_exp + 1):
        xe = x(10.0**e)
        parts.append(_el("line", class_="grid", x1=xe, x2=xe, y1=top, y2=bottom))
        tick = ("≤ " if e == lo_exp else "") + _decade(10.0**e)
        parts.append(_txt(xe, bottom + 16, tick, "tick"))
    xs = x(cw["stuck_after_s"])
    parts.append(_el("line", class_="ref", x1=xs, x2=xs, y1=top - 6, y2=bottom))
    parts.append(_txt(xs, top - 10, f"stuck after {cw['stuck_after_s']:g} s", "ref-label"))
    parts.append(_txt(right, height - 4.0, "close_wait_s, log scale", "note", "end"))
    for i, name in enumerate(names):
        yc = top + row_h * i + row_h / 2
        short = name if len(name) <= 46 else name[:45] + "…"
        parts.append(_el("g", _title(name) + _txt(left - 8, yc + 4, short, "tick", "end")))
        notes = []
        if "spread" in rows[name]:
            sp = rows[name]["spread"]
            x50, x95, xmax = x(sp["p50_s"]), x(sp["p95_s"]), x(sp["max_s"])
            tip = (f"{name}: {sp['count']} close(s), p50 {duration(sp['p50_s'])}, "
                   f"p95 {duration(sp['p95_s'])}, max {duration(sp['max_s'])}")  # fmt: skip
            box = [
                _title(tip),
                _el("line", class_="whisker", x1=x95, x2=xmax, y1=yc, y2=yc),
                _el("line", class_="whisker", x1=xmax, x2=xmax, y1=yc - 5, y2=yc + 5),
                _el("rect", class_="box", x=x50, y=yc - 6, width=max(x95 - x50, 2), height=12.0),
                _el("circle", class_="median", cx=x50, cy=yc, r=3.0),
            ]
            parts.append(_el("g", "".join(box), class_="spread"))
            notes.append(f"{sp['count']:,} closed")
        if "stuck" in rows[name]:
            st = rows[name]["stuck"]
            xo = x(st["oldest_s"])
            tip = f"{name}: {st['count']} stuck in CLOSE_WAIT, oldest {duration(st['oldest_s'])}"
            diamond = f"M{xo:.1f} {yc - 7:.1f}l7 7l-7 7l-7 -7z"
            parts.append(_el("path", _title(tip), class_="stuck", d=diamond))
            notes.append(f"{st['count']:,} stuck")
        parts.append(_txt(right + 6, yc + 4, ", ".join(notes), "tick", "start"))
    if len(rows) > len(names):
        more = f"{len(rows) - len(names)} more services"
        parts.append(_txt(left, height - 4.0, more, "note", "start"))
    return _svg("close_wait", label, parts, height=height)


def reset_colors(keys: Sequence[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        sender, phase = key.split("/")
        shades = _RESET_SHADES.get(sender, _RESET_SHADES["server"])
        out[key] = shades[RESET_PHASES.index(phase)]
    return out


# -- the page ------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return (resources.files("fintrace.render") / "html_assets" / name).read_text("utf-8")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("fintrace.render", "html_assets"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = duration
    env.filters["when"] = when
    env.filters["pct"] = lambda v: f"{v * 100:.1f}%"
    env.globals["stream_filter"] = stream_filter
    return env


class HtmlRenderer:
    """Collects the table rows and the timeline; writes the page at the end.

    Every connection feeds the timeline; ``keep`` selects those listed in
    the table, as the filters of ``analyze`` select the rows it lists.
    """

    def __init__(self, out: TextIO, *, keep: Callable[[Connection], bool] | None = None) -> None:
        self.out = out
        self.keep = keep
        self.table = _Table()
        self.timeline = Timeline()

    def begin(self, run: Run) -> None:
        self.timeline = Timeline(msl=run.options.msl)

    def connection(self, conn: Connection) -> None:
        self.timeline.add(conn)
        if self.keep is None or self.keep(conn):
            self.table.add(conn)

    def flush(self) -> None:
        pass  # the page is written whole, at the end

    def end(self, run: Run) -> None:
        summary = run.summary()
        s = self.timeline.series()
        charts, legends = _charts(s, summary)
        base = summary["first_ts"] if summary["first_ts"] is not None else 0.0
        page = _environment().get_template("report.html.j2")
        # Written in pieces: the table's blob is the bulk of a large page.
        for chunk in page.generate(
            version=__version__,
            captures=run.captures,
            summary=summary,
            findings=findings(summary, run.captures),
            charts=charts,
            legends=legends,
            series=s,
            max_hosts=MAX_HOSTS,
            close_types=list(CloseType),
            colors={k.value: v for k, v in COLORS.items()},
            listed=len(self.table),
            data=self.table.blob(base),
            css=Markup(_asset("report.css")),
            script=Markup(_asset("report.js")),
            endpoint=endpoint,
        ):
            self.out.write(chunk)


def _charts(
    s: Series, summary: dict[str, Any]
) -> tuple[dict[str, Markup], dict[str, list[dict[str, Any]]]]:
    """The four charts, and the legends of those that have one."""
    ends_colors = {k: COLORS[CloseType(k)] for k in s.ends}
    resets_colors = reset_colors(list(s.resets))
    tw_svg, tw_legend = time_wait_chart(s, summary)
    charts = {
        "ends": stacked_bars(
            "ends", s, s.ends, ends_colors,
            label="Connection ends over the capture, by close type",
            y_label="connections", empty="No connections.",
        ),
        "time_wait": tw_svg,
        "close_wait": close_wait_chart(summary),
        "resets": stacked_bars(
            "resets", s, s.resets, resets_colors,
            label="Resets over time, by sender and phase",
            y_label="RSTs", empty="No connection ended with a RST.",
        ),
    }  # fmt: skip
    legends = {
        "ends": [
            {"name": k, "color": c, "value": f"{sum(s.ends[k]):,}"} for k, c in ends_colors.items()
        ],
        "resets": [
            {"name": k.replace("/", " · "), "color": c, "value": f"{sum(s.resets[k]):,}"}
            for k, c in resets_colors.items()
        ],
        "time_wait": tw_legend,
    }
    return charts, legends
