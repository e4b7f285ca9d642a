"""``fintrace extract CAPTURES -o FILE``: the packets of the chosen connections, for Wireshark.

Takes analyze's options and filters; writes every packet of each connection
the filters keep, byte for byte, in the input's format (see
:mod:`fintrace.pcapwrite` for several inputs).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from fintrace.cli import (
    Progress,
    _errors,
    analysis_options,
    from_params,
    output_path,
    warn,
)
from fintrace.evidence import frames_of
from fintrace.findings import plural
from fintrace.model import ExitCode
from fintrace.pcapwrite import extract
from fintrace.pipeline import analyze

if TYPE_CHECKING:
    from collections.abc import Callable

    from fintrace.model import Connection
    from fintrace.pipeline import AnalyzeOptions, Run


def selected(
    options: AnalyzeOptions, keep: Callable[[Connection], bool], *, quiet: bool
) -> tuple[Run, list[Connection]]:
    """Run the analysis; the run and the connections the filters keep."""
    with Progress(not quiet and sys.stderr.isatty()) as report:
        run = analyze(options, report)
        chosen = [c for c in run.connections() if keep(c)]
    return run, chosen


@click.command("extract")
@analysis_options
@click.option(
    "--output",
    "-o",
    required=True,
    type=output_path(dash=False),
    help="The capture to write (pcap or pcapng, as the input).",
)
def command(
    *,
    quiet: bool,
    debug: bool,
    output: str,
    **params: Any,
) -> None:
    """Write the packets of the connections the filters select to OUTPUT."""
    with _errors(debug):
        options, keep = from_params(params)
        run, chosen = selected(options, keep, quiet=quiet)
        frames = frames_of(chosen)
        inputs = [(cap.file, frames[cap.file]) for cap in run.captures if frames.get(cap.file)]
        if not inputs:
            # Still write a valid, empty capture: a script expects the file.
            inputs = [(run.captures[0].file, set())]
        written = extract(inputs, output)
        click.echo(
            f"{output}: {plural(written.packets, 'packet')} of "
            f"{plural(len(chosen), 'connection')} ({written.format})",
            err=True,
        )
        warn(run)
    sys.exit(ExitCode.OK)
