"""``fintrace report CAPTURE... -o report.html``: one self-contained HTML page."""

from __future__ import annotations

import sys
from typing import Any

import click

from fintrace.cli import (
    Progress,
    _errors,
    _open_output,
    analysis_options,
    from_params,
    output_path,
    warn,
)
from fintrace.model import ExitCode
from fintrace.pipeline import analyze


@click.command("report")
@analysis_options
@click.option(
    "--output",
    "-o",
    required=True,
    type=output_path(dash=True),
    help="Write the HTML page here ('-': standard output).",
)
def command(
    *,
    quiet: bool,
    debug: bool,
    output: str,
    **params: Any,
) -> None:
    """Write one HTML page on CAPTURES: summary, findings, charts, connections.

    The page needs no network to open and prints. The filters select the
    connections listed in its table; the summary and charts cover them all.
    """
    from fintrace.render.html import HtmlRenderer

    with _errors(debug):
        options, keep = from_params(params)
        with Progress(not quiet and sys.stderr.isatty()) as progress:
            # Every capture is opened here: one that cannot be read stops the
            # command before an empty page is left behind.
            run = analyze(options, progress)
            with _open_output(output) as out:
                # The renderer sees every connection (its charts cover them
                # all) and applies the filters to its table itself.
                renderer = HtmlRenderer(out, keep=keep)
                renderer.begin(run)
                for conn in run.connections():
                    renderer.connection(conn)
                renderer.end(run)
        warn(run)
    sys.exit(ExitCode.OK)
