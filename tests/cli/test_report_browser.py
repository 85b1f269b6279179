"""The HTML report in a real browser: headless Chromium opens the file the CLI wrote, with every
host unresolvable, and lays out its tables and charts.

Skipped when no Chromium is installed, unless QCONVERT_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from qconvert.cli.app import app
from tests.conftest import SAMPLES

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 120  # seconds: a first start on a cold cache can be slow; a hang must still end
PASS_GREEN = (0x2E, 0x9E, 0x45)  # the header's border when every gate passed


@pytest.fixture(scope="module")
def browser() -> str:
    """The browser's path; looked for before any report is made for it."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        if os.environ.get("QCONVERT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"QCONVERT_REQUIRE_BROWSER=1 but none of {', '.join(BROWSERS)} is on PATH")
        pytest.skip("no Chromium installed (set QCONVERT_REQUIRE_BROWSER=1 to make this a failure)")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The page the CLI wrote for a quantize + validate + benchmark + analyze run, and its JSON."""
    tmp = tmp_path_factory.mktemp("browser")
    page = tmp / "report.html"
    result = CliRunner().invoke(app, [str(a) for a in (
        "quantize", SAMPLES / "digits_cnn.onnx", "-o", tmp / "q.onnx", "--calib", SAMPLES / "digits.calib.npz",
        "--calib-samples", 32, "--validate", SAMPLES / "digits.eval.npz", "--labels", "labels", "--max-drop", 1,
        "--benchmark", "--runs", 20, "--analyze", "--report", page, "--json")])
    assert result.exit_code == 0, result.stderr
    return page, json.loads(result.stdout)


def _chromium(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = page.parent / "profile"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", *args,
               page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_chromium_builds_the_page_with_its_numbers_and_charts(browser: str,
                                                              report: tuple[Path, dict[str, Any]]) -> None:
    page, payload = report
    dom = _chromium(browser, page, "--dump-dom").stdout
    shown = dom.split('<details id="payload">', maxsplit=1)[0]
    assert "<title>qconvert pipeline: digits_cnn.onnx → q.onnx</title>" in dom and "PASSED" in shown
    assert f"×{payload['quantize']['size']['ratio']:.4g}" in shown
    for model in payload["benchmark"][0]["models"]:
        assert f"<td>{model['p50_ms']:.4g}</td>" in shown
    assert shown.count("<svg") == 2 and shown.count("<circle") == 40  # both charts, every timed run a dot
    assert payload["analyze"]["nodes"][0]["node"] in shown


def test_chromium_draws_the_page(browser: str, report: tuple[Path, dict[str, Any]]) -> None:
    page, _ = report
    shot = page.parent / "shot.png"
    _chromium(browser, page, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = image.convert("RGB")
        colors = pixels.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50  # text, tables and charts, not a blank or error page
    assert max(count for count, _ in colors) < 0.95 * 1280 * 2000
    assert any(color == PASS_GREEN for _, color in colors)  # the style sheet applied: the verdict's colour
