"""The chat page in a real headless Chromium, against a real uvicorn process.

`drive_chat(base_url, out_dir)` holds all the browser work and asserts only what any correct service must show,
so the same function can be pointed at the real service: give it another `base_url` (and an `error_query` that
the real service rejects with a 4xx). The `chat_server` fixture is the one place that decides what serves it;
today that is the stand-in in tests/support/fake_search_app.py.

The browser is a setting (tests/support/browser.py: Debian's /usr/bin/chromium by default); a missing one fails
the test with how to install it. Playwright only drives it (never `playwright install`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_sync  # dev extras; a missing install fails, never skips
import pytest

from clipsearch_devtools.processes import free_port, running
from tests.support import fake_search_app as fake
from tests.support.browser import browser_path

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE = playwright_sync.ViewportSize(width=1280, height=900)
NARROW = playwright_sync.ViewportSize(width=390, height=844)
TIMEOUT_MS = 30_000
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

# Records the send button's state each time the page shows its "Searching…" bubble, which lives exactly as long
# as a request is in flight. (Observer callbacks run after the page's synchronous code, so the moment the answer
# replaces it cannot be caught this way: by then the button is rightly enabled again.)
_WATCH_BUSY_JS = """() => {
  window.__busy = [];
  const send = document.getElementById('send');
  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.addedNodes) {
        if (n.nodeType !== 1) continue;
        if (n.querySelector('.pending')) window.__busy.push(['pending', send.disabled]);
      }
    }
  }).observe(document.getElementById('log'), {childList: true, subtree: true});
}"""

_ANSWER_FACTS_JS = """(answer) => {
  const imgs = [...answer.querySelectorAll('img')];
  const tops = new Set([...answer.querySelectorAll('.hit')].map((h) => Math.round(h.getBoundingClientRect().top)));
  return {
    srcs: imgs.map((i) => i.getAttribute('src')),
    current_srcs: imgs.map((i) => i.currentSrc),
    natural_widths: imgs.map((i) => i.naturalWidth),
    alts: imgs.map((i) => i.alt),
    hrefs: [...answer.querySelectorAll('a.hit-frame')].map((a) => [a.href, a.target, a.rel]),
    captions: [...answer.querySelectorAll('.hit-title')].map((c) => c.innerText),
    reasons: [...answer.querySelectorAll('.hit-reason')].map((c) => c.innerText),
    meta: answer.querySelector('.meta')?.innerText ?? '',
    grid_rows: tops.size,
    html_in_captions: answer.querySelectorAll('.hit-caption *:not(p):not(span)').length,
  };
}"""

_IMAGES_LOADED_JS = """() => {
  const answers = document.querySelectorAll('.answer');
  const last = answers[answers.length - 1];
  if (!last) return false;
  const imgs = [...last.querySelectorAll('img')];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


@dataclass
class AnswerFacts:
    """What one answer bubble showed, read from the live DOM."""

    query: str
    srcs: list[str]
    current_srcs: list[str]
    natural_widths: list[int]
    alts: list[str]
    hrefs: list[list[str]]
    captions: list[str]
    reasons: list[str]
    meta: str
    grid_rows: int
    html_in_captions: int


@dataclass
class ChatRun:
    """Everything `drive_chat` saw: screenshots to look at and facts to assert on."""

    screenshots: list[Path] = field(default_factory=list)
    answers: list[AnswerFacts] = field(default_factory=list)
    search_requests: list[str] = field(default_factory=list)
    busy_states: list[list[Any]] = field(default_factory=list)
    error_text: str = ""
    error_detail: str = ""
    narrow_grid_rows: int = 0
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def _answer_facts(page: Any, query: str) -> AnswerFacts:
    answer = page.locator(".answer").last
    return AnswerFacts(query=query, **answer.evaluate(_ANSWER_FACTS_JS))


def _send_and_wait_for_answer(page: Any, query: str, n_results: int) -> AnswerFacts:
    """Type like a person (the input has focus), press Enter, and wait until every thumbnail has loaded."""
    expect = playwright_sync.expect
    answers_before = page.locator(".answer").count()
    page.locator("#query").focus()
    page.keyboard.type(query)
    page.keyboard.press("Enter")
    expect(page.locator(".answer")).to_have_count(answers_before + 1, timeout=TIMEOUT_MS)
    expect(page.locator(".answer").last.locator("img")).to_have_count(n_results)
    page.wait_for_function(_IMAGES_LOADED_JS, timeout=TIMEOUT_MS)
    expect(page.locator("#send")).to_be_enabled()
    facts = _answer_facts(page, query)
    for caption in page.locator(".answer").last.locator(".hit-title").all():
        expect(caption).to_be_visible()
    return facts


def drive_chat(
    base_url: str,
    out_dir: Path,
    queries: tuple[str, str] = ("a foggy forest at dawn", "a dog running on the beach"),
    error_query: str = fake.ERROR_QUERY,
    n_results: int = 4,
) -> ChatRun:
    """Use the chat page at `base_url/ui` as a person would, assert what any correct service must show, and
    return the facts and screenshots (written to `out_dir`).

    Checks: thumbnails really load over http(s) (never `data:`), captions are visible, the send button is
    disabled while a request is in flight, history stays, a blank query sends nothing, a 4xx shows the
    server's `detail`, the grid is 4 across on a wide screen and 2 x 2 on a phone, and the page logs no errors
    (a Content-Security-Policy violation would be one).
    """
    expect = playwright_sync.expect
    out_dir.mkdir(parents=True, exist_ok=True)
    run = ChatRun()
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(browser_path()), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WIDE)
            page.set_default_timeout(TIMEOUT_MS)
            page.on(
                "request",
                lambda r: run.search_requests.append(r.url) if r.url.split("?")[0].endswith("/search") else None,
            )
            page.on("console", lambda m: run.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: run.page_errors.append(str(e)))

            page.goto(f"{base_url}/ui", wait_until="load")
            expect(page.locator("#welcome")).to_be_visible()
            expect(page.locator("#query")).to_be_focused()
            empty_shot = out_dir / "chat-empty.png"
            page.screenshot(path=str(empty_shot))
            run.screenshots.append(empty_shot)
            page.evaluate(_WATCH_BUSY_JS)

            for query in queries:
                facts = _send_and_wait_for_answer(page, query, n_results)
                assert len(facts.srcs) == n_results, facts
                assert all(s.startswith(("http://", "https://")) for s in facts.current_srcs), facts.current_srcs
                assert not any(s.startswith("data:") for s in facts.srcs), facts.srcs
                assert all(w > 0 for w in facts.natural_widths), f"thumbnails did not load: {facts}"
                assert all(a.strip() for a in facts.alts), f"every image needs alt text: {facts.alts}"
                assert all(t == "_blank" and "noopener" in r for _, t, r in facts.hrefs), facts.hrefs
                assert all(c.strip() for c in facts.captions), facts.captions
                assert facts.meta, "the answer must say index version, time and re-rank state"
                run.answers.append(facts)

            # History: both user bubbles and both answers are still there, the first one included.
            expect(page.locator(".bubble-user")).to_have_count(len(queries))
            expect(page.locator(".bubble-user").first).to_have_text(queries[0])
            expect(page.locator(".answer")).to_have_count(len(queries))
            run.busy_states = page.evaluate("window.__busy")

            # A blank query is not sent and leaves no bubble.
            sent = len(run.search_requests)
            page.locator("#query").fill("   ")
            page.locator("#query").press("Enter")
            page.locator("#send").click()
            page.wait_for_timeout(400)
            assert len(run.search_requests) == sent, "a blank query must not be sent"
            expect(page.locator(".bubble-user")).to_have_count(len(queries))

            # Keyboard: Tab moves from the input through the re-rank choice to the send button.
            page.locator("#query").focus()
            page.keyboard.press("Tab")
            page.keyboard.press("Tab")
            expect(page.locator("#send")).to_be_focused()

            # A 4xx shows the server's detail in an error bubble.
            page.locator("#query").fill(error_query)
            with page.expect_response(lambda r: r.url.split("?")[0].endswith("/search")) as response_info:
                page.locator("#query").press("Enter")
            response = response_info.value
            assert 400 <= response.status < 500, f"{error_query!r} should be rejected, got HTTP {response.status}"
            body = response.json()
            run.error_detail = body["detail"] if isinstance(body["detail"], str) else ""
            error = page.locator(".bubble-error").last
            expect(error).to_be_visible()
            expect(error).to_contain_text(f"HTTP {response.status}")
            if run.error_detail:
                expect(error).to_contain_text(run.error_detail)
            run.error_text = error.inner_text()
            expect(page.locator("#send")).to_be_enabled()

            page.locator(".answer").first.scroll_into_view_if_needed()
            wide_shot = out_dir / "chat-wide-top.png"
            page.screenshot(path=str(wide_shot))
            page.locator(".bubble-error").last.scroll_into_view_if_needed()
            wide_bottom = out_dir / "chat-wide.png"
            page.screenshot(path=str(wide_bottom))
            run.screenshots += [wide_shot, wide_bottom]

            page.set_viewport_size(NARROW)
            page.emulate_media(color_scheme="dark")
            page.locator(".answer").last.scroll_into_view_if_needed()
            run.narrow_grid_rows = page.locator(".answer").last.evaluate(_ANSWER_FACTS_JS)["grid_rows"]
            narrow_shot = out_dir / "chat-narrow-dark.png"
            page.screenshot(path=str(narrow_shot))
            run.screenshots.append(narrow_shot)
        finally:
            browser.close()

    assert len(run.busy_states) == len(queries), f"one pending bubble per query: {run.busy_states}"
    assert all(disabled for _, disabled in run.busy_states), f"send must be disabled while in flight: {run.busy_states}"
    assert all(a.grid_rows == 1 for a in run.answers), "4 across on a wide screen"
    assert run.narrow_grid_rows == 2, "2 x 2 on a phone"
    assert not run.page_errors, run.page_errors
    # Chromium logs every non-2xx fetch; only the deliberate error query may produce one.
    unexpected = [
        e
        for e in run.console_errors
        if not e.startswith("Failed to load resource: the server responded with a status of 4")
    ]
    assert not unexpected, unexpected
    return run


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real uvicorn process serving the chat page; swap this fixture to test the real service."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("chat-server") / "uvicorn.log"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.support.fake_search_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with running(cmd, f"{base_url}/ui", log, cwd=REPO_ROOT, timeout_s=60.0):
        yield base_url


