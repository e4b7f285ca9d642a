"""The terminal report, compared byte for byte with snapshots a person has read.

Snapshots live in tests/snapshots/ (trailing spaces stripped from each line).
After a deliberate change, regenerate them with

    FINTRACE_UPDATE_SNAPSHOTS=1 pytest tests/test_report_snapshot.py

and read the diff as someone woken at 3 a.m. would read the report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from fintrace.cli import main, run_analysis
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
