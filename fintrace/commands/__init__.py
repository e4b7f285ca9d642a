"""Subcommands other than ``analyze``.

Each module here defines one click command named ``command``; list its module
name in :data:`COMMANDS` and :func:`register` adds it to the ``fintrace``
group. Commands are thin: parse options, call the core, render, exit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click

COMMANDS: tuple[str, ...] = ("check", "report", "show", "extract", "annotate")


def register(group: click.Group) -> None:
    for name in COMMANDS:
        module = importlib.import_module(f"fintrace.commands.{name}")
        group.add_command(module.command)
