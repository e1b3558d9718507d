"""Debian's Chromium, headless, driven by Playwright: how the tests look at pages the way a user does."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian's, from PATH
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


@contextmanager
def chromium() -> Iterator[Browser]:
    assert CHROMIUM, "no chromium on PATH: install Debian's chromium (make test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, folder: str, name: str) -> None:
    """Keep what the page looked like in test-artifacts/<folder>/<name>.png."""
    (ARTIFACTS / folder).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / folder / f"{name}.png"), full_page=True)


DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


def shoot_both(page: Page, folder: str, name: str) -> None:
    """The page at desktop width, then at phone width (where nothing may stick out sideways), kept in
    test-artifacts/<folder>/<name>-desktop.png and -phone.png."""
    page.set_viewport_size(DESKTOP)
    screenshot(page, folder, f"{name}-desktop")
    page.set_viewport_size(PHONE)
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= PHONE["width"], f"{name}: {wide}px wide on a {PHONE['width']}px screen"
    screenshot(page, folder, f"{name}-phone")
    page.set_viewport_size(DESKTOP)


def sign_in(page: Page, site: str, token: str) -> None:
    """Sign in to the admin pages of ``site`` as an operator does: the form, the token, the button."""
    page.goto(f"{site}/admin/")
    page.fill("input[name=token]", token)
    page.click('button:has-text("Sign in")')


def loaded(page: Page) -> Page:
    """``page`` once its document has loaded. A click on a link returns when the navigation has begun, and
    counting rows then (``count()``, ``all_inner_texts()``: they do not wait) can read a half-parsed table
    on a busy machine."""
    page.wait_for_load_state("load")
    return page
