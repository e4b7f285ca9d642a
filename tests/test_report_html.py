"""``fintrace report``: the self-contained HTML page, in Python and in a real headless Chromium.

Expected numbers come from the scripts that built the captures
(``captures/make_demo.py``, ``captures/report/make_incident.py``), counted by
hand from their schedules, never from fintrace's output.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from test_timeline import T, conn

from fintrace.aggregate import AggregateOptions, Aggregator
from fintrace.cli import main
from fintrace.model import CloseType, ResetPhase, Role, State
from fintrace.render.html import HtmlRenderer, nice_ceiling, time_ticks

from conftest import CAPTURES, REQUIRE_ORACLES, need

if TYPE_CHECKING:
    from collections.abc import Iterator

DEMO = CAPTURES / "demo.pcap"
INCIDENT = CAPTURES / "report" / "incident.pcap.gz"
CHARTS = ("ends", "resets", "time_wait", "close_wait")


def report(tmp_path: Path, *args: str, name: str = "report.html") -> str:
    out = tmp_path / name
    result = CliRunner().invoke(main, ["report", "-q", *args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text("utf-8")


def blob(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert m is not None
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def tooltip_total(page: str, chart: str) -> int:
    """Sum of the counts in one chart's per-bar tooltips ("12:00:01 + 2 s: reset 3, ...")."""
    m = re.search(rf'<svg class="chart" data-chart="{chart}".*?</svg>', page, re.S)
    assert m is not None
    titles = re.findall(r'class="hover"[^>]*><title>[^<]*? \+ [^:<]*: ([^<]*)</title>', m.group(0))
    return sum(int(n) for t in titles for n in re.findall(r" (\d+)(?:,|$)", t))


# -- the page, read as text ----------------------------------------------------------------


def test_demo_table_lists_every_connection_with_its_stream_and_close_type(tmp_path: Path) -> None:
    data = blob(report(tmp_path, str(DEMO)))
    s, cols = data["strings"], data["cols"]
    assert cols["stream"] == [0, 1, 2, 3, 4, 5]
    # make_demo.py: graceful, piggybacked, refused, reset, stuck CLOSE_WAIT, unanswered SYN.
    assert [s[i] for i in cols["type"]] == [
        "graceful", "piggybacked", "refused", "reset", "close_wait", "attempt",
    ]  # fmt: skip
    assert cols["stuck"] == [0, 0, 0, 0, 1, 0]
    assert [s[i] for i in cols["ch"]] == [f"10.0.0.{n}" for n in range(1, 7)]
    assert cols["sp"] == [80, 80, 81, 80, 5432, 443]
    # Flows start at T0, +0.5, +1, +1.5, +2, +3 s; each first packet 1 ms later.
    assert cols["t"] == pytest.approx([0, 500, 1000, 1500, 2000, 3000], abs=0.01)
    assert data["base_ms"] == pytest.approx((1_700_000_000.001) * 1000, abs=0.01)
    # Stream 0: first packet at 1 ms, last (the final ACK) at 58 ms.
    assert cols["dur"][0] == pytest.approx(57.0, abs=0.01)
    # Stream 4 waits from its ACK of the FIN (7 ms) to the keep-alive 90 s later.
    assert cols["cw"][4] == pytest.approx(90_000, abs=1)
    assert cols["cw"][2] is None


def test_page_is_self_contained(tmp_path: Path) -> None:
    page = report(tmp_path, str(DEMO))
    assert "<link" not in page and " src=" not in page and "url(" not in page
    # The only URL is the SVG namespace, which is a name, never fetched.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    assert page.count('<svg class="chart"') == len(CHARTS)


def test_summary_and_findings_come_from_the_run(tmp_path: Path) -> None:
    page = report(tmp_path, str(DEMO))
    # make_demo.py: 10.0.0.11:5432 never closes stream 4; stream 3 loses 1000 bytes.
    assert "10.0.0.11:5432" in page
    assert "tcp.stream eq 4" in page
    assert re.search(r"<b>6</b>\s*connections", page)
    assert re.search(r"<b>1,000</b>\s*bytes thrown away", page)


def test_charts_add_up_to_the_connections_and_resets(tmp_path: Path) -> None:
    page = report(tmp_path, str(INCIDENT))
    # make_incident.py: 50 + 400 + 100 cache calls, 150 web calls, 57 worker jobs.
    assert tooltip_total(page, "ends") == 757
    # 9 refused SYNs, 1 request reset at the restart, 5 RSTs from the load balancer.
    assert tooltip_total(page, "resets") == 15


def test_filters_select_the_table_rows_but_not_the_summary(tmp_path: Path) -> None:
    page = report(tmp_path, "--close-type", "reset", str(DEMO))
    assert blob(page)["cols"]["stream"] == [3]
    assert "1 connection(s) of 6" in page
    assert tooltip_total(page, "ends") == 6


