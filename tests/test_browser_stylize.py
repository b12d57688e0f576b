"""Style transfer on the web page, in a real browser (headless Debian chromium through
Playwright) against a real `everlook serve` over the demo library: from an item, pick a
style (a painting of the library, an artist, a picture file), follow the job live, see the
result beside the original, download it, add it to the library, or cancel it."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.test_browser import (
    TIMEOUT_MS,
    TOKEN,
    Api,
    expect,
    shape_picture,
)

pytestmark = pytest.mark.slow

JOB_MS = 90_000  # a job of the demo settings (64 px, 12 steps) takes seconds on 2 cores
LONG_STEPS = "1000"  # the most a job may ask for: it runs long enough to be cancelled


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`everlook serve` over a demo library of its own (small jobs: 64 px, 12 steps): results
    added to the library become items, which the session's shared demo server must not get.
    It wants a token, so the page must send it everywhere: the event stream, the pictures
    so far, the result and its download."""
    from tests.serving import demo_library, serving

    lib = demo_library(tmp_path_factory.mktemp("stylize-lib"), per_pair=1)
    settings = {**lib.settings, "EVERLOOK_API_TOKEN": TOKEN}
    with serving(settings, str(lib.library), cwd=lib.base) as served:
        yield Api(served)


def post(server: Api, path: str) -> Any:
    with server.served.client() as c:
        res = c.post(path)
    assert res.status_code in (200, 409), res.text
    return res.json()


@pytest.fixture(autouse=True)
def no_job_left_running(server: Api) -> Iterator[None]:
    """A test that fails mid-job leaves nothing running for the next one (one worker)."""
    yield
    busy = server.get("/api/stylize", state=["queued", "running"])["jobs"]
    for job in busy:
        post(server, f"/api/stylize/{job['id']}/cancel")
    deadline = time.monotonic() + 30
    while busy and time.monotonic() < deadline:
        time.sleep(0.2)
        busy = server.get("/api/stylize", state=["queued", "running"])["jobs"]


@pytest.fixture
def page(browser: Any, server: Api) -> Iterator[Any]:
    """A fresh page, its token saved, that fails the test on an uncaught error or a
    Content-Security-Policy violation (the page may have no inline script or style)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.add_init_script(f"localStorage.setItem('everlook.token', {json.dumps(TOKEN)})")
    ctx.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    csp = pg.evaluate("window.__csp")
    ctx.close()
    assert not errors, errors
    assert not csp, csp


# ---------------------------------------------------------------- helpers


def a_photo(server: Api) -> int:
    """A picture of the library that is no artwork: what a person would stylize."""
    hits = server.get("/api/search", q="a red circle", kind="image", k=1)["results"]
    return hits[0]["item_id"]


def open_panel(page: Any, server: Api, item_id: int) -> Any:
    """Open the item's view from a shared link, then its Stylize panel."""
    page.goto(f"{server.url}/#item={item_id}")
    expect(page.locator("#item-view")).to_have_attribute("data-item-id", str(item_id))
    button = page.locator("#stylize-open")
    expect(button).to_be_visible()
    button.click()
    panel = page.locator("#stylize-panel")
    expect(panel).to_be_visible()
    expect(button).to_have_attribute("aria-expanded", "true")
    return panel


def start_and_wait(page: Any, state: str = "done") -> Any:
    """Press Start; wait until the job the page follows is in state. Returns its element."""
    page.locator(".sty-start").click()
    job = page.locator(".sty-job")
    expect(job).to_be_visible()
    expect(job).to_have_attribute("data-state", state, timeout=JOB_MS)
    return job


def api_job(server: Api, job: Any) -> dict[str, Any]:
    return server.get(f"/api/stylize/{job.get_attribute('data-job-id')}")


def the_result_shows(page: Any) -> dict[str, Any]:
    """Wait for the result picture (not a preview) to be on screen; its size and place."""
    page.wait_for_function(
        "() => { const i = document.querySelector('.sty-picture');"
        " return i.dataset.shows?.endsWith('/result') && i.complete && i.naturalWidth > 0; }"
    )
    return page.eval_on_selector(
        ".sty-picture", "i => ({w: i.naturalWidth, h: i.naturalHeight, src: i.src})"
    )


