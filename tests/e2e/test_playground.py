"""The playground in a real headless Chromium: streaming, stop, history, safe rendering, errors.

Deterministic behaviour runs against live servers over the scripted fake engine; one test uses the
embedded model. Chromium is Debian's (`.ci/run` installs it); Playwright downloads no browser.
Set PLAYGROUND_SCREENSHOTS to a folder to keep the desktop and mobile screenshots there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from app.core.config import Settings
from app.engine.types import BatchObserver
from app.model.runtime import Progress, ReadyModel, ServingModelFactory
from tests.api.conftest import fake_settings
from tests.conftest import LiveServer, poll
from tests.fakes import ScriptedEngine, decode_prompt, echo_reply, fake_serving_model, words

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "playground-key-1"
SCRIPTED = "This is a scripted answer to a prompt of"

# Skipped on a developer's machine without Chromium; under CI (which installs it) they run and fail.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it)"
)
# A shared CPU can be slow to paint; each wait still ends as soon as its condition holds.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A page with every console error, page error and CSP violation it reported."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def unexpected(self, *allowed: str) -> list[str]:
        return [error for error in self.errors if not any(text in error for text in allowed)]


def open_page(browser: Browser, url: str, width: int = 1280, height: int = 800) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    page.goto(f"{url}/")  # through the redirect
    expect(page).to_have_url(f"{url}/playground")
    return watched


@pytest.fixture
def pages(browser: Browser) -> Iterator[Callable[..., Watched]]:
    opened: list[Watched] = []

    def factory(url: str, width: int = 1280, height: int = 800) -> Watched:
        opened.append(open_page(browser, url, width, height))
        return opened[-1]

    yield factory
    for watched in opened:
        watched.page.context.close()


class Gate:
    """Holds generations after a number of tokens until the test releases them, from its own
    thread: the events belong to the server's loop, which the reply script records."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None
        self.held: list[asyncio.Event] = []
        reply = engine.reply

        def recording(prompt: str) -> str:
            self.loop = asyncio.get_running_loop()
            return reply(prompt)

        engine.reply = recording

    def hold_after(self, tokens: int) -> None:
        self.held.append(asyncio.Event())
        self.engine.gate = self.held[-1]
        self.engine.gate_after_tokens = tokens

    def release(self) -> None:
        assert self.loop is not None, "no generation has started"
        self.loop.call_soon_threadsafe(self.held.pop(0).set)


@dataclass
class Fake:
    engine: ScriptedEngine
    live: LiveServer

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.live.url}{path}", headers=headers, timeout=30)


def fake_server(**sections: dict[str, object]) -> Fake:
    engine = ScriptedEngine()
    live = LiveServer(fake_settings(**sections), serving_model=fake_serving_model(engine)).start().wait_healthy()
    return Fake(engine, live)


@pytest.fixture(scope="module")
def open_server() -> Iterator[Fake]:
    """No key, no rate limit."""
    fake = fake_server(rate_limit={"enabled": False})
    yield fake
    fake.live.stop()


@pytest.fixture
def fake(open_server: Fake) -> Iterator[Fake]:
    yield open_server
    engine = open_server.engine
    engine.reply, engine.split, engine.gate, engine.gate_after_tokens = echo_reply, words, None, 0


def current_session(page: Page) -> str:
    session_id = page.evaluate("localStorage.getItem('playground.current')")
    assert isinstance(session_id, str), "no chat session is open"
    return session_id


