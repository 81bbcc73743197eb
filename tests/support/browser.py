"""Which browser the chat-page tests drive: a setting, and a failure (never a skip) when it is missing.

Debian: `chromium` (`make system-deps` installs it). GitHub's Ubuntu runners ship Google Chrome, and Ubuntu's
`chromium` package is only a snap stub, so CI sets CLIPSEARCH_TEST_BROWSER=/usr/bin/google-chrome (the
Makefile's CHROMIUM variable exports it). Playwright only drives the browser; never `playwright install`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSER_ENV = "CLIPSEARCH_TEST_BROWSER"
DEFAULT_BROWSER = "/usr/bin/chromium"


def browser_path() -> Path:
    """The configured browser's executable, or a test failure that says how to install or point at one."""
    configured = os.environ.get(BROWSER_ENV, DEFAULT_BROWSER)
    found = shutil.which(configured)
    if found is None:
        pytest.fail(
            f"no browser at {configured!r} ({BROWSER_ENV}). Install Debian's chromium (`make system-deps`, or "
            f"`apt-get install chromium`), or set {BROWSER_ENV} (make: CHROMIUM=...) to a Chrome or Chromium "
            "executable, e.g. /usr/bin/google-chrome on GitHub's Ubuntu runners.",
            pytrace=False,
        )
    return Path(found)
