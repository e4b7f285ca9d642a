"""Findings on the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from fintrace.findings import Severity

if TYPE_CHECKING:
    from rich.console import Console

    from fintrace.findings import Finding

_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def render_findings(console: Console, found: list[Finding]) -> None:
    console.print(Text("Findings", style="bold"))
    if not found:
        console.print("Nothing wrong: every connection closed cleanly or is still open.")
        console.print()
        return
    for f in found:
        console.print(
            Text(f"[{f.severity.name.lower()}] ", style=_STYLE[f.severity]) + Text(f.title)
        )
        for d in f.details:
            console.print(f"    {d}")
        for cap, flt in f.filters:
            console.print(f"    wireshark: {flt}" + (f"   ({cap})" if cap else ""), soft_wrap=True)
    console.print()