def send(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def test_controls_are_found_by_role_and_name_and_the_page_is_clean(fake: Fake, pages: Callable[..., Watched]) -> None:
    watched = pages(fake.live.url)
    page = watched.page
    for name in ("Message", "API key"):
        expect(page.get_by_role("textbox", name=name, exact=True)).to_be_visible()
    for name in ("Send", "Stop", "Regenerate", "New chat", "Export JSON", "Download TXT"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
    expect(page.locator("[aria-live=polite]")).to_have_count(1)
    expect(page.get_by_role("spinbutton", name="Max tokens")).to_have_attribute("placeholder", "default 256")
    expect(page.get_by_role("spinbutton", name="Temperature")).to_have_attribute("placeholder", "default 0.7")
    expect(page.get_by_role("spinbutton", name="Top p")).to_have_attribute("placeholder", "default 1")
    send(page, "Hello there")
    expect(page.get_by_role("article")).to_have_count(1)
    expect(page.get_by_role("article").first).to_contain_text("finish: stop")
    expect(page.locator("[aria-live=polite]").get_by_role("article")).to_have_count(1)  # answers are announced
    paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
    print(f"first contentful paint: {paint} ms")
    assert watched.errors == []


def test_an_answer_streams_in_and_then_shows_its_figures(fake: Fake, pages: Callable[..., Watched]) -> None:
    page = pages(fake.live.url).page
    gate = Gate(fake.engine)
    gate.hold_after(2)
    box = page.get_by_role("textbox", name="Message")
    box.fill("First line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("First line\nsecond line")  # Shift+Enter is a newline, not a send
    box.press("Enter")
    answer = page.get_by_role("article").last
    body = answer.locator(".body")
    # What shows first may lag the tokens a little (output redaction holds back a word's tail).
    expect(body).to_contain_text("This")
    first = body.inner_text()
    gate.hold_after(5)
    gate.release()
    expect(body).to_contain_text("This is a")
    second = body.inner_text()
    expect(answer).not_to_contain_text("finish:")  # both seen before the answer was done
    assert second.startswith(first.strip()) and len(second) > len(first)
    gate.release()
    prompt = decode_prompt(fake.engine.submitted[-1])
    expect(body).to_have_text(echo_reply(prompt))
    meta = answer.locator(".meta")
    expect(meta).to_contain_text("not cached")
    tokens = f"{len(fake.engine.submitted[-1].prompt_ids)} prompt + {len(words(echo_reply(prompt)))} completion tokens"
    expect(meta).to_contain_text(tokens)
    expect(meta).to_contain_text(re.compile(r"first token \d+ ms"))
    expect(meta).to_contain_text("tokens/s")
    expect(meta).to_contain_text("finish: stop")
    expect(meta).to_contain_text(re.compile(r"request \S+"))
    assert "First line\nsecond line" in prompt


def test_stop_cancels_on_the_server_and_leaves_the_history_as_it_was(fake: Fake, pages: Callable[..., Watched]) -> None:
    watched = pages(fake.live.url)
    page = watched.page
    send(page, "Keep this turn")
    expect(page.get_by_role("article").last).to_contain_text("finish: stop")
    session_id = current_session(page)
    kept = fake.get(f"/v1/chat/sessions/{session_id}").json()["messages"]
    cancelled = fake.get("/status").json()["queue"]["cancelled"]
    gate = Gate(fake.engine)
    gate.hold_after(3)
    send(page, "Stop this one")
    expect(page.get_by_role("article").last.locator(".body")).to_contain_text("This is")
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("article").last).to_contain_text("stopped")
    assert poll(lambda: fake.get("/status").json()["queue"]["cancelled"] == cancelled + 1)
    assert fake.get(f"/v1/chat/sessions/{session_id}").json()["messages"] == kept
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # Esc stops too.
    gate.hold_after(2)
    send(page, "And this one")
    expect(page.get_by_role("article").last.locator(".body")).to_contain_text("This")
    page.keyboard.press("Escape")
    assert poll(lambda: fake.get("/status").json()["queue"]["cancelled"] == cancelled + 2)
    assert fake.get(f"/v1/chat/sessions/{session_id}").json()["messages"] == kept
    assert watched.errors == []


def test_reload_restores_the_chat_and_exports_match_the_server(fake: Fake, pages: Callable[..., Watched]) -> None:
    watched = pages(fake.live.url)
    page = watched.page
    page.get_by_role("textbox", name="System prompt").fill("Answer briefly.")
    send(page, "What is a mountain?")
    expect(page.get_by_role("article")).to_contain_text("finish: stop")
    page.get_by_role("button", name="Regenerate").click()
    expect(page.get_by_role("article")).to_have_count(2)
    expect(page.get_by_role("article").last).to_contain_text("finish: stop")
    asked = [decode_prompt(request) for request in fake.engine.submitted[-2:]]
    assert asked[0].count("What is a mountain?") == 1 and asked[1].count("What is a mountain?") == 2
    session_id = current_session(page)
    stored = fake.get(f"/v1/chat/sessions/{session_id}").json()
    assert [m["role"] for m in stored["messages"]] == ["system", "user", "assistant", "user", "assistant"]

    page.reload()
    expect(page.get_by_role("article")).to_have_count(2)
    expect(page.get_by_role("article").last.locator(".body")).to_have_text(stored["messages"][-1]["content"])
    expect(page.get_by_role("button", name="What is a mountain?", exact=True)).to_be_visible()  # in the list of chats

    with page.expect_download() as exported:
        page.get_by_role("button", name="Export JSON").click()
    body = json.loads(Path(exported.value.path()).read_text())
    assert body["session_id"] == session_id and body["messages"] == stored["messages"]
    assert set(body) == set(stored)
    with page.expect_download() as text:
        page.get_by_role("button", name="Download TXT").click()
    assert Path(text.value.path()).read_text() == stored["messages"][-1]["content"]

    page.get_by_role("button", name="New chat").click()
    expect(page.get_by_role("article")).to_have_count(0)
    page.get_by_role("button", name="Delete chat What is a mountain?").click()
    expect(page.get_by_role("button", name="What is a mountain?", exact=True)).to_have_count(0)
    assert poll(lambda: fake.get(f"/v1/chat/sessions/{session_id}").status_code == 404)
    assert watched.errors == []


def test_a_repeated_deterministic_question_shows_cached(fake: Fake, pages: Callable[..., Watched]) -> None:
    page = pages(fake.live.url).page
    page.get_by_role("spinbutton", name="Temperature").fill("0")
    send(page, "Same question, same answer")
    expect(page.get_by_role("article")).to_contain_text("not cached")
    page.get_by_role("button", name="New chat").click()
    send(page, "Same question, same answer")
    meta = page.get_by_role("article").locator(".meta")
    expect(meta).to_contain_text("finish: stop")
    expect(meta.locator("span").first).to_have_text("cached")
    assert [decode_prompt(r) for r in fake.engine.submitted].count(decode_prompt(fake.engine.submitted[-1])) == 1


def test_model_output_is_rendered_as_text_never_as_html(fake: Fake, pages: Callable[..., Watched]) -> None:
    payload = (
        'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>\n\n'
        "```\n<b>bold?</b>\n```\nafter"
    )
    fake.engine.reply = lambda prompt: payload
    watched = pages(fake.live.url)
    page = watched.page
    send(page, "Show me some markup")
    answer = page.get_by_role("article")
    expect(answer).to_contain_text("finish: stop")
    body = answer.locator(".body")
    expect(body.locator("p").first).to_have_text(
        'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script>'
    )
    expect(body.locator("pre code")).to_have_text("<b>bold?</b>")
    expect(body.locator("p").last).to_have_text("after")
    assert body.locator("img, script, b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert watched.errors == []


def test_raw_completion_mode_posts_to_generate(fake: Fake, pages: Callable[..., Watched]) -> None:
    page = pages(fake.live.url).page
    page.get_by_role("radio", name="Raw completion").check()
    send(page, "Once upon a time")
    expect(page.get_by_role("article")).to_contain_text("finish: stop")
    assert decode_prompt(fake.engine.submitted[-1]) == "Once upon a time"
    expect(page.get_by_role("article").locator(".body")).to_have_text(echo_reply("Once upon a time"))


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Fake]:
    fake = fake_server(security={"api_keys": [KEY]}, rate_limit={"enabled": False})
    yield fake
    fake.live.stop()


def test_a_server_with_a_key_asks_for_it_and_works_once_it_is_typed(
    keyed_server: Fake, pages: Callable[..., Watched]
) -> None:
    watched = pages(keyed_server.live.url)
    page = watched.page
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("needs an API key")  # from the page's own /status call
    send(page, "Hello with no key")
    expect(alert).to_contain_text("needs an API key")
    expect(page.get_by_role("article")).to_have_count(0)
    expect(page.get_by_role("textbox", name="Message")).to_have_value("Hello with no key")  # kept to resend
    key = page.get_by_role("textbox", name="API key")
    key.fill(KEY)
    key.press("Tab")
    expect(alert).to_be_hidden()
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("article")).to_contain_text("finish: stop")
    assert page.evaluate("sessionStorage.getItem('playground.key')") == KEY
    assert page.evaluate("localStorage.getItem('playground.key')") is None
    assert watched.unexpected("401 (Unauthorized)") == []


@pytest.fixture(scope="module")
def limited_server() -> Iterator[Fake]:
    fake = fake_server(rate_limit={"burst_size": 3, "requests_per_minute": 1})
    yield fake
    fake.live.stop()


def test_a_burst_past_the_rate_limit_shows_the_retry_after_countdown(
    limited_server: Fake, pages: Callable[..., Watched]
) -> None:
    watched = pages(limited_server.live.url)  # its /status call takes one of the three
    page = watched.page
    for number in (1, 2):
        send(page, f"Message {number}")
        expect(page.get_by_role("article").nth(number - 1)).to_contain_text("finish: stop")
    send(page, "One too many")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(re.compile(r"Too many requests: try again in \d+ s\."))
    first = alert.inner_text()
    expect(alert).not_to_have_text(first)  # it counts down
    expect(alert).to_contain_text(re.compile(r"try again in \d+ s\."))
    expect(page.get_by_role("article")).to_have_count(2)
    assert watched.unexpected("429 (Too Many Requests)") == []


def held_model(engine: ScriptedEngine, release: threading.Event) -> ServingModelFactory:
    """The fake model, whose loading waits (on the loading thread) until the test releases it."""
    ready = fake_serving_model(engine)

    def build(settings: Settings, on_progress: Progress, on_batch: BatchObserver | None) -> ReadyModel:
        on_progress("reading the weights")
        release.wait(timeout=60)
        return ready(settings, on_progress, on_batch)

    return build


def test_while_the_model_loads_the_page_shows_its_progress(pages: Callable[..., Watched]) -> None:
    release = threading.Event()
    settings = fake_settings(rate_limit={"enabled": False})
    live = LiveServer(settings, serving_model=held_model(ScriptedEngine(), release)).start()
    try:
        watched = pages(live.url)
        page = watched.page
        alert = page.get_by_role("alert")
        expect(alert).to_have_text("The model is loading (reading the weights)…")
        send(page, "Are you there?")
        expect(alert).to_have_text("The model is loading (reading the weights)…")
        expect(page.get_by_role("textbox", name="Message")).to_have_value("Are you there?")
        release.set()
        expect(alert).to_have_text("The model is ready: send again.")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("article")).to_contain_text("finish: stop")
        assert watched.unexpected("503 (Service Unavailable)") == []
    finally:
        release.set()
        live.stop()