def test_chat_page_end_to_end(chat_server: str, tmp_path: Path) -> None:
    run = drive_chat(chat_server, tmp_path)

    for path in run.screenshots:
        assert path.stat().st_size > 10_000, f"{path} looks empty"
    print("screenshots:", *run.screenshots, sep="\n  ")

    first, second = run.answers
    assert all(f"{chat_server}/images/" in src for src in first.current_srcs)
    assert {s for s in first.srcs} != {s for s in second.srcs}, "different queries showed the same photos"
    assert f"index {fake.INDEX_VERSION}" in first.meta
    assert "re-ranked by gemini-2.5-flash" in first.meta
    assert first.reasons
    assert all(r.startswith("Why: ") for r in first.reasons)
    assert run.error_detail == fake.ERROR_DETAIL
    assert fake.ERROR_DETAIL in run.error_text


def test_hostile_text_is_shown_as_text_and_503_explains_itself(chat_server: str) -> None:
    """Descriptions and photographer names are untrusted: markup in them must stay text, never become elements."""
    expect = playwright_sync.expect
    hostile_query = next(q for q in (f"q{i}" for i in range(200)) if "neon04" in {p.photo_id for p in fake.pick(q, 4)})
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(browser_path()), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WIDE)
            page.goto(f"{chat_server}/ui")
            page.locator("#rerank").select_option("off")
            facts = _send_and_wait_for_answer(page, hostile_query, 4)
            assert fake.HOSTILE_DESCRIPTION in facts.captions
            assert facts.html_in_captions == 0
            assert page.locator(".answer b, .answer script, .hit-caption img").count() == 0
            assert page.evaluate("document.body.dataset.pwned") is None
            assert "CLIP order (re-ranking off)" in facts.meta
            assert not facts.reasons

            page.locator("#query").fill(fake.DOWN_QUERY)
            page.locator("#query").press("Enter")
            error = page.locator(".bubble-error")
            expect(error).to_contain_text("HTTP 503")
            expect(error).to_contain_text(fake.DOWN_DETAIL)
            expect(error).to_contain_text("Try again in a moment")
            expect(page.locator("#query")).to_have_value(fake.DOWN_QUERY)

            # The example buttons on a fresh page send their query; Enter while it is in flight sends nothing
            # (the stand-in answers after SEARCH_DELAY_S) and keeps what was typed.
            page.reload()
            sent: list[str] = []
            page.on("request", lambda r: sent.append(r.url) if r.url.split("?")[0].endswith("/search") else None)
            page.get_by_role("button", name="a foggy forest at dawn").click()
            expect(page.locator("#send")).to_be_disabled()
            page.locator("#query").fill("typed while waiting")
            page.locator("#query").press("Enter")
            expect(page.locator(".bubble-user")).to_have_text("a foggy forest at dawn")
            expect(page.locator(".answer img")).to_have_count(4)
            assert len(sent) == 1, sent
            expect(page.locator("#query")).to_have_value("typed while waiting")

            # A network failure (the request never gets an answer) is explained, and the query is kept to retry.
            page.route("**/search", lambda route: route.abort("connectionrefused"))
            page.locator("#query").fill("lost in the network")
            page.locator("#query").press("Enter")
            expect(page.locator(".bubble-error").last).to_contain_text("Could not reach the search service.")
            expect(page.locator("#query")).to_have_value("lost in the network")
        finally:
            browser.close()


