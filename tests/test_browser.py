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

import base64
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
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


# -- the static twins of the attention explorers (detr_tutorial/viz/static_explorers.py) --------
TWIN_KINDS = ("encoder", "decoder", "matching")
TWIN_PAGES = [p for p in PAGES if p.source is not None and p.source.suffix == ".ipynb"
              and "detr-explorer-status" in p.source.read_text(encoding="utf-8")]
# Non-transparent pixels and distinct colors of a canvas (every 7th pixel), and its pixels as a
# PNG data URL (compared as strings: equal URLs mean equal pictures).
CANVAS_STATE = """c => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0; const colors = new Set();
    for (let i = 0; i < d.length; i += 28) {
        if (d[i + 3] > 0) { painted++; colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); }
    }
    return {painted, colors: colors.size, url: c.toDataURL()};
}"""


def test_both_editions_have_pages_with_static_explorers():
    assert {p.lang for p in TWIN_PAGES} == {"en", "ko"}, [p.slug for p in TWIN_PAGES]


def _twin(page, kind):
    block = page.locator(f'.detr-explorer[data-kind="{kind}"]').first
    data = json.loads(block.locator("script.detr-explorer-data").text_content())
    return block, block.locator("canvas"), data


def _status(block) -> str:
    return block.locator(".detr-explorer-status").text_content()


def _click_image_point(canvas, data, x, y):
    """Click pixel (x, y) of the image in the twin's left panel (canvas pixels -> CSS pixels)."""
    panel = json.loads(canvas.get_attribute("data-panels"))[0]
    size = canvas.evaluate("c => [c.width, c.getBoundingClientRect().width]")
    scale = size[1] / size[0]
    height, width = data["image_size"]
    canvas.click(position={"x": (panel["x"] + (x + 0.5) * panel["w"] / width) * scale,
                           "y": (panel["y"] + (y + 0.5) * panel["h"] / height) * scale})


def _check_encoder(page, problems):
    block, canvas, data = _twin(page, "encoder")
    (height, width), (h, w) = data["image_size"], data["feature_shape"]
    pictures = []
    for x, y in ((width // 10, height // 10), (width * 8 // 10, height * 7 // 10)):
        _click_image_point(canvas, data, x, y)
        cell = f"({min(y * h // height, h - 1)}, {min(x * w // width, w - 1)})"
        if cell not in _status(block):
            problems.append(f"encoder: after a click at ({x}, {y}) the status does not name cell "
                            f"{cell}: {_status(block)!r}")
        pictures.append(canvas.evaluate(CANVAS_STATE)["url"])
    if pictures[0] == pictures[1]:
        problems.append("encoder: clicks at two different points drew the same picture")


def _check_decoder(page, problems):
    block, canvas, data = _twin(page, "decoder")
    if len(data["detections"]) < 2:
        problems.append(f"decoder: {len(data['detections'])} detections, need two to compare")
        return
    before = canvas.evaluate(CANVAS_STATE)["url"]
    block.locator('select[data-role="detection"]').select_option("1")
    label = data["detections"][1]["label"]
    if canvas.evaluate(CANVAS_STATE)["url"] == before:
        problems.append("decoder: choosing another detection did not change the picture")
    if label not in _status(block):
        problems.append(f"decoder: the status does not name {label!r}: {_status(block)!r}")


def _assignment_change(data, start):
    """Slider moves ``[(slider, value), ...]`` that change the precomputed assignment from the one
    at ``start``: one move when one suffices, else two, else three (a well-trained model may
    keep its assignment while any single weight moves, e.g. when only the class term alone differs)."""
    size = len(data["grid"])
    ids = np.frombuffer(base64.b64decode(data["assignment_ids"]), dtype="<u2").reshape((size,) * 3)
    for count in (1, 2, 3):
        for axes in itertools.combinations(range(3), count):
            for values in itertools.product(range(size), repeat=count):
                moved = list(start)
                for axis, value in zip(axes, values):
                    moved[axis] = value
                if ids[tuple(moved)] != ids[tuple(start)] and ids[tuple(moved)] != 65535:
                    return list(zip(axes, values)), int(ids[tuple(moved)])
    return None


def _check_matching(page, problems):
    block, canvas, data = _twin(page, "matching")
    names = ("cost_class", "cost_bbox", "cost_giou")
    start = [int(block.locator(f'input[data-role="{n}"]').input_value()) for n in names]
    change = _assignment_change(data, start)
    if change is None:
        problems.append("matching: no slider setting changes the assignment in the stored grid")
        return
    moves, new_id = change
    before = canvas.evaluate(CANVAS_STATE)["url"]
    for axis, value in moves:
        block.locator(f'input[data-role="{names[axis]}"]').fill(str(value))
    rows, cols = data["assignments"][new_id]
    expected = ",".join(f"q{q}\u2192gt{j}" for q, j in zip(rows, cols))
    setting = ", ".join(f"{names[axis]} = {data['grid'][value]:g}" for axis, value in moves)
    if block.get_attribute("data-assignment") != expected:
        problems.append(f"matching: after {setting} the drawn assignment is "
                        f"{block.get_attribute('data-assignment')!r}, precomputed {expected!r}")
    if canvas.evaluate(CANVAS_STATE)["url"] == before:
        problems.append("matching: slider moves that change the assignment left the picture")


@pytest.mark.parametrize("page_info", TWIN_PAGES, ids=[p.slug for p in TWIN_PAGES])
def test_static_explorers_redraw_without_a_kernel(server, browser, page_info):
    url = f"{server}/{page_info.docname}.html"
    problems: list[str] = []
    with _recording(browser) as (page, log):
        response = page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
        assert response is not None and response.ok, f"{url}: {response and response.status}"
        with _waiting(problems):
            page.wait_for_function(
                "() => { const b = document.querySelectorAll('.detr-explorer');"
                " return b.length > 0 && [...b].every(e => e.dataset.ready === 'true'); }",
                timeout=TIMEOUT_MS)
        kinds = page.eval_on_selector_all(".detr-explorer", "els => els.map(e => e.dataset.kind)")
        problems += [f"no {kind} twin on the page" for kind in TWIN_KINDS if kind not in kinds]
        for kind in set(kinds) & set(TWIN_KINDS):
            state = page.locator(f'.detr-explorer[data-kind="{kind}"] canvas').first.evaluate(CANVAS_STATE)
            if state["painted"] < 1000 or state["colors"] < 20:
                problems.append(f"{kind}: the canvas is blank ({state['painted']} painted "
                                f"samples, {state['colors']} colors)")
        if not problems:
            for check in (_check_encoder, _check_decoder, _check_matching):
                check(page, problems)
        page.screenshot(path=str(SCREENSHOTS / f"{page_info.slug}_twins.png"), full_page=True)
    problems += [f"request left 127.0.0.1: {u}" for u in log["requests"] if not _is_local(u)]
    problems += [f"page error: {e}" for e in log["errors"] if e not in KNOWN_PAGE_ERRORS]
    assert not problems, f"{url}:\n" + "\n".join(problems)
