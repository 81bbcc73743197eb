"""The chat page's conversation in a real headless Chromium: the real /search route and query understanding
(tests/support/understanding_app.py: fake index, real everything else) with Gemini played by the local stand-in.

A sentence becomes chips (the query as understood), a follow-up refines it, a chip's × removes that part, a
hanging Gemini falls back to the text as typed within the budget with the reason shown, and hostile text from
the model is shown as text.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import playwright.sync_api as playwright_sync
import pytest

from clipsearch_devtools.gemini_standin import GeminiStandin, compose, hang, text
from clipsearch_devtools.processes import free_port, running
from tests.e2e.test_chat_page import CHROMIUM_ARGS, REPO_ROOT, TIMEOUT_MS, WIDE
from tests.support.browser import browser_path

pytestmark = pytest.mark.e2e

ICELAND = "landscape photos of Iceland from 2021 without people"
BUDGET_S = 0.8


def chips(page: playwright_sync.Page) -> list[str]:
    return page.locator(".answer").last.locator(".chip-label").all_inner_texts()


def test_chat_understands_refines_and_undoes(tmp_path: Path, gemini_standin: GeminiStandin) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GEMINI_API_KEY": "test-key",
        "CLIPSEARCH_RERANK__BASE_URL": gemini_standin.base_url,
        "CLIPSEARCH_RERANK__ENABLED": "false",
        "CLIPSEARCH_UNDERSTAND__BUDGET_S": str(BUDGET_S),
        "CLIPSEARCH_UNDERSTAND__CONVERSATION_SECRET": "e2e-secret",
    }
    cmd = [sys.executable, "-m", "uvicorn", "tests.support.understanding_app:app", "--port", str(port)]
    expect = playwright_sync.expect
    with (
        running(cmd, f"{base_url}/ui", tmp_path / "uvicorn.log", env=env, cwd=REPO_ROOT, timeout_s=60),
        playwright_sync.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(browser_path()), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WIDE)
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base_url}/ui", wait_until="load")

            def ask(words: str) -> None:
                n = page.locator(".answer").count()
                page.fill("#query", words)
                page.press("#query", "Enter")
                expect(page.locator(".answer")).to_have_count(n + 1)

            gemini_standin.script(
                compose(
                    terms=[{"text": "landscape", "weight": 1}, {"text": "people", "weight": -1}],
                    filters={"country": ["Iceland"], "submitted_from": "2021-01-01"},
                )
            )
            ask(ICELAND)
            assert chips(page) == ["Iceland", "2021-", "landscape", "not: people"]
            page.screenshot(path=str(tmp_path / "chat-understood.png"))
            shown = (
                page.locator(".answer")
                .last.locator("a.hit-frame")
                .evaluate_all("(as) => as.map((a) => a.href.split('/images/')[1].split('?')[0])")
            )

            gemini_standin.script(
                compose(
                    terms=[
                        {"text": "landscape", "weight": 1},
                        {"text": "people", "weight": -1},
                        {"photo_id": shown[1], "weight": 1},
                    ],
                    filters={"country": ["Iceland"], "submitted_from": "2021-01-01"},
                )
            )
            ask("more like the second one")
            asked = gemini_standin.requests[-1].understanding
            assert asked is not None
            assert asked["previous_query"]["filters"]["country"] == ["Iceland"]
            assert asked["shown"][1]["photo_id"] == shown[1]
            assert chips(page)[-2:] == [f"like photo {shown[1]}", "not: people"]
            expect(page.locator(".answer").last.locator(".understood-note")).to_contain_text(f"+ like photo {shown[1]}")

            calls = gemini_standin.request_count
            n = page.locator(".answer").count()
            page.locator(".answer").last.get_by_role("button", name="Remove “2021-”").click()
            expect(page.locator(".answer")).to_have_count(n + 1)
            assert "2021-" not in chips(page)
            assert "Iceland" in chips(page)
            expect(page.locator(".answer").last.locator(".understood-note")).to_contain_text("- 2021-")
            assert gemini_standin.request_count == calls  # removal needs no Gemini call

            page.click("#new-topic")
            gemini_standin.script(hang(5.0))
            started = time.monotonic()
            ask("black and white portraits of old men, not smiling")
            took = time.monotonic() - started
            last = page.locator(".answer").last.locator(".understanding")
            assert last.get_attribute("data-reason") == "timeout"
            expect(last).to_contain_text("searched as typed: understanding timed out")
            assert took < BUDGET_S + 1.0, f"{took:.2f}s"  # budget + page and CLIP stand-in time
            asked = gemini_standin.requests[-1].understanding
            assert asked is not None
            assert "previous_query" not in asked

            gemini_standin.script(
                text(json.dumps({"terms": [{"text": '<img src=x onerror="document.body.dataset.pwned=1">'}]}))
            )
            ask("something strange in a long sentence")
            assert chips(page) == ['<img src=x onerror="document.body.dataset.pwned=1">']
            assert page.evaluate("document.body.dataset.pwned") is None
            page.screenshot(path=str(tmp_path / "chat-refined.png"))
            assert errors == []
        finally:
            browser.close()
