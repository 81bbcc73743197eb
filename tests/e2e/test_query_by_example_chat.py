"""The chat page asks with pictures too, in headless Chromium against the live fixture service: pick an image
(with a "not …" term), see four images load; "More like this" on a result, see four more (not the photo itself);
drop and paste attach an image."""

from __future__ import annotations

import io
from pathlib import Path

import playwright.sync_api as playwright_sync
import pytest
from PIL import Image

from tests.e2e.conftest import LiveService
from tests.e2e.test_chat_page import _IMAGES_LOADED_JS, CHROMIUM_ARGS, TIMEOUT_MS, WIDE
from tests.support.browser import browser_path

pytestmark = pytest.mark.e2e

_MAKE_IMAGE_AND_DISPATCH_JS = """async (kind) => {
  const c = document.createElement('canvas');
  c.width = 64; c.height = 48;
  const g = c.getContext('2d');
  g.fillStyle = '#c33'; g.fillRect(0, 0, 64, 48);
  const blob = await new Promise((resolve) => c.toBlob(resolve, 'image/png'));
  const dt = new DataTransfer();
  dt.items.add(new File([blob], kind + '.png', {type: 'image/png'}));
  const event = kind === 'drop'
    ? new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})
    : new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true});
  document.dispatchEvent(event);
}"""


def generated_png() -> bytes:
    img = Image.new("RGB", (120, 90), (40, 90, 200))
    for x in range(0, 120, 10):
        for y in range(90):
            img.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _wait_for_answer(page, answers_before: int) -> None:
    expect = playwright_sync.expect
    expect(page.locator(".answer")).to_have_count(answers_before + 1, timeout=TIMEOUT_MS)
    expect(page.locator(".answer").last.locator("img")).to_have_count(4)
    page.wait_for_function(_IMAGES_LOADED_JS, timeout=TIMEOUT_MS)
    expect(page.locator("#send")).to_be_enabled()


def _answer_photo_ids(page) -> list[str]:
    hrefs = page.locator(".answer").last.locator("a.hit-frame").evaluate_all("(as) => as.map((a) => a.href)")
    return [h.rsplit("/", 1)[-1] for h in hrefs]


def test_upload_not_and_more_like_this_in_the_browser(live_service: LiveService, tmp_path: Path) -> None:
    expect = playwright_sync.expect
    requests: list[tuple[str, str]] = []
    console_errors: list[str] = []
    page_errors: list[str] = []
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(browser_path()), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=WIDE)
            page.set_default_timeout(TIMEOUT_MS)
            page.on("request", lambda r: requests.append((r.method, r.url)) if "/search" in r.url else None)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(f"{live_service.base_url}/ui", wait_until="load")
            page.locator("#rerank").select_option("off")

            # Pick an image, add "not people", send with no words: a multipart POST.
            page.locator("#image-input").set_input_files(
                {"name": "query.png", "mimeType": "image/png", "buffer": generated_png()}
            )
            expect(page.locator(".chip-image")).to_contain_text("query.png")
            page.locator("#not-input").fill("people")
            page.locator("#not-input").press("Enter")
            expect(page.locator("#chips .chip-not")).to_contain_text("not people")
            page.locator("#query").focus()
            page.keyboard.press("Enter")
            _wait_for_answer(page, 0)
            assert requests[-1][0] == "POST"
            assert requests[-1][1].endswith("/search")
            expect(page.locator("#chips .chip")).to_have_count(0)  # the terms went with that search
            user = page.locator(".bubble-user").last
            expect(user.locator("img.term-thumb")).to_have_count(1)  # a local preview of the picked image
            expect(user).to_contain_text("not people")
            understood = page.locator(".answer").last.locator(".understood")
            expect(understood).to_contain_text("image (PNG 120x90")
            expect(understood).to_contain_text("− “people”")
            first_ids = _answer_photo_ids(page)
            page.screenshot(path=str(tmp_path / "chat-image-query.png"))

            # "More like this" on the first result: GET ?like=<photo_id>, four images, not the photo itself.
            chosen = first_ids[0]
            page.locator(".answer").last.locator(".more-like").first.click()
            _wait_for_answer(page, 1)
            method, url = requests[-1]
            assert method == "GET"
            assert f"like={chosen}" in url
            more_ids = _answer_photo_ids(page)
            assert len(more_ids) == 4
            assert chosen not in more_ids
            expect(page.locator(".bubble-user").last).to_contain_text("More like this")
            expect(page.locator(".answer").last.locator(".understood")).to_contain_text(f"photo {chosen}")
            page.screenshot(path=str(tmp_path / "chat-more-like-this.png"))

            # Words with a "not" and no image: the conversation's JSON POST (understanding merges the "not" in).
            page.locator("#not-input").fill("forest")
            page.locator("#not-input").press("Enter")
            page.locator("#query").fill("a snowy mountain")
            with page.expect_request(lambda r: r.url.endswith("/search") and r.method == "POST") as sent:
                page.locator("#query").press("Enter")
            _wait_for_answer(page, 2)
            body = sent.value.post_data_json or {}
            assert body["q"] == "a snowy mountain"
            assert body["not"] == ["forest"]
            expect(page.locator(".answer").last.locator(".understood")).to_contain_text("− “forest”")

            # Drop and paste attach an image too.
            page.evaluate(_MAKE_IMAGE_AND_DISPATCH_JS, "drop")
            expect(page.locator(".chip-image")).to_contain_text("drop.png")
            page.locator(".chip-image .chip-remove").click()
            expect(page.locator("#chips .chip")).to_have_count(0)
            page.evaluate(_MAKE_IMAGE_AND_DISPATCH_JS, "paste")
            expect(page.locator(".chip-image")).to_contain_text("paste.png")
            page.locator("#query").fill("red")
            page.locator("#query").press("Enter")
            _wait_for_answer(page, 3)
            assert requests[-1][0] == "POST"
        finally:
            browser.close()
    assert not page_errors, page_errors
    assert not console_errors, console_errors
