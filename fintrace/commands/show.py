"""``fintrace show CAPTURE STREAM``: one connection as a ladder diagram."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from fintrace.cli import (
    Progress,
    _errors,
    build_options,
    color_option,
    debug_option,
    numbering_option,
    quiet_option,
    stuck_after_option,
    warn,
)
from fintrace.errors import FintraceError
from fintrace.model import ExitCode
from fintrace.pipeline import analyze
from fintrace.render.ladder import render_ladder, rows


@click.command("show")
# The reader names an unreadable capture in one line; click's check would not.
@click.argument("capture", type=click.Path(dir_okay=True, readable=False, allow_dash=False))
@click.argument("stream", type=click.IntRange(min=0))
@click.option("--all", "everything", is_flag=True, help="Every segment, not only the close.")
@stuck_after_option
@numbering_option
@color_option
@quiet_option
@debug_option
def command(
    *,
    capture: str,
    stream: int,
    everything: bool,
    stuck_after: float,
    numbering: str,
    color: bool | None,
    quiet: bool,
    debug: bool,
) -> None:
    """Draw tcp.stream STREAM of CAPTURE: every segment's arrow and both sides' states."""
    with _errors(debug):
        options = build_options(
            captures=(capture,),
            separate=False,
            stuck_after=stuck_after,
            msl=30.0,
            # The traced stream itself is kept to the end (late segments drawn too).
            linger=None,
            numbering=numbering,
            ephemeral_ports=28232,
            trace=frozenset({stream}),
        )
        with Progress(not quiet and sys.stderr.isatty()) as report:
            run = analyze(options, report)
            found = None
            count = 0
            for conn in run.connections():
                count += 1
                if conn.stream == stream:
                    found = conn
        if found is None or stream not in run.traces:
            have = f"streams 0–{count - 1}" if count else "no TCP connections"
            raise FintraceError(f"{capture}: no tcp.stream {stream} (the capture has {have})")
        console = Console(force_terminal=color, no_color=color is False)
        render_ladder(console, found, rows(found, run.traces[stream]), everything=everything)
        warn(run)
    sys.exit(ExitCode.OK)