def test_several_captures_each_row_names_its_file(tmp_path: Path) -> None:
    data = blob(report(tmp_path, str(DEMO), str(INCIDENT)))
    s, cols = data["strings"], data["cols"]
    files = [s[i] for i in cols["cap"]]
    # make_demo.py: 6 connections; make_incident.py: 757.
    assert (files.count(str(DEMO)), files.count(str(INCIDENT))) == (6, 757)


def test_names_from_the_capture_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "<i>&x.pcap"
    shutil.copy(DEMO, odd)
    page = report(tmp_path, str(odd))
    assert "<i>&x" not in page
    assert "&lt;i&gt;&amp;x.pcap" in page
    assert "\\u003ci\\u003e\\u0026x.pcap" in page  # inside the JSON blob


def test_an_unreadable_capture_leaves_no_page(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "-q", str(tmp_path / "nope.pcap"), "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("fintrace: error: ")
    assert not out.exists()


def test_a_capture_without_tcp_still_gives_a_page(tmp_path: Path) -> None:
    from craft import write_pcap

    empty = tmp_path / "empty.pcap"
    write_pcap(str(empty), [])
    page = report(tmp_path, str(empty))
    assert "No connections." in page
    assert blob(page)["cols"]["stream"] == []


def test_axis_helpers() -> None:
    assert nice_ceiling(7) == (8, 2)
    assert nice_ceiling(10) == (10, 5)
    assert nice_ceiling(1) == (1, 1)
    assert nice_ceiling(0) == (1, 1)
    # T is 22:13:20 UTC; over five minutes the ticks fall on whole minutes.
    assert [label for _, label in time_ticks(T, T + 300)] == [
        "22:14", "22:15", "22:16", "22:17", "22:18",
    ]  # fmt: skip
    assert [label for _, label in time_ticks(T, T + 0.004)] == [
        "22:13:20.000", "22:13:20.001", "22:13:20.002", "22:13:20.003", "22:13:20.004",
    ]  # fmt: skip


# -- the page in a real browser ------------------------------------------------------------

_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRE_ORACLES:
            pytest.fail("playwright is not installed (FINTRACE_REQUIRE_ORACLES=1)")
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        # Debian's chromium, not a browser download: playwright only drives it.
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=_CHROMIUM_FLAGS)
        yield b
        b.close()


class Page:
    """A page opened from a file, with its console messages and network requests noted."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.url = path.as_uri()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 900},
            permissions=["clipboard-read", "clipboard-write"],
        )
        self.page = self.context.new_page()
        self.page.on(
            "console", lambda m: m.type in ("error", "warning") and self.errors.append(m.text)
        )
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        started = time.perf_counter()
        self.page.goto(self.url, wait_until="load")
        self.page.wait_for_function("document.getElementById('count').textContent !== ''")
        self.load_s = time.perf_counter() - started

    def shown(self) -> str:
        return str(self.page.inner_text("#count"))

    def filter(self, *, text: str = "", close_type: str = "", stuck: bool = False) -> float:
        """Set the table's filters and wait for the count to change; the seconds it took."""
        before = self.shown()
        started = time.perf_counter()
        self.page.fill("#q", text)
        self.page.select_option("#type", close_type)
        self.page.set_checked("#stuck", stuck)
        self.page.wait_for_function(
            "([before]) => document.getElementById('count').textContent !== before", arg=[before]
        )
        return time.perf_counter() - started

    def column(self, n: int) -> list[str]:
        return [str(t) for t in self.page.eval_on_selector_all(
            f"#conns tbody tr td:nth-child({n})", "cells => cells.map(c => c.textContent)"
        )]  # fmt: skip


def drawn(page: Any, chart: str, selector: str) -> int:
    """How many marks of the chart have a visible size on screen."""
    return int(
        page.eval_on_selector_all(
            f'svg[data-chart="{chart}"] {selector}',
            "els => els.filter(e => { const b = e.getBoundingClientRect();"
            " return b.width > 0 && b.height > 0; }).length",
        )
    )