def test_a_dropped_connection_says_so(fake: Fake, pages: Callable[..., Watched]) -> None:
    watched = pages(fake.live.url)
    page = watched.page
    page.route("**/v1/chat", lambda route: route.abort("connectionreset"))
    send(page, "Hello?")
    expect(page.get_by_role("alert")).to_contain_text("The connection to the server was lost")
    expect(page.get_by_role("article")).to_have_count(0)
    assert watched.unexpected("ERR_CONNECTION_RESET") == []


def test_usable_at_375_px_and_screenshots(fake: Fake, pages: Callable[..., Watched], tmp_path: Path) -> None:
    fake.engine.reply = lambda prompt: (
        "A mountain is a landform that rises well above its surroundings.\n\n"
        "```\nheight_m = 8849  # Everest\n```\nMost are formed by tectonic forces."
    )
    folder = Path(os.environ.get("PLAYGROUND_SCREENSHOTS", tmp_path))
    for name, width, height in (("desktop", 1280, 800), ("mobile", 375, 740)):
        watched = pages(fake.live.url, width, height)
        page = watched.page
        send(page, "What is a mountain?")
        expect(page.get_by_role("article")).to_contain_text("finish: stop")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        for control in ("Send", "Stop", "Regenerate"):
            expect(page.get_by_role("button", name=control, exact=True)).to_be_in_viewport()
        page.screenshot(path=folder / f"playground-{name}.png", type="png")
        assert (folder / f"playground-{name}.png").stat().st_size > 0
        assert watched.errors == []


def test_the_embedded_model_streams_an_answer_with_its_usage(server: LiveServer, pages: Callable[..., Watched]) -> None:
    watched = pages(server.url)
    page = watched.page
    page.get_by_role("spinbutton", name="Max tokens").fill("16")
    page.get_by_role("spinbutton", name="Temperature").fill("0")
    send(page, "Say hello in five words.")
    answer = page.get_by_role("article")
    expect(answer.locator(".body")).not_to_have_text("", timeout=120_000)
    expect(answer).to_contain_text("finish:", timeout=120_000)
    expect(answer.locator(".meta")).to_contain_text(re.compile(r"\d+ prompt \+ [1-9]\d* completion tokens"))
    expect(answer.locator(".meta")).to_contain_text(re.compile(r"[\d.]+ tokens/s"))
    assert watched.errors == []
