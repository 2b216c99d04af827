"""report.html opens in headless Chromium (Debian's chromium) with no console errors.

Chromium writes every console message to stderr as `INFO:CONSOLE...` with
`--enable-logging=stderr`; an uncaught exception is a console message too.  A page with a
deliberate script error is loaded first, so a Chromium that stopped logging console
messages fails this test instead of passing it.  The screenshot of each report is kept in
the test's folder, or in `$TEITEN_ARTIFACTS` when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from central.report import compute_report, write_report
from central.store import Store
from tests.central_dataset import rolled_up_dataset
from tests.fleet_dataset import fleet_dataset

NOW_US = 1_767_225_600 * 1_000_000


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` "
                    "(the Makefile's APT_PACKAGES has it)")
    return exe


def _open(page: Path, shot: Path, profile: Path) -> list[str]:
    """Load `page`, save a screenshot, return the console lines Chromium logged."""
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--hide-scrollbars", "--window-size=1200,6000", f"--screenshot={shot}",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(profile)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines()
            if ":CONSOLE" in line or "Uncaught" in line]


def test_the_console_check_catches_a_script_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p>'
                   "<script>notDefinedAnywhere();</script></body></html>")
    lines = _open(bad, tmp_path / "bad.png", tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in lines), lines


@pytest.mark.parametrize("dataset", ["central", "fleet"])
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_html_in_headless_chromium(lang: str, dataset: str, tmp_path: Path) -> None:
    # "fleet" is what `make demo` reports: the generated fleet's 2025Q1, four figures
    db = rolled_up_dataset()[0] if dataset == "central" else fleet_dataset()[0]
    with Store(db) as store:
        data = compute_report(store, "2025Q1", now_us=NOW_US)
    out = tmp_path / "report"
    write_report(data, out, lang)
    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    figures = re.findall(r'<img src="([^"]+)"', text)
    for src in figures:  # every figure link resolves
        assert (out / src).is_file(), src
    assert len(figures) == (4 if dataset == "fleet" else 3)
    shot = Path(os.environ.get("TEITEN_ARTIFACTS", tmp_path)) / f"report-{dataset}-{lang}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    lines = _open(page, shot, tmp_path / "profile")
    assert lines == [], "console messages:\n" + "\n".join(lines)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page, not a blank
