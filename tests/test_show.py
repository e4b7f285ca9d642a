"""``fintrace show``: the ladder of one connection.

Relative sequence and acknowledgement numbers and payload lengths are checked
against tshark's; the states against the transitions TEARDOWN.md prescribes for
each close; the layout against snapshots under tests/snapshots/, compared byte for byte
(trailing spaces stripped from each line). Regenerate them with
``FINTRACE_UPDATE_SNAPSHOTS=1 pytest tests/test_show.py``, then read the diff.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from fintrace.cli import main
from fintrace.pipeline import AnalyzeOptions, analyze
from fintrace.render.ladder import render_ladder, rows

from conftest import CAPTURES, ROOT
from craft import T0, Flow, merge, write_pcap

SNAPSHOTS = Path(__file__).parent / "snapshots"
ARROW = re.compile(
    r"^ *(?P<frame>\d+) .*?(?P<flags>(?:[A-Z]{3} )+)seq=(?P<seq>\d+)(?: ack=(?P<ack>\d+))? "
    r"len=(?P<len>\d+)"
)


def ladder(path: Path | str, stream: int, *, everything: bool, width: int = 80) -> str:
    run = analyze(AnalyzeOptions(paths=(str(path),), trace_streams=frozenset({stream})))
    conn = next(c for c in run.connections() if c.stream == stream)
    console = Console(record=True, width=width, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    render_ladder(console, conn, rows(conn, run.traces[stream]), everything=everything)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("FINTRACE_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"{name} changed; see the module docstring"


def arrows(text: str) -> list[tuple[int, int, int | None, int]]:
    out = []
    for line in text.splitlines():
        m = ARROW.match(line)
        if m:
            ack = int(m["ack"]) if m["ack"] else None
            out.append((int(m["frame"]), int(m["seq"]), ack, int(m["len"])))
    return out


def states(text: str) -> dict[int, tuple[str, str]]:
    """Frame → (client state, server state) as the ladder prints them."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^ *(\d+) +\S* *([A-Z_0-9-]+\*?) .* ([A-Z_0-9-]+\*?)$", line)
        if m and ARROW.match(line):
            out[int(m[1])] = (m[2], m[3])
    return out


def test_numbers_agree_with_tshark(tshark: str) -> None:
    demo = CAPTURES / "demo.pcap"
    for stream in range(6):
        got = arrows(ladder(demo, stream, everything=True))
        out = subprocess.run(
            [tshark, "-n", "-r", str(demo), "-Y", f"tcp.stream eq {stream}", "-T", "fields",
             "-e", "frame.number", "-e", "tcp.seq", "-e", "tcp.ack", "-e", "tcp.flags.ack",
             "-e", "tcp.len"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        want = []
        for line in out.stdout.splitlines():
            frame, seq, ack, has_ack, plen = line.split("\t")
            want.append((int(frame), int(seq), int(ack) if has_ack in ("1", "True") else None,
                         int(plen)))  # fmt: skip
        assert got == want, f"stream {stream}"


def test_graceful_close_states_follow_the_contract() -> None:
    text = ladder(CAPTURES / "demo.pcap", 0, everything=True)
    s = states(text)
    # make_demo.py stream 0: handshake in frames 1-3, data 4-5, then FIN (6),
    # ACK (7), FIN (8), ACK (9); TEARDOWN.md's table gives each side's state.
    assert s[6] == ("FIN_WAIT_1*", "ESTABLISHED")
    assert s[7] == ("FIN_WAIT_2*", "CLOSE_WAIT*")
    assert s[8] == ("FIN_WAIT_2", "LAST_ACK*")
    assert s[9] == ("TIME_WAIT*", "CLOSED*")
    assert "Verdict: graceful" in text
    assert "then sent its own FIN 50.0 ms later, frame 8" in " ".join(text.split())


def test_default_shows_the_close_only() -> None:
    close = ladder(CAPTURES / "demo.pcap", 0, everything=False)
    # The first FIN is frame 6: two segments of context before it, 4 and 5.
    assert [a[0] for a in arrows(close)] == [4, 5, 6, 7, 8, 9]
    assert "⋮ 3 earlier segments (frames 1–3); --all shows them" in close


def test_fits_80_columns() -> None:
    for stream in range(6):
        for line in ladder(CAPTURES / "demo.pcap", stream, everything=True).splitlines():
            assert len(line.rstrip()) <= 80, line


@pytest.mark.parametrize(("stream", "everything"), [(0, True), (3, False), (4, False), (2, False)])
def test_snapshot(stream: int, everything: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative path: the snapshot names the capture as a user would type it.
    monkeypatch.chdir(ROOT)
    text = ladder("captures/demo.pcap", stream, everything=everything)
    check_snapshot(f"show_demo_{stream}{'_all' if everything else ''}.txt", text)


def test_a_stream_that_reuses_a_tuple_is_drawn(tmp_path: Path) -> None:
    first = Flow(client=("10.0.0.1", 40000), server=("10.0.0.2", 80))
    again = Flow(client=("10.0.0.1", 40000), server=("10.0.0.2", 80), client_isn=90_000, t=T0 + 1)
    for f in (first, again):
        for side, flags in (("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "FA"),
                            ("c", "A")):  # fmt: skip
            (f.c if side == "c" else f.s)(flags)
    path = tmp_path / "reuse.pcap"
    write_pcap(str(path), merge(first.packets, again.packets))
    text = ladder(path, 1, everything=True)
    assert [a[0] for a in arrows(text)] == [7, 8, 9, 10, 11, 12]
    # Its SYN at T0 + 1.001, the first connection's last packet at T0 + 0.006.
    assert "This 4-tuple carried tcp.stream 0 until 995.0 ms before" in " ".join(text.split())


def test_cli_draws_and_unknown_stream_is_one_line_exit_2() -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["show", "-q", "--no-color", str(CAPTURES / "demo.pcap"), "4"])
    assert ok.exit_code == 0, ok.output
    assert "Verdict: close_wait" in ok.output
    assert "sat in CLOSE_WAIT for 90.0 s" in " ".join(ok.output.split())
    bad = runner.invoke(main, ["show", "-q", str(CAPTURES / "demo.pcap"), "99"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        f"fintrace: error: {CAPTURES / 'demo.pcap'}: no tcp.stream 99 (the capture has streams 0–5)"
    ]


def test_a_late_segment_is_drawn_with_its_stream(tmp_path: Path) -> None:
    # A graceful close, then a stray ACK 40 s later, after the default linger:
    # Wireshark puts it in stream 0, so the ladder of stream 0 draws it.
    f = Flow()
    for side, flags in (("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "FA"),
                        ("c", "A")):  # fmt: skip
        (f.c if side == "c" else f.s)(flags)
    f.c("A", dt=40.0)
    path = tmp_path / "late.pcap"
    write_pcap(str(path), f.packets)
    text = ladder(path, 0, everything=True)
    assert [a[0] for a in arrows(text)] == [1, 2, 3, 4, 5, 6, 7]
