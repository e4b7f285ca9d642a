"""Subcommands other than ``analyze``.

Each module here defines one click command named ``command``; list its module
name in :data:`COMMANDS`, and :class:`LazyGroup` (the ``fintrace`` group)
imports it when that command is run or listed in ``--help``, so that
``fintrace analyze`` does not import the others (nor rich, which most use).
Commands are thin: parse options, call the core, render, exit.
"""

from __future__ import annotations

import importlib

import click

COMMANDS: tuple[str, ...] = ("check", "report", "show", "extract", "annotate")


class LazyGroup(click.Group):
    """A click group whose commands of :data:`COMMANDS` are imported when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module = importlib.import_module(f"fintrace.commands.{cmd_name}")
            command: click.Command = module.command
            return command
        return super().get_command(ctx, cmd_name)
