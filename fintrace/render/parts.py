"""Output rendered in worker processes, one capture file each (``analyze --separate --jobs N``).

A worker renders the listed connections of its file with the format's own
renderer, into a part file (:class:`PartWriter`); the parent writes the
format's head, each file's part in file order as soon as that file is done
(:class:`Splicer`), then the tail from the merged summary. The output is
byte for byte that of one process:

- ``jsonl`` and ``csv``: a file's connections are what ``connection`` writes
  for each, one after the other; the parent copies them.
- ``json``: the same, with the comma that separates a part's first
  connection from the connections before it.
- ``table``: it lists the first ``--limit`` connections by (capture, stream),
  so a worker sends back only its file's first ones
  (:class:`~fintrace.render.table.Rows`), and no part file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from fintrace.render import text_renderer
from fintrace.render.jsonout import JsonRenderer
from fintrace.render.table import Rows, TableRenderer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from fintrace.model import Connection
    from fintrace.render import Renderer

#: Bytes copied at a time from a part file to the output.
_COPY = 1 << 20


@dataclass(frozen=True, slots=True)
class Listed:
    """What a worker rendered of its file: how many connections, and the table's rows."""

    count: int
    rows: Rows | None = None


@dataclass(frozen=True, slots=True)
class PartWriter:
    """Renders one file's listed connections, in the worker process that analyses it."""

    fmt: str
    keep: Callable[[Connection], bool]
    #: Rows of the table format (None: all).
    limit: int | None = None

    def __call__(self, connections: Iterable[Connection], path: str) -> Listed:
        keep = self.keep
        if self.fmt == "table":
            rows = Rows(self.limit)
            for conn in connections:
                if keep(conn):
                    rows.add(conn)
            rows.listed()  # trimmed: only the rows the table can list go back
            return Listed(rows.total, rows)
        n = 0
        with open(path, "w", encoding="utf-8", newline="") as out:
            renderer = text_renderer(self.fmt, out)  # of which only ``connection`` and ``flush``
            for conn in connections:
                if keep(conn):
                    renderer.connection(conn)
                    n += 1
            renderer.flush()
        return Listed(n)


class Splicer:
    """Writes the workers' parts into the output, between the renderer's begin and end."""

    def __init__(self, renderer: Renderer, out: TextIO) -> None:
        self.renderer = renderer
        self.out = out
        #: Connections written so far.
        self.written = 0

    def add(self, path: str, listed: Listed) -> None:
        """One file's part: ``path`` as the worker wrote it, ``listed`` as it returned."""
        if listed.rows is not None:
            if not isinstance(self.renderer, TableRenderer):
                raise TypeError("table rows for a renderer of another format")
            self.renderer.rows.extend(listed.rows)
            return
        if not listed.count:
            return
        if self.written and isinstance(self.renderer, JsonRenderer):
            self.out.write(",")
        with open(path, encoding="utf-8", newline="") as part:
            shutil.copyfileobj(part, self.out, _COPY)
        self.out.flush()
        self.written += listed.count
