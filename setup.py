"""Build fintrace's core modules to C with mypyc, or leave them pure Python.

Everything else is in ``pyproject.toml``. The modules in :data:`COMPILED`
(read, decode, flow table, tracker, classify, aggregate, records) are the
ones every packet or connection goes through; compiled, the same source runs
about twice as fast (``docs/performance.md``). mypyc compiles them from the
typed Python as it is: there is one source, and the pure-Python modules stay
beside the compiled ones (``FINTRACE_PURE=1`` at run time picks them, see
``fintrace/_native.py``).

The build stays pure Python, with a warning, when:

* ``FINTRACE_PURE=1`` is set at build time;
* there is no C compiler, or no ``Python.h`` to compile against;
* mypyc cannot be imported (a build without build isolation, in an
  environment without mypy).

A build records what it compiled, and the hash of each module's source, in
``fintrace/_build.py``; at import, a compiled module whose source has changed
since (an editable install edited after it was built) makes fintrace run the
pure-Python modules instead, with a warning, until it is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

#: Modules compiled to C, in data-flow order.
COMPILED = (
    "reader",
    "decode",
    "reassembly",
    "tracker",
    "flowtable",
    "classify",
    "model",
    "evidence",
    "timeline",
    "interop",
    "aggregate",
    "findings",
    "policy",
    "pipeline",
    "render/jsonwriter",
    "render/jsonout",
)

#: What a build writes to ``fintrace/_build.py``.
BUILD_INFO = '''"""Written by setup.py: the modules it compiled, with their source's hash."""

COMPILED: dict[str, str] = {compiled!r}
'''


def _why_pure() -> str | None:
    """Why this build cannot or must not compile, or None."""
    if os.environ.get("FINTRACE_PURE", "") not in ("", "0"):
        return "FINTRACE_PURE is set"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(os.environ.get("CC", cc).split()[0]) is None:
        return f"no C compiler ({cc})"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        return f"no Python.h in {include} (install the Python development headers)"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (mypy provides it)"
    return None


def _sources() -> list[str]:
    return [f"fintrace/{name}.py" for name in COMPILED]


def _write_build_info(compiled: list[str]) -> None:
    hashes = {
        src.removesuffix(".py").replace("/", "."): hashlib.sha256(
            (HERE / src).read_bytes()
        ).hexdigest()
        for src in compiled
    }
    text = BUILD_INFO.format(compiled=hashes)
    target = HERE / "fintrace" / "_build.py"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def _remove_stale(compiled: list[str]) -> None:
    """Compiled modules of an earlier build that this one does not make.

    setuptools reuses ``build/`` and an editable build leaves them beside the
    sources: left there, they would be packaged, or imported, in place of
    the Python source.
    """
    keep = {src.removesuffix(".py") for src in compiled}
    for root in (HERE / "fintrace", *HERE.glob("build/lib*/fintrace")):
        for ext in root.rglob("*.*"):
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                if ext.name.endswith(suffix):
                    module = ext.relative_to(root.parent).as_posix()[: -len(suffix)]
                    if module not in keep:
                        ext.unlink()
                    break
    if not keep:  # nor the library the compiled modules share
        for root in (HERE, *HERE.glob("build/lib*")):
            for lib in root.glob("fintrace__mypyc.*"):
                lib.unlink()


class ParallelBuildExt(build_ext):
    """build_ext on every core: the C files of the compiled modules build in parallel."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


def _ext_modules() -> list[object]:
    # Only a command that builds needs the C code (``egg_info`` and the
    # build backend's questions about requirements do not).
    building = any(
        arg.startswith(("build", "bdist", "editable_wheel", "develop", "install"))
        for arg in sys.argv[1:]
    )
    if not building:
        return []
    why = _why_pure()
    if why is not None:
        warnings.warn(f"fintrace: building pure Python only: {why}", stacklevel=1)
        _write_build_info([])
        _remove_stale([])
        return []
    mypycify = importlib.import_module("mypyc.build").mypycify
    sources = _sources()
    _write_build_info(sources)
    _remove_stale(sources)
    exts = list(mypycify(sources, opt_level="3", multi_file=True, group_name="fintrace"))
    if sys.platform.startswith("linux"):
        # GCC and Clang on Linux: the compiled code calls the C API, and its own
        # functions across its C files, many times a packet. Without these,
        # each call to libpython (a shared library in most builds) goes through
        # a PLT stub, and each call between the C files through the PLT too, as
        # if another library could replace them; with them, one indirect call
        # through the GOT, or a direct call. On gen-160k (cachegrind): 2.9 %
        # fewer instructions, 13 % fewer instruction-cache misses, 8 % fewer
        # data-cache misses (docs/performance.md). Only the module's init
        # functions need to be seen, and Python declares those visible itself.
        # mypycify gives all its extensions one list of arguments: a new one each.
        for ext in exts:
            ext.extra_compile_args = [*ext.extra_compile_args, "-fno-plt", "-fvisibility=hidden"]
    return exts


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": ParallelBuildExt})
