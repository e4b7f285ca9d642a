"""Renderers: one per output format, picked from :data:`RENDERERS` by name.

A renderer receives the run's connections one at a time, as they finish,
and the run itself at the start and the end. Only renderers and the CLI
import rich; every renderer writes to the stream it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fintrace.model import Connection
    from fintrace.pipeline import Run


class Renderer(Protocol):
    def begin(self, run: Run) -> None: ...

    def connection(self, conn: Connection) -> None: ...

    def end(self, run: Run) -> None: ...


FORMATS = ("table", "json", "jsonl", "csv")
