"""Findings on the terminal: a severity label, the title, the numbers, the filter.

Readable without colour: the severity is a word, not only a colour, and the
Wireshark filter is on a line of its own so it can be copied whole.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from fintrace.findings import Severity

if TYPE_CHECKING:
    from rich.console import Console

    from fintrace.findings import Finding

_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}

NOTHING_WRONG = "Nothing wrong: every connection closed cleanly or is still open."


def render_findings(console: Console, found: list[Finding], *, show_files: bool = False) -> None:
    """Print the findings; ``show_files`` names the capture of each filter (several inputs)."""
    if not found:
        console.print(Text("Findings: ", style="bold") + Text(NOTHING_WRONG, style="green"))
        console.print()
        return
    counts = Counter(f.severity for f in found)
    tally = ", ".join(
        f"{counts[s]} {s.name.lower()}" for s in sorted(counts, reverse=True) if counts[s]
    )
    console.print(Text(f"Findings ({tally}), most severe first", style="bold"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for f in found:
        label = Text(f.severity.name, style=_STYLE[f.severity])
        grid.add_row(label, Text(f.title, style="bold"))
        for d in f.details:
            grid.add_row("", d)
        for cap, flt in f.filters:
            where = f" ({cap})" if show_files and cap else ""
            grid.add_row("", Text(f"wireshark{where}: ", style="dim") + Text(flt, style="cyan"))
        grid.add_row("", "")
    console.print(grid)
