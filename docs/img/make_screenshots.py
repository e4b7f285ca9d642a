"""Remake the screenshots of docs/report.md from captures/report/incident.pcap.gz.

Run from the repository root, with the test extra installed and Debian's
chromium on the PATH: ``python docs/img/make_screenshots.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CAPTURE = "captures/report/incident.pcap.gz"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "report.html"
        subprocess.run(
            [sys.executable, "-m", "fintrace", "report", "-q", CAPTURE, "-o", str(page_path)],
            cwd=ROOT,
            check=True,
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_path.as_uri())
            # The top of the page down to the end of the charts.
            bottom = page.eval_on_selector("#charts", "e => e.getBoundingClientRect().bottom")
            page.screenshot(
                path=str(HERE / "report-overview.png"),
                clip={"x": 0, "y": 0, "width": 1280, "height": bottom + 10},
                full_page=True,
            )
            # The table, filtered to the stuck worker connections.
            page.fill("#q", "10.2.0.50:9000")
            page.set_checked("#stuck", True)
            page.wait_for_function("document.getElementById('count').textContent.startsWith('8 ')")
            page.locator("#connections").screenshot(path=str(HERE / "report-table.png"))
            browser.close()
    print("wrote", HERE / "report-overview.png", HERE / "report-table.png")


if __name__ == "__main__":
    main()