RECORD = """job => {
    window.__seen = [];
    new MutationObserver(() => window.__seen.push({
        state: job.dataset.state, step: +job.dataset.step,
        total: +job.querySelector('progress').max,
        shows: job.querySelector('.sty-picture').dataset.shows || null,
    })).observe(job, {attributes: true, subtree: true});
}"""


# ---------------------------------------------------------------- tests


def test_a_library_painting_styles_the_picture_live_then_the_result_shows_beside_it(page, server):
    item_id = a_photo(server)
    style = server.get("/api/facets")["styles"][0]["value"]
    panel = open_panel(page, server, item_id)
    expect(panel.locator("input[name=sty-source][value=painting]")).to_be_checked()
    expect(panel.locator("input[name=sty-source][value=painting]")).to_be_focused()
    panel.locator(".sty-style").select_option(style)
    artworks = server.get("/api/search", style=style, kind="image", k=12)["results"]
    assert len(artworks) >= 2
    paintings = panel.locator(".sty-painting")
    expect(paintings).to_have_count(len(artworks))
    choice = paintings.nth(1)
    choice.click()
    expect(choice).to_have_attribute("aria-pressed", "true")
    style_item = int(choice.get_attribute("data-item-id"))
    assert style_item == artworks[1]["item_id"]

    # Twice the default steps: time enough to see the picture so far on a fast machine too.
    panel.locator(".sty-settings summary").click()
    panel.locator(".sty-steps").fill("24")

    page.eval_on_selector(".sty-job", RECORD)
    with page.expect_request(lambda r: r.url.endswith("/events")) as events:
        job = start_and_wait(page)
    # The event stream is read with fetch(), which sends the token (EventSource cannot).
    assert events.value.headers.get("authorization") == f"Bearer {TOKEN}"
    result = the_result_shows(page)
    assert max(result["w"], result["h"]) == 64
    assert result["src"].startswith("blob:")  # fetched with the token too
    # The page showed the job as it ran: steps between none and all, and a picture so far.
    seen = page.evaluate("window.__seen")
    running = [s for s in seen if s["state"] == "running"]
    assert any(0 < s["step"] < s["total"] for s in running), seen
    assert any(s["shows"] and "/preview" in s["shows"] for s in running), seen
    assert page.eval_on_selector(".sty-progress", "p => p.value === p.max && p.max === 24")
    expect(job.locator(".sty-status")).to_contain_text("Done")
    # Beside the original: same row, the original on the left.
    page.wait_for_function("() => document.querySelector('.sty-original').naturalWidth > 0")
    left = job.locator(".sty-original").bounding_box()
    right = job.locator(".sty-picture").bounding_box()
    assert left["x"] + left["width"] <= right["x"]
    assert abs(left["y"] - right["y"]) < right["height"]
    expect(job.locator(".sty-cancel")).to_be_hidden()

    jobs = server.get("/api/stylize", item_id=item_id)["jobs"]
    assert jobs[0]["id"] == int(job.get_attribute("data-job-id"))
    assert jobs[0]["state"] == "done"
    assert jobs[0]["style"]["kind"] == "item"
    assert jobs[0]["style"]["item_id"] == style_item
    assert jobs[0]["settings"]["steps"] == jobs[0]["total"] == 24


def test_an_artists_style_added_to_the_library_opens_as_an_item_made_from_that_job(page, server):
    item_id = a_photo(server)
    artist = server.get("/api/facets")["styles"][-1]["value"]
    panel = open_panel(page, server, item_id)
    panel.get_by_text("An artist", exact=True).click()
    expect(panel.locator(".sty-artist")).to_be_visible()
    panel.locator(".sty-artist").select_option(artist)
    job = start_and_wait(page)
    the_result_shows(page)
    made = api_job(server, job)
    assert (made["style"]["kind"], made["style"]["artist"]) == ("artist", artist)
    assert made["style"]["item_id"] is not None  # the exemplar the server chose

    job.locator(".sty-add").click()
    link = job.locator(".sty-open")
    expect(link).to_be_visible(timeout=JOB_MS)
    derived = api_job(server, job)["derived_item_id"]
    assert derived is not None
    assert link.get_attribute("href") == f"#item={derived}"
    link.click()
    expect(page.locator("#item-view")).to_have_attribute("data-item-id", str(derived))
    page.wait_for_function("() => document.getElementById('item-img').naturalWidth > 0")
    expect(page.locator("#stylize-panel")).to_be_hidden()  # the panel belongs to the item
    origin = page.locator(".derived-from")
    expect(origin).to_have_attribute("data-job-id", str(made["id"]))
    expect(origin).to_contain_text(artist)
    detail = server.get(f"/api/items/{derived}")
    assert detail["derived_from"]["job_id"] == made["id"]
    assert detail["derived_from"]["item_id"] == item_id


