"""Compiled or pure Python: which of the two forms of the core modules runs.

A build compiles the core modules with mypyc (``setup.py``) and leaves the
Python source beside each compiled module; Python's import system prefers
the compiled one. :func:`choose` runs once, when ``fintrace`` is imported,
and makes every core module load from its source instead when:

* ``FINTRACE_PURE=1`` is set (profiling, debugging, comparing the two);
* a module's source is not what was compiled (an editable install edited
  since it was built): running the old compiled code would be a surprise,
  so fintrace warns and runs the sources until it is rebuilt;
* a compiled module is there that the build did not record (left over from
  an earlier build).

It is all or nothing: compiled modules call each other directly, so a mix
of old compiled and new pure modules would not be one program.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

#: The package's directory. (os.path, not pathlib: pathlib costs 6 ms of a
#: start, and nothing else ``fintrace analyze --format jsonl`` imports it.)
PACKAGE = os.path.dirname(os.path.realpath(__file__))


def _source(module: str) -> str:
    """The ``.py`` file of a ``fintrace`` module."""
    return os.path.join(PACKAGE, *module.split(".")[1:]) + ".py"


class SourceFirst:
    """Loads the listed ``fintrace`` modules from their ``.py`` files.

    A finder of ``sys.meta_path`` by its ``find_spec`` alone: subclassing
    ``importlib.abc.MetaPathFinder`` would import ``importlib.resources`` and
    what it needs at every start of fintrace (6 million instructions, about
    2 ms, of the 352 million a run on ``captures/demo.pcap`` takes).
    """

    def __init__(self, modules: frozenset[str]) -> None:
        self.modules = modules

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def compiled_modules() -> set[str]:
    """The ``fintrace`` modules that have a compiled form on disk."""
    found = set()
    suffixes = importlib.machinery.EXTENSION_SUFFIXES  # the most specific first
    for folder, _dirs, files in os.walk(PACKAGE):
        rel = os.path.relpath(folder, PACKAGE)
        parts = () if rel == os.curdir else tuple(rel.split(os.sep))
        for name in files:
            for suffix in suffixes:
                if name.endswith(suffix):
                    found.add(".".join(("fintrace", *parts, name[: -len(suffix)])))
                    break
    return found


def _source_hash(module: str) -> str:
    try:
        with open(_source(module), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def recorded() -> dict[str, str]:
    """What the build compiled, by module: the hash of its source (nothing without a build)."""
    try:
        built: dict[str, str] = importlib.import_module("fintrace._build").COMPILED
    except ImportError:
        return {}
    return built


def stale(built: dict[str, str], present: set[str]) -> list[str]:
    """Compiled modules that do not match their source, or that no build recorded."""
    return sorted(m for m in present if m not in built or _source_hash(m) != built[m])


def choose() -> bool:
    """Load the pure-Python modules where the compiled ones must not run; True if compiled run."""
    present = compiled_modules()
    if not present:
        return False
    if os.environ.get("FINTRACE_PURE", "") not in ("", "0"):
        sys.meta_path.insert(0, SourceFirst(frozenset(present)))
        return False
    old = stale(recorded(), present)
    if old:
        warnings.warn(
            "fintrace: the compiled form of "
            + ", ".join(m.removeprefix("fintrace.") for m in old[:3])
            + (" and others" if len(old) > 3 else "")
            + " does not match its source; running the pure-Python modules "
            "(rebuild: pip install -e . in a checkout, else reinstall fintrace)",
            stacklevel=3,
        )
        sys.meta_path.insert(0, SourceFirst(frozenset(present)))
        return False
    return True
