"""Renderers: one per output format, picked from :data:`RENDERERS` by name.

A renderer receives the run's connections one at a time, as they finish,
and the run itself at the start and the end. Only renderers and the CLI
import rich; every renderer writes to the stream it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from typing import TextIO

    from fintrace.model import Connection
    from fintrace.pipeline import Run


class Renderer(Protocol):
    def begin(self, run: Run) -> None: ...

    def connection(self, conn: Connection) -> None: ...

    def flush(self) -> None:
        """Write out what :meth:`connection` has gathered (``end`` does it too)."""

    def end(self, run: Run) -> None: ...


FORMATS = ("table", "json", "jsonl", "csv")


def text_renderer(fmt: str, out: TextIO) -> Renderer:
    """The renderer of a text format (``json``, ``jsonl``, ``csv``) writing to ``out``.

    The table, which needs a console, is the CLI's to make.
    """
    from fintrace.render.csvout import CsvRenderer
    from fintrace.render.jsonout import JsonLinesRenderer, JsonRenderer

    if fmt == "json":
        return JsonRenderer(out)
    if fmt == "jsonl":
        return JsonLinesRenderer(out)
    if fmt == "csv":
        return CsvRenderer(out)
    raise ValueError(f"{fmt} is not a text format")