@pytest.mark.browser
def test_report_in_a_headless_browser(tmp_path: Path, browser: Any) -> None:
    report(tmp_path, str(INCIDENT))
    view = Page(browser, tmp_path / "report.html")
    try:
        page = view.page
        screenshot = tmp_path / "report.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
        assert view.errors == []
        assert view.requests == [view.url]

        # Every chart is drawn: bars, lines (10.1.0.9, 10.2.0.10, and the two
        # clients of 10.2.0.50:9000 hold TIME_WAIT), the stuck service's diamond.
        assert drawn(page, "ends", "rect.bar") >= 100
        assert drawn(page, "resets", "rect.bar") >= 3
        assert drawn(page, "time_wait", "polyline") == 4
        assert drawn(page, "close_wait", "path.stuck") == 1
        assert drawn(page, "close_wait", "g.spread rect") >= 2

        # 757 connections: 8 pages of 100 rows.
        assert view.shown() == "757 of 757 shown"
        assert page.inner_text("#pageinfo") == "page 1 of 8"
        assert len(view.column(1)) == 100

        # Eight worker jobs from 140 s on are never closed (140.7, 145.7, ... 175.7 s).
        view.filter(text="10.2.0.50:9000", stuck=True)
        assert view.shown() == "8 of 757 shown"
        assert all(c.startswith("10.2.0.50:9000") for c in view.column(5))
        # SYNs at 152.3, 154.3, ... 168.3 s are refused while 10.2.0.10 restarts.
        view.filter(close_type="refused")
        assert view.shown() == "9 of 757 shown"
        assert set(view.column(6)) == {"refused"}
        # Every word must match: web call n comes from 10.1.0.(1 + n % 4), and the
        # refused ones are n = 76..84, so 10.1.0.4 has n = 79 and 83.
        view.filter(text="10.1.0.4 refused")
        assert view.shown() == "2 of 757 shown"
        view.filter(text="nothing-matches-this")
        assert view.shown() == "0 of 757 shown"

        # Each row's copy button puts its Wireshark filter on the clipboard.
        view.filter()
        page.click("#conns tbody tr:nth-child(3) button.copy")
        assert page.evaluate("navigator.clipboard.readText()") == "tcp.stream eq 2"

        # Sorting: a click on "stream" turns the ascending order around.
        page.click("#conns th:nth-child(1)")
        assert view.column(1)[:2] == ["756", "755"]
        page.click("#next")
        assert view.column(1)[0] == "656"
        assert view.errors == []
    finally:
        view.context.close()


def synthetic_run(n: int) -> tuple[SimpleNamespace, list[Any]]:
    """n connections over an hour, from 500 clients to 20 services, a mix of close types."""
    agg = Aggregator(AggregateOptions())
    conns = []
    kinds = (CloseType.GRACEFUL, CloseType.PIGGYBACKED, CloseType.RESET, CloseType.CLOSE_WAIT)
    for i in range(n):
        start = i * 3600 / n
        kind = kinds[i % len(kinds)]
        extra: dict[str, Any] = {}
        if kind is CloseType.RESET:
            extra = {"reset_by": Role.SERVER, "reset_phase": ResetPhase.ESTABLISHED,
                     "transitions": ((Role.SERVER, State.RESET, start + 0.5),)}  # fmt: skip
        elif kind is CloseType.CLOSE_WAIT:
            extra = {"active_closer": Role.CLIENT, "close_wait_s": 70.0, "stuck": True}
        else:
            extra = {"active_closer": Role.CLIENT, "time_wait": Role.CLIENT,
                     "close_wait_s": 0.01 * (i % 50),
                     "transitions": ((Role.CLIENT, State.TIME_WAIT, start + 0.5),)}  # fmt: skip
        c = conn(start, start + 0.5, stream=i, close_type=kind,
                 client=(f"10.{i % 500 // 250}.{i % 250}.1", 20000 + i % 30000),
                 server=(f"10.9.0.{i % 20}", 8000 + i % 20), **extra)  # fmt: skip
        agg.add(c)
        conns.append(c)
    run = SimpleNamespace(options=SimpleNamespace(msl=30.0), captures=[], summary=agg.summary)
    return run, conns


@pytest.mark.browser
def test_a_hundred_thousand_connections_stay_responsive(tmp_path: Path, browser: Any) -> None:
    run, conns = synthetic_run(100_000)
    out = io.StringIO()
    started = time.perf_counter()
    renderer = HtmlRenderer(out)
    renderer.begin(run)  # type: ignore[arg-type]
    for c in conns:
        renderer.connection(c)
    renderer.end(run)  # type: ignore[arg-type]
    render_s = time.perf_counter() - started
    path = tmp_path / "big.html"
    path.write_text(out.getvalue(), "utf-8")
    size = path.stat().st_size
    view = Page(browser, path)
    try:
        assert view.errors == []
        assert view.shown() == "100,000 of 100,000 shown"
        assert len(view.column(1)) == 100
        # Client 10.0.7.1 is i % 500 == 7: 200 connections, i = 7 + 500 k, all with
        # i % 4 == 3 (500 is a multiple of 4), so all CLOSE_WAIT.
        first_s = view.filter(text="10.0.7.1:")
        assert view.shown() == "200 of 100,000 shown"
        assert set(view.column(6)) == {"close_wait"}
        type_s = view.filter(close_type="reset")
        assert view.shown() == "25,000 of 100,000 shown"
        print(
            f"100k connections: {size / 1e6:.1f} MB, rendered in {render_s:.2f} s, "
            f"loaded in {view.load_s:.2f} s, first text filter {first_s * 1000:.0f} ms "
            f"(incl. 120 ms debounce), close-type filter {type_s * 1000:.0f} ms"
        )
        # Generous bounds: the machine is shared; the report prints the real figures.
        assert size < 12e6
        assert view.load_s < 10
        assert first_s < 3 and type_s < 3
    finally:
        view.context.close()
