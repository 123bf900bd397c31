"""The page in a real headless browser: Debian's ``/usr/bin/chromium`` driven by Playwright.

Screenshots of every page go to ``tests/ui/artifacts/`` (ignored by git). Waits are on page
conditions (an element, an attribute), never on time.
"""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any, Iterator

import pytest
from ui_support import ARTIFACTS

from datapipe.meta.locks import step_lock

CHROMIUM = os.environ.get("DATAPIPE_UI_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        message = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def open_page(page: Any, url: str) -> None:
    """Open ``url`` and wait until the page has rendered its route."""
    before = page.evaluate("() => document.getElementById('main')?.dataset.renders ?? null")
    page.goto(url)
    wait_rendered(page, before if page.url.split("#")[0] == url.split("#")[0] else None)


def wait_rendered(page: Any, previous: Any = None) -> None:
    page.wait_for_function(
        "prev => { const m = document.getElementById('main');"
        " return m && m.dataset.renders && m.dataset.renders !== prev; }",
        arg=previous,
    )


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_graph_shows_step_states(failing_app, serve, page):
    url = serve(failing_app).url
    open_page(page, url + "/")
    assert page.get_attribute('g[data-node="s:check"]', "data-state") == "failed"
    assert page.get_attribute('g[data-node="s:measure"]', "data-state") == "up_to_date"
    assert page.get_attribute('g[data-node="s:generate_items"]', "data-state") == "unknown"
    assert page.locator("g.node.table").count() == 4
    assert page.locator("path.edge").count() == 6
    assert page.inner_text('#steps-table tr[data-step="check"]').split("\t")[2:6] == ["failed", "30", "25", "25"]
    shot(page, "graph")
    page.click('g[data-node="s:check"]')
    page.wait_for_selector(".traceback")
    assert page.url.endswith("#/step/check")


def test_graph_shows_a_step_running_elsewhere(failing_app, serve, page):
    url = serve(failing_app).url
    with step_lock(failing_app.ds.meta_dbconn, "check"):
        open_page(page, url + "/")
        assert page.get_attribute('g[data-node="s:check"]', "data-state") == "running"
        shot(page, "graph-running")


def test_failed_step_page(failing_app, serve, page):
    url = serve(failing_app).url
    open_page(page, url + "/#/step/check")
    assert page.inner_text('[data-count="failed"] dd') == "25"
    assert page.inner_text('[data-count="pending"] dd') == "25"
    assert page.locator(".error-item").count() == 5  # one per failed batch
    first = page.locator(".error-item").first
    assert first.locator(".error-text").inner_text().startswith("ValueError: bad item(s)")
    trace = first.locator(".traceback").inner_text()
    assert trace.startswith("Traceback (most recent call last)") and "in check" in trace
    keys = page.locator(".failed-key").all_inner_texts()
    assert len(keys) == 25 and all(k.startswith('{"id":') for k in keys)
    for button in ("#run-step", "#run-failed", "#reset-step"):
        assert page.is_visible(button)
    shot(page, "step-failed")


def test_table_page_pages_and_filters(failing_app, serve, page):
    url = serve(failing_app).url
    open_page(page, url + "/#/table/items?page_size=10")
    shot(page, "table-items")
    assert page.locator("#rows tr").count() == 11  # header + 10
    assert page.inner_text("#page-info") == "rows 1–10 of 30 (page 1)"
    assert page.is_disabled("#prev") and not page.is_disabled("#next")
    shot(page, "table-items")
    previous = page.get_attribute("#main", "data-renders")
    page.click("#next")
    wait_rendered(page, previous)
    assert page.inner_text("#page-info") == "rows 11–20 of 30 (page 2)"
    assert page.locator("#rows tr").nth(1).locator("td").first.inner_text() == "10"
    previous = page.get_attribute("#main", "data-renders")
    page.fill("#filter", "name=item4")
    page.press("#filter", "Enter")
    wait_rendered(page, previous)
    assert page.locator("#rows tr").count() == 2
    assert page.locator("#rows tr").nth(1).locator("td").nth(1).inner_text() == "item4"
    shot(page, "table-filtered")
    previous = page.get_attribute("#main", "data-renders")
    page.fill("#filter", "id=abc")
    page.click("#apply-filter")
    wait_rendered(page, previous)
    assert "'id' holds int values" in page.inner_text("#rows-error")


def test_image_table_shows_thumbnails(failing_app, serve, page):
    url = serve(failing_app).url
    open_page(page, url + "/#/table/images")
    thumbs = page.locator("img.thumb")
    assert thumbs.count() == 4
    widths = [thumbs.nth(i).evaluate("img => img.naturalWidth") for i in range(4)]
    assert widths == [64, 80, 96, 96]  # 96 px thumbnails of 64..112 px images
    shot(page, "table-images")


def test_run_from_the_page_shows_progress_and_summary(quickstart_app, serve, page):
    url = serve(quickstart_app).url
    open_page(page, url + "/")
    transform = quickstart_app.steps[1].name
    assert page.get_attribute(f'g[data-node="s:{transform}"]', "data-state") == "up_to_date"  # no input rows yet
    page.click("#run-all")
    page.wait_for_selector("#run-summary-table")
    n = len(quickstart_app.ds.get_table("products").get_metadata())
    assert page.inner_text("#run-title").endswith("success")
    row = page.locator(f'#run-summary-table tr[data-step="{transform}"] td').all_inner_texts()
    assert row[1:5] == [str(n), str(n), "0", "0"]
    progress = page.locator(f'.progress[data-run-step="{transform}"]')
    assert "done" in progress.get_attribute("class")
    assert progress.locator(".progress-text").inner_text().startswith("1/1 batches")
    node = f'g[data-node="s:{transform}"]'
    page.wait_for_function(f"() => document.querySelector('{node}').dataset.state === 'up_to_date'")
    shot(page, "run-finished")


def test_run_failed_keys_and_reset_from_the_step_page(failing_app, serve, page):
    served = serve(failing_app)
    open_page(page, served.url + "/#/step/check")
    page.click("#run-failed")
    page.wait_for_selector("#run-summary-table")
    assert page.locator('#run-summary-table tr[data-step="check"] td').all_inner_texts()[1] == "25"
    assert page.inner_text("#run-title").endswith("failed")  # the same keys fail again
    shot(page, "run-failed-keys")
    open_page(page, served.url + "/#/step/measure")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#reset-step")
    assert failing_app.steps[3].meta.get_counts()["processed"] == 4  # cancelled: nothing changed
    previous = page.get_attribute("#main", "data-renders")
    page.once("dialog", lambda d: d.accept())
    page.click("#reset-step")
    wait_rendered(page, previous)
    assert page.inner_text('[data-count="processed"] dd') == "0"
    assert page.inner_text('[data-count="pending"] dd') == "4"


def test_read_only_hides_every_action(failing_app, serve, page):
    url = serve(failing_app, read_only=True).url
    open_page(page, url + "/#/step/check")
    assert page.is_visible("#read-only-badge") and not page.is_visible("#run-all")
    assert page.locator("button.action:visible, button.danger:visible").count() == 0
    shot(page, "read-only-step")


def test_token_is_required(failing_app, serve, page):
    url = serve(failing_app, token="browser-token").url
    response = page.goto(url + "/")
    assert response.status == 401 and "a valid token is required" in page.inner_text("body")
    page.goto(url + "/?token=browser-token")  # sets the cookie and redirects to /
    wait_rendered(page)
    assert page.url == url + "/"
    assert page.get_attribute('g[data-node="s:check"]', "data-state") == "failed"


def test_progress_updates_while_the_run_goes(failing_pipeline, serve, page):
    failing_pipeline.GATE = threading.Event()  # `measure` waits for it inside its first batch
    app = failing_pipeline.app
    app.steps[3].reset_metadata(app.ds)  # 4 keys to process, 2 batches
    url = serve(app).url
    open_page(page, url + "/#/step/measure")
    page.click("#run-step")
    text = '.progress[data-run-step="measure"] .progress-text'
    page.wait_for_function(f"() => document.querySelector('{text}')?.textContent === '0/2 batches'")
    assert page.inner_text("#run-title") == "Run 1: running" and page.is_disabled("#run-all")
    page.wait_for_selector('dd [data-state="running"]')  # the step page shows the step running
    assert page.is_disabled("#run-step")
    shot(page, "run-in-progress")
    failing_pipeline.GATE.set()
    page.wait_for_selector("#run-summary-table")
    assert page.inner_text(text).startswith("2/2 batches · 4 keys · 0 failed")
    assert page.inner_text("#run-title") == "Run 1: success" and not page.is_disabled("#run-all")
