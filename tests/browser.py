"""Headless Chromium for the report tests (`import browser`: tests/ is on pytest's path, see
pyproject's [tool.pytest.ini_options]): render a page, read its console, measure the screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

WINDOW = (1280, 2000)   # width, height of the screenshot


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (CI's .ci/run installs Debian's chromium package)")
    return exe


def render(html: Path, png: Path) -> str:
    """Screenshot `html` with headless Chromium; returns its stderr (console messages included)."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--enable-logging=stderr", "--v=0", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def ink(png: Path) -> tuple[float, int]:
    """A screenshot's share of non-white pixels and its number of distinct colours (every 7th pixel):
    a blank or text-only page scores low on one or the other."""
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    rgb = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return float((rgb < 240).any(1).mean()), len(np.unique(rgb[::7], axis=0))


def check_page(html: Path, png: Path, *, figures: int, min_ink: float = 0.05, min_colours: int = 200) -> None:
    """A report page is self-contained (no script, nothing fetched, `figures` embedded PNGs), opens
    in Chromium without console errors, and its screenshot is not blank."""
    text = html.read_text()
    assert "<script" not in text and not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    assert text.count('src="data:image/png;base64,') == figures
    errors = console_errors(render(html, png))
    assert not errors, errors
    non_white, colours = ink(png)
    assert non_white > min_ink and colours > min_colours, (non_white, colours)
