"""The terminal report, compared byte for byte with snapshots a person has read.

Snapshots live in tests/snapshots/ (trailing spaces stripped from each line).
After a deliberate change, regenerate them with

    FINTRACE_UPDATE_SNAPSHOTS=1 pytest tests/test_report_snapshot.py

and read the diff as someone woken at 3 a.m. would read the report.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from fintrace.cli import build_filters, build_options, main, run_analysis
from fintrace.pipeline import AnalyzeOptions
from fintrace.render.table import TableRenderer

from conftest import ROOT

SNAPSHOTS = Path(__file__).parent / "snapshots"


def report(path: str, *, width: int, limit: int | None, **options: Any) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=width, color_system=None, file=sink)
        run_analysis(
            AnalyzeOptions(paths=(path,), **options),
            TableRenderer(console, limit=limit),
            lambda _c: True,
            progress=False,
        )
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("FINTRACE_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"{name} changed; see the module docstring"


@pytest.mark.parametrize("width", [80, 120])
def test_demo_report(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative paths: the report names captures as the user typed them.
    monkeypatch.chdir(ROOT)
    check_snapshot(
        f"report_demo_{width}.txt", report("captures/demo.pcap", width=width, limit=None)
    )


def test_incident_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    text = report("captures/incident/incident.pcap.gz", width=100, limit=10, ephemeral_ports=1024)
    check_snapshot("report_incident.txt", text)


def test_clean_report_says_nothing_wrong_in_one_line(tmp_path: Path) -> None:
    from craft import Flow, write_pcap

    f = Flow()
    for side, flags in (("c", "S"), ("s", "SA"), ("c", "A"), ("c", "FA"), ("s", "FA"), ("c", "A")):
        (f.c if side == "c" else f.s)(flags)
    path = tmp_path / "clean.pcap"
    write_pcap(str(path), f.packets)
    text = report(str(path), width=100, limit=None)
    findings = [line for line in text.splitlines() if line.startswith("Findings")]
    assert findings == [
        "Findings: Nothing wrong: every connection closed cleanly or is still open."
    ]
    assert "CRITICAL" not in text
    assert "WARNING" not in text


def test_cli_table_is_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        main, ["analyze", "-q", "--format", "table", "--no-color", "captures/demo.pcap"]
    )
    assert result.exit_code == 0
    # Not a terminal: the CLI renders 160 columns wide.
    got = "\n".join(line.rstrip() for line in result.output.splitlines()) + "\n"
    assert got == report("captures/demo.pcap", width=160, limit=200)


# -- docs/incident-walkthrough.md ------------------------------------------------------

WALKTHROUGH = ROOT / "docs" / "incident-walkthrough.md"
#: The walkthrough's outputs are those of a terminal this wide.
DOC_WIDTH = 100
BLOCK = re.compile(r"```console\n\$ (?P<cmd>[^\n]*)\n(?P<out>.*?)```", re.S)


def _run_doc_command(cmd: str) -> str:
    """A command of the walkthrough, run as in a 100-column terminal without colour."""
    args = shlex.split(cmd)
    if args[0] == "tshark":
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
        return out.stdout
    assert args[0] == "fintrace", cmd
    if args[1] == "analyze":
        # What the CLI does on a terminal (make_renderer: the terminal's width).
        params = main.commands["analyze"].make_context("analyze", args[2:]).params
        options = build_options(**{k: params[k] for k in (
            "captures", "separate", "stuck_after", "msl", "linger", "numbering",
            "ephemeral_ports")})  # fmt: skip
        keep = build_filters(**{k: params[k] for k in (
            "close_types", "stuck", "ports", "hosts", "streams")})  # fmt: skip
        with open(os.devnull, "w") as sink:
            console = Console(record=True, width=DOC_WIDTH, color_system=None, file=sink)
            run_analysis(
                options, TableRenderer(console, limit=params["limit"] or None), keep, progress=False
            )
        return console.export_text()
    rest = [*args[1:], "--no-color"] if args[1] == "show" else args[1:]
    result = CliRunner(env={"COLUMNS": str(DOC_WIDTH)}).invoke(main, rest)
    assert result.exit_code == 0, result.output
    return result.output


def _matches(expected: list[str], got: list[str]) -> bool:
    """Line by line; ``[...]`` in the expected output stands for any number of lines."""
    if not expected:
        return not got
    if expected[0] == "[...]":
        return any(_matches(expected[1:], got[i:]) for i in range(len(got) + 1))
    return bool(got) and got[0] == expected[0] and _matches(expected[1:], got[1:])


def _clean(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def test_walkthrough_outputs_are_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tshark: str
) -> None:
    # Files the commands write go to a scratch directory that sees the captures.
    (tmp_path / "captures").symlink_to(ROOT / "captures")
    monkeypatch.chdir(tmp_path)
    doc = WALKTHROUGH.read_text(encoding="utf-8")
    blocks = list(BLOCK.finditer(doc))
    assert len(blocks) >= 8
    if os.environ.get("FINTRACE_UPDATE_SNAPSHOTS") == "1":
        # Fills in the output of complete blocks; excerpts ([...]) are kept as written.
        def fill(m: re.Match[str]) -> str:
            if "[...]" in m["out"]:
                return m[0]
            return (
                f"```console\n$ {m['cmd']}\n"
                + "\n".join(_clean(_run_doc_command(m["cmd"])))
                + "\n```"
            )

        doc = BLOCK.sub(fill, doc)
        WALKTHROUGH.write_text(doc, encoding="utf-8")
        blocks = list(BLOCK.finditer(doc))
    for m in blocks:
        got = _clean(_run_doc_command(m["cmd"]))
        assert _matches(_clean(m["out"]), got), f"docs/incident-walkthrough.md: $ {m['cmd']}"
