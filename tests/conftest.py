"""Shared fixtures: where captures live, running fintrace, the oracles."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
CORPUS = ROOT.parent / "shared" / "corpus"

# The capture-crafting helpers live beside the captures they make.
sys.path.insert(0, str(CAPTURES))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: In CI (``.ci/run``) a missing oracle is a failure, never a silent skip.
REQUIRE_ORACLES = os.environ.get("FINTRACE_REQUIRE_ORACLES") == "1"


def need(tool: str) -> None:
    """Skip (or, in CI, fail) when an external tool is missing."""
    if shutil.which(tool) is None:
        msg = f"{tool} is not installed"
        if REQUIRE_ORACLES:
            pytest.fail(msg + " (FINTRACE_REQUIRE_ORACLES=1)")
        pytest.skip(msg)


@pytest.fixture
def tshark() -> str:
    need("tshark")
    return "tshark"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        if REQUIRE_ORACLES:
            pytest.fail(f"the shared corpus is missing at {CORPUS}")
        pytest.skip("the shared corpus (../shared/corpus) is not present")
    return CORPUS


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def capture_files() -> list[Path]:
    """Every capture committed under captures/ (any depth)."""
    return sorted(
        p for p in CAPTURES.rglob("*") if p.suffix in (".pcap", ".pcapng", ".gz") and p.is_file()
    )


@pytest.fixture
def analyze() -> Callable[..., list[dict[str, Any]]]:
    """Run the core on files and return the connections as JSON data."""
    from fintrace.pipeline import AnalyzeOptions
    from fintrace.pipeline import analyze as core
    from fintrace.render.jsonout import connection_dict

    def run(*paths: str | Path, **options: Any) -> list[dict[str, Any]]:
        r = core(AnalyzeOptions(paths=tuple(str(p) for p in paths), **options))
        return sorted(
            (connection_dict(c) for c in r.connections()), key=lambda c: (c["capture"], c["stream"])
        )

    return run


@pytest.fixture
def tmp_capture(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    def make(name: str) -> Path:
        return tmp_path / name

    yield make