def test_a_style_from_a_picture_file_runs_until_cancelled(page, server, tmp_path):
    item_id = a_photo(server)
    panel = open_panel(page, server, item_id)
    panel.get_by_text("A picture file", exact=True).click()
    style = shape_picture(tmp_path, "green", "star", 5)
    panel.locator(".sty-file").set_input_files(str(style))
    expect(panel.locator(".sty-file-preview")).to_be_visible()
    expect(panel.locator(".sty-drop")).to_contain_text(style.name)
    panel.locator(".sty-settings summary").click()
    panel.locator(".sty-steps").fill(LONG_STEPS)

    job = start_and_wait(page, "running")
    page.wait_for_function(
        "() => +document.querySelector('.sty-job').dataset.step >= 1", timeout=JOB_MS
    )
    expect(job.locator(".sty-cancel")).to_be_focused()  # Start's form went: focus moved on
    job.locator(".sty-cancel").click()
    expect(job).to_have_attribute("data-state", "cancelled")
    expect(job.locator(".sty-status")).to_contain_text("Cancelled")
    expect(job.locator(".sty-cancel")).to_be_hidden()
    expect(job.locator(".sty-download")).to_be_hidden()
    expect(job.locator(".sty-again")).to_be_focused()

    cancelled = api_job(server, job)
    assert cancelled["state"] == "cancelled"
    assert cancelled["style"]["kind"] == "upload"
    assert cancelled["total"] == int(LONG_STEPS)
    assert 1 <= cancelled["step"] < cancelled["total"]
    assert cancelled["result"] is None

    job.locator(".sty-again").click()  # back to the form, the file still chosen
    expect(panel.locator(".sty-form")).to_be_visible()
    expect(job).to_be_hidden()
    expect(panel.locator(".sty-drop")).to_contain_text(style.name)


def test_on_a_phone_a_dropped_style_gives_a_result_that_downloads_as_a_png(page, server, tmp_path):
    page.set_viewport_size({"width": 390, "height": 844})
    item_id = a_photo(server)
    panel = open_panel(page, server, item_id)
    panel.get_by_text("A picture file", exact=True).click()
    style = shape_picture(tmp_path, "blue", "triangle", 9)
    data = base64.b64encode(style.read_bytes()).decode()
    searches: list[str] = []
    page.on("request", lambda r: "/api/search/" in r.url and searches.append(r.url))
    page.eval_on_selector(
        ".sty-drop",
        """(zone, data) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "style.png", {type: "image/png"}));
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true,
                                                        cancelable: true}));
            }
        }""",
        data,
    )
    expect(panel.locator(".sty-drop")).to_contain_text("style.png")
    job = start_and_wait(page)
    the_result_shows(page)
    assert not searches  # the drop chose a style; it did not search with the picture
    # All of it fits the phone's width, the result beside the original.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#item-view").evaluate("e => e.scrollWidth <= e.clientWidth")
    for part in (".sty-original", ".sty-picture", ".sty-download", ".sty-add"):
        box = job.locator(part).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, part
    left = job.locator(".sty-original").bounding_box()
    assert left["x"] + left["width"] <= job.locator(".sty-picture").bounding_box()["x"]

    download = job.locator(".sty-download")
    expect(download).to_be_visible()
    with page.expect_download() as d:
        download.click()
    stem = Path(server.get(f"/api/items/{item_id}")["paths"][0]).stem
    assert d.value.suggested_filename == f"{stem}-stylized-{job.get_attribute('data-job-id')}.png"
    with Image.open(io.BytesIO(d.value.path().read_bytes())) as img:
        assert img.format == "PNG"
        assert max(img.size) == 64
