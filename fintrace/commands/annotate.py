"""``fintrace annotate CAPTURE -o FILE.pcapng``: a copy whose packets say what they changed.

Every packet that moved a side's state carries a packet comment, such as
``client FIN_WAIT_1 → FIN_WAIT_2, server ESTABLISHED → CLOSE_WAIT``;
Wireshark shows it as ``frame.comment`` (filter: ``frame.comment contains
"CLOSE_WAIT"``). Analyze's filters choose which connections are annotated;
every packet is copied either way.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from fintrace.cli import _errors, analysis_options, from_params, output_path, warn
from fintrace.commands.extract import selected
from fintrace.errors import FintraceError
from fintrace.evidence import state_comments
from fintrace.findings import plural
from fintrace.model import ExitCode
from fintrace.pcapwrite import annotate


@click.command("annotate")
@analysis_options
@click.option(
    "--output",
    "-o",
    required=True,
    type=output_path(dash=False),
    help="The pcapng file to write.",
)
def command(
    *,
    quiet: bool,
    debug: bool,
    output: str,
    **params: Any,
) -> None:
    """Write a pcapng copy of CAPTURE with a comment on every packet that changed a state."""
    with _errors(debug):
        if len(params["captures"]) != 1:
            # Frame numbers in the comments are those of one file.
            raise FintraceError("annotate takes exactly one capture")
        options, keep = from_params(params)
        run, chosen = selected(options, keep, quiet=quiet)
        comments = state_comments(chosen)
        written = annotate(run.captures[0].file, comments, output)
        note = (
            f"; {written.uncommented} in simple packet blocks, which cannot carry one"
            if written.uncommented
            else ""
        )
        click.echo(
            f"{output}: {plural(written.packets, 'packet')}, "
            f"{plural(len(comments) - written.uncommented, 'comment')} "
            f"on {plural(len(chosen), 'connection')}{note}",
            err=True,
        )
        warn(run)
    sys.exit(ExitCode.OK)