def test_filter_chips_show_more_and_relevance_slider(chat_server: str) -> None:
    """Chips (orientation, colour from the answer's facets), a date and the relevance slider narrow the next search
    and re-run the last one; "Show more" appends the next page to the same answer."""
    expect = playwright_sync.expect

    def last_request() -> dict:
        return httpx.get(f"{chat_server}/last-request", timeout=5).json()

    def answers_after(page: Any, before: int) -> Any:
        expect(page.locator(".answer")).to_have_count(before + 1, timeout=TIMEOUT_MS)
        expect(page.locator("#send")).to_be_enabled()
        return page.locator(".answer").last

    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(browser_path()), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WIDE)
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{chat_server}/ui")
            page.locator("#rerank").select_option("off")
            _send_and_wait_for_answer(page, "mountain lake", 4)
            answer = page.locator(".answer").last
            expect(answer.locator(".page-info")).to_contain_text("4 of 8")

            # Show more: the next page (by cursor) joins the same grid; at the end the button goes away.
            answer.get_by_role("button", name="Show more").click()
            expect(answer.locator(".grid img")).to_have_count(8)
            assert last_request()["cursor"] == "4"
            expect(answer.get_by_role("button", name="Show more")).to_have_count(0)
            ranks = answer.locator(".hit-rank").all_inner_texts()
            assert ranks == [str(i) for i in range(1, 9)], ranks

            # An orientation chip re-runs the last query with the filter.
            page.locator('.chip[data-value="landscape"]').click()
            answer = answers_after(page, 1)
            assert last_request()["orientation"] == ["landscape"]
            assert last_request()["q"] == "mountain lake"
            expect(page.locator('.chip[data-value="landscape"]')).to_have_attribute("aria-pressed", "true")
            expect(answer.locator(".page-info")).to_contain_text("4 of 5")

            # Colour chips come from the answer's facets; choosing one narrows further (AND across fields).
            blue = page.locator('#color-chips .chip[data-value="blue"]')
            expect(blue).to_be_visible()
            blue.click()
            answer = answers_after(page, 2)
            assert last_request()["color"] == ["blue"]
            assert last_request()["orientation"] == ["landscape"]
            expect(answer.locator(".grid img")).to_have_count(2)
            expect(answer.get_by_role("button", name="Show more")).to_have_count(0)

            # The date filter.
            page.locator('.chip[data-value="landscape"]').click()
            answers_after(page, 3)
            blue.click()
            answers_after(page, 4)
            page.locator("#since").fill("2022-01-01")
            page.locator("#since").dispatch_event("change")
            answer = answers_after(page, 5)
            assert last_request()["submitted_from"] == "2022-01-01"
            expect(answer.locator(".grid img")).to_have_count(3)

            # The relevance slider: a cut-off that leaves fewer than four says so.
            page.locator("#since").fill("")
            page.locator("#since").dispatch_event("change")
            answers_after(page, 6)
            page.locator("#min-score").evaluate("(el) => { el.value = '0.3'; el.dispatchEvent(new Event('input')); }")
            expect(page.locator("#min-score-value")).to_have_text("0.30")
            page.locator("#min-score").dispatch_event("change")
            answer = answers_after(page, 7)
            assert last_request()["min_score"] == 0.3
            assert last_request()["submitted_from"] is None
            expect(answer.locator(".grid img")).to_have_count(2)
            expect(answer).to_contain_text("pass the relevance threshold")
        finally:
            browser.close()
