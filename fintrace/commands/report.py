"""``fintrace report CAPTURE... -o report.html``: one self-contained HTML page."""

from __future__ import annotations

import sys

import click

from fintrace.cli import (
    Progress,
    _errors,
    _open_output,
    analysis_options,
    build_filters,
    build_options,
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
    captures: tuple[str, ...],
    separate: bool,
    stuck_after: float,
    msl: float,
    linger: float | None,
    numbering: str,
    ephemeral_ports: int,
    close_types: tuple[str, ...],
    stuck: bool,
    ports: tuple[int, ...],
    hosts: tuple[str, ...],
    streams: tuple[int, ...],
    quiet: bool,
    debug: bool,
    output: str,
) -> None:
    """Write one HTML page on CAPTURES: summary, findings, charts, connections.

    The page needs no network to open and prints. The filters select the
    connections listed in its table; the summary and charts cover them all.
    """
    from fintrace.render.html import HtmlRenderer

    with _errors(debug):
        options = build_options(
            captures=captures,
            separate=separate,
            stuck_after=stuck_after,
            msl=msl,
            linger=linger,
            numbering=numbering,
            ephemeral_ports=ephemeral_ports,
        )
        keep = build_filters(
            close_types=close_types, stuck=stuck, ports=ports, hosts=hosts, streams=streams
        )
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
