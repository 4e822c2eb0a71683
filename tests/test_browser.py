"""Every page of the built book, opened in headless Chromium the way a reader opens it.

The site is served from ``_build/html`` on 127.0.0.1; each page of ``_toc.yml`` (both languages,
so new chapters are picked up without editing this file) must:

- have the title of its first heading, and ``lang="ko"`` in the Korean edition;
- show every image (``naturalWidth > 0``);
- typeset its math with MathJax when it has math, without MathJax errors;
- render its stored ipywidgets (the widget area is not empty) when it has any;
- make no request outside 127.0.0.1 and get no failed response (the book works offline);
- raise no JavaScript error, except sphinx-thebe's known ``THEBE_JS_URL has already been declared``.

A full-page screenshot of each page goes to ``test-artifacts/screenshots/<lang>_<stem>.png``.
Chromium is Debian's (``/usr/bin/chromium``, installed by ``make install``), never a download.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

import booktoc

pytestmark = pytest.mark.book

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# sphinx-thebe writes its configuration script twice per page.
KNOWN_PAGE_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
SCREENSHOTS = booktoc.REPO_ROOT / "test-artifacts" / "screenshots"
PAGES = booktoc.toc_pages()
# A page of this book settles in about 2 s on an idle machine. The waits are long because a shared
# machine can stall for tens of seconds (CI once took over 20 s for two pages in a row): a wait only
# ends early when its condition holds, so a long limit costs nothing on a healthy page, and what it
# checks is the same (a request that never finishes is still named below).
TIMEOUT_MS = 120_000
QUIET_S = 0.5  # no request in flight for this long = the page has stopped loading (as "networkidle")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(html_dir):
    """``python -m http.server`` on a free loopback port; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(html_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(base + "/index.html", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("could not start the local web server for _build/html")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for all pages (a launch costs seconds), with a fresh profile."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: run `make install` (Debian package chromium)"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900}, locale="en-US",
        )
        try:
            yield context
        finally:
            context.close()


@contextlib.contextmanager
def _recording(context):
    """Collect every request, failed request, bad response and page error while a page loads."""
    log = {"requests": [], "failed": [], "bad_status": [], "errors": [], "in_flight": {}}

    def on_request(r):
        log["requests"].append(r.url)
        log["in_flight"][id(r)] = r.url

    def on_finished(r):
        log["in_flight"].pop(id(r), None)

    def on_failed(r):
        log["in_flight"].pop(id(r), None)
        log["failed"].append(f"{r.url} ({r.failure})")

    on_response = lambda r: r.status >= 400 and log["bad_status"].append(f"{r.url} ({r.status})")  # noqa: E731
    context.on("request", on_request)
    context.on("requestfinished", on_finished)
    context.on("requestfailed", on_failed)
    context.on("response", on_response)
    page = context.new_page()
    page.on("pageerror", lambda e: log["errors"].append(str(e)))
    try:
        yield page, log
    finally:
        page.close()
        context.remove_listener("request", on_request)
        context.remove_listener("requestfinished", on_finished)
        context.remove_listener("requestfailed", on_failed)
        context.remove_listener("response", on_response)


@contextlib.contextmanager
def _waiting(problems: list[str]):
    """Run a wait; a timeout or a rejected promise becomes a listed problem, not the verdict."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        yield
    except PlaywrightError as e:  # TimeoutError is a subclass
        problems.append("while waiting: " + str(e).splitlines()[0])


def _wait_until_quiet(page, log, problems: list[str]) -> None:
    """Wait until no request has been in flight for ``QUIET_S`` (Playwright's "networkidle").

    Done here rather than with ``wait_for_load_state("networkidle")`` so that a page which never
    settles is reported with the requests that kept it busy, not with a bare timeout.
    """
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if log["in_flight"]:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S:
            return
        page.wait_for_timeout(50)  # lets Playwright deliver the request events meanwhile
    pending = sorted(set(log["in_flight"].values()))
    problems.append(f"requests still in flight after {TIMEOUT_MS // 1000} s: " + ", ".join(pending))


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob", "about") or parsed.hostname == "127.0.0.1"


@pytest.mark.parametrize("page_info", PAGES, ids=[p.slug for p in PAGES])
def test_page_renders_offline(server, browser, page_info):
    url = f"{server}/{page_info.docname}.html"
    with _recording(browser) as (page, log):
        response = page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
        assert response is not None and response.ok, f"{url}: {response and response.status}"

        has_math = page.locator(".math").count() > 0
        has_widgets = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count() > 0
        # MathJax and the widget manager render asynchronously after `load`. A wait that fails
        # is not the verdict: the checks below say what is missing, with the failed requests.
        # Every problem of the page is listed at once: a widget area that stays empty is easier
        # to fix next to the 404 that caused it.
        problems: list[str] = []
        with _waiting(problems):
            if has_math:
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
                    " && MathJax.startup.promise.then(() => true)",
                    timeout=TIMEOUT_MS,
                )
        with _waiting(problems):
            if has_widgets:
                page.wait_for_selector(".jupyter-widgets", state="attached", timeout=TIMEOUT_MS)
        _wait_until_quiet(page, log, problems)

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{page_info.slug}.png"), full_page=True)

        title = page.title()
        html_lang = page.evaluate("() => document.documentElement.lang")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({src: e.currentSrc || e.src, ok: e.complete && e.naturalWidth > 0}))"
        )
        math = page.evaluate(
            "() => ({typeset: document.querySelectorAll('mjx-container').length,"
            " errors: document.querySelectorAll('mjx-merror').length,"
            " raw: document.querySelectorAll('.math').length})"
        )
        widgets = page.evaluate(
            """() => {
                const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
                const rendered = [...document.querySelectorAll('.jupyter-widgets')];
                const visible = rendered.filter(e => e.getBoundingClientRect().height > 0);
                return {views: views.length, rendered: rendered.length, visible: visible.length};
            }"""
        )

    heading = booktoc.first_heading(page_info)
    if not title.strip():
        problems.append("the <title> is empty")
    elif not heading:
        problems.append(f"{page_info.source} has no level-1 heading")
    elif title.split(" \u2014 ")[0].strip() != heading:
        problems.append(f"title {title!r} does not start with the first heading {heading!r}")

    if page_info.lang and html_lang != page_info.lang:
        problems.append(f"<html lang={html_lang!r}>, expected {page_info.lang!r}")

    problems += [f"image did not load: {img['src']}" for img in images if not img["ok"]]

    if has_math and math["typeset"] == 0:
        problems.append(f"{math['raw']} math elements but nothing typeset by MathJax")
    if math["errors"]:
        problems.append(f"{math['errors']} MathJax errors (mjx-merror)")

    if has_widgets and widgets["visible"] == 0:
        problems.append(f"{widgets['views']} stored widgets but the widget area is empty")

    problems += [f"request left 127.0.0.1: {u}" for u in log["requests"] if not _is_local(u)]
    problems += [f"failed response: {r}" for r in log["bad_status"]]
    problems += [f"failed request: {r}" for r in log["failed"]]
    problems += [f"page error: {e}" for e in log["errors"] if e not in KNOWN_PAGE_ERRORS]

    assert not problems, f"{url}:\n" + "\n".join(problems)
