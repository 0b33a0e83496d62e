"""A real browser: headless Chromium (Debian's) driven by Playwright, calling the facade from another origin.

The page (pages/chat.html) is served by a plain http.server on its own port, so every call it makes to the
facade is cross-origin; the bearer key and the JSON content type make each one need a CORS preflight.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import API_KEY, ARTIFACTS, Facade, LlamaServer, Pages

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium tries to reach Google at start, which this machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install-system-packages.sh` (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright starts it headless with a fresh, temporary --user-data-dir of its own.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, pages: Pages, facade: Facade) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    opened = context.new_page()
    opened.goto(f"{pages.origin}/chat.html?facade={facade.url}")
    try:
        yield opened
    finally:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_a_page_from_another_origin_gets_a_json_answer_after_a_cors_preflight(
    page: Any, pages: Pages, facade: Facade
) -> None:
    log_start = facade.log_size()
    result = page.evaluate(
        "([body, key]) => window.chatJson(body, key)",
        [{"message": "hola capibara", "model": "phi4_fast", "max_tokens": 8}, API_KEY],
    )
    assert result["ok"], result
    assert result["status"] == 200
    answer = result["answer"]
    assert answer["object"] == "chat.completion" and answer["model"] == "phi4_fast"
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] == 8
    # The id header is readable from script only because the facade exposes it to CORS.
    assert result["requestId"]
    assert page.locator("#json .status").inner_text() == "HTTP 200"
    screenshot(page, "browser-json")
    # Chromium asked first (OPTIONS, with Authorization among the requested headers) and was allowed.
    access = facade.log_since(log_start)
    assert '"OPTIONS /api/chat HTTP/1.1" 200' in access or '"OPTIONS /api/chat HTTP/1.1" 204' in access, access
    assert '"POST /api/chat HTTP/1.1" 200' in access, access


def test_a_streamed_answer_reaches_the_page_event_by_event(page: Any) -> None:
    result = page.evaluate(
        "([body, key]) => window.chatStream(body, key)",
        [{"message": "tell me about the sea", "model": "mistral_balanced", "max_tokens": 200}, API_KEY],
    )
    assert result["ok"], result
    assert result["status"] == 200 and result["contentType"].startswith("text/event-stream")
    assert result["done"]
    events = result["events"]
    contents = [event for event in events if event.get("content")]
    assert len(contents) == 200
    assert events[0]["role"] == "assistant"
    assert result["text"] == "".join(event["content"] for event in contents)
    # Read as it arrived: the first events came in an earlier read than the last ones. (How many reads
    # depends on scheduling; the proof that nothing buffers is the next test, which leaves early.)
    reads = result["reads"]
    assert sum(read["events"] for read in reads) == len(events)
    assert len(reads) >= 2, reads
    assert events[0]["read"] < events[-1]["read"] and events[0]["at"] < events[-1]["at"]
    assert page.locator("#stream .answer").inner_text().strip() == result["text"].strip()
    assert "[DONE]" in page.locator("#stream .status").inner_text()
    screenshot(page, "browser-stream")


def test_a_page_reading_a_long_stream_has_its_first_events_before_the_model_has_finished(
    page: Any, llama: LlamaServer
) -> None:
    """The page stops reading after 5 tokens of a 3000-token answer. Had anything on the way buffered the
    stream, those 5 tokens could only have arrived together with the whole answer and its [DONE]."""
    log_start = llama.log_size()
    result = page.evaluate(
        "([body, key, stop]) => window.chatStream(body, key, stop)",
        [{"message": "a very long story", "model": "phi4_fast", "max_tokens": 3000}, API_KEY, 5],
    )
    assert result["ok"], result
    assert result["cancelled"] and not result["done"]
    assert 5 <= len([event for event in result["events"] if event.get("content")]) < 3000
    screenshot(page, "browser-stream-cancelled")
    # ...and the page's cancel reached llama.cpp through the facade: the generation stopped early.
    probe = page.evaluate(
        "([body, key]) => window.chatJson(body, key)",
        [{"message": "next", "model": "phi4_fast", "max_tokens": 3}, API_KEY],
    )
    assert probe["status"] == 200
    log = llama.log_since(log_start)
    assert "Disconnected from client" in log
    assert max(llama.completed_generation_lengths(log)) <= 5


def test_a_request_without_the_key_gets_a_401_the_page_can_read(page: Any) -> None:
    result = page.evaluate("([body]) => window.chatJson(body, null)", [{"message": "hola"}])
    assert result["ok"], result  # not a CORS failure: the error answer carries CORS headers too
    assert result["status"] == 401
    assert result["answer"]["error"]["type"] == "authentication_error"


def test_a_request_the_facade_refuses_still_reaches_the_page_as_a_readable_error(page: Any) -> None:
    result = page.evaluate("([body, key]) => window.chatJson(body, key)", [{"model": "phi4_fast"}, API_KEY])
    assert result["ok"], result
    assert result["status"] == 400
    assert result["answer"]["error"]["param"] == "message"


def test_a_page_from_an_origin_the_facade_does_not_allow_cannot_call_it(
    browser: Any, foreign_pages: Pages, facade: Facade
) -> None:
    context = browser.new_context()
    try:
        foreign = context.new_page()
        foreign.goto(f"{foreign_pages.origin}/chat.html?facade={facade.url}")
        result = foreign.evaluate("([body, key]) => window.chatJson(body, key)", [{"message": "hola"}, API_KEY])
    finally:
        context.close()
    assert not result["ok"]
    assert "Failed to fetch" in result["error"]
