"""The web page in a real browser (headless Debian chromium through Playwright) against a
real `everlook serve` on the demo library: what a person sees when they search, drop a
picture, open an item, filter, page, use a phone, or need a token."""

from __future__ import annotations

import base64
import io
import random
import shutil
import urllib.parse
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
if CHROMIUM is None:
    pytest.skip("no chromium binary (apt install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from tools import synthworld  # noqa: E402

TOKEN = "test-token-3f9a"
TIMEOUT_MS = 30_000
# Assertions on what the page shows wait for it (a click's effect follows a fetch):
# asserting is_visible() right after a click raced the item view on a busy CI machine.
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


# ---------------------------------------------------------------- servers


class Api:
    """The server under test (tests.serving.Served), called directly, not through the page."""

    def __init__(self, served: Any) -> None:
        self.url = served.url
        self.served = served

    def get(self, path: str, **params: Any) -> Any:
        with self.served.client() as c:
            res = c.get(path, params=params)
        assert res.status_code == 200, res.text
        return res.json()

    def post_image(self, path: Path, **form: str) -> Any:
        with self.served.client() as c:
            res = c.post("/api/search/image", files={"file": path.open("rb")}, data=form)
        assert res.status_code == 200, res.text
        return res.json()


@pytest.fixture(scope="module")
def server(demo_server: Any) -> Api:
    """`everlook serve` over the demo library (tests/conftest.py: 72 pictures of coloured
    shapes, 30 artworks in five styles; detections and styles enriched)."""
    return Api(demo_server)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A server that wants a token, over a small demo library of its own: a server serves
    thumbnails only from the library folders it watches, and two servers cannot watch
    through one data dir (the writer lock)."""
    from tests.serving import demo_library, serving

    lib = demo_library(tmp_path_factory.mktemp("token-lib"), per_pair=1, per_style=0)
    settings = {**lib.settings, "EVERLOOK_API_TOKEN": TOKEN}
    with serving(settings, str(lib.library), cwd=lib.base) as served:
        yield Api(served)


# ---------------------------------------------------------------- browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own storage) that fails the test on any uncaught script error."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def grid_ids(page: Any) -> list[int]:
    return [
        int(x)
        for x in page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.itemId)")
    ]


def grid_paths(page: Any) -> list[str]:
    return page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.path)")


def wait_grid(page: Any, ids: list[int]) -> None:
    """Wait until the grid starts with these item ids, in this order (the page may already
    have added the next page below them, when the first did not fill the screen)."""
    page.wait_for_function(
        "ids => JSON.stringify([...document.querySelectorAll('.result')]"
        ".slice(0, ids.length).map(e => +e.dataset.itemId)) === JSON.stringify(ids)",
        arg=ids,
    )


def is_search(path: str, **want: str | None) -> Any:
    """A predicate on responses: the API call to path whose query holds want (a first
    page, unless want names a cursor: cursor=None matches any next page)."""

    def pred(res: Any) -> bool:
        u = urllib.parse.urlsplit(res.url)
        q = urllib.parse.parse_qs(u.query)
        if ("cursor" in q) != ("cursor" in want):
            return False  # a next page (the page fills the screen on its own), or not one
        return u.path == path and all(q.get(k) == [v] for k, v in want.items() if v is not None)

    return pred


def open_page(page: Any, server: Api, query: str = "") -> list[dict[str, Any]]:
    """Load the page; returns the first page of results it asked for."""
    with page.expect_response(is_search("/api/search")) as r:
        page.goto(server.url + "/" + query)
    results = r.value.json()["results"]
    wait_grid(page, [x["item_id"] for x in results])
    return results


def shape_picture(tmp: Path, colour: str, shape: str, seed: int) -> Path:
    rng = random.Random(seed)
    img = synthworld.render(synthworld.random_scene(rng, shape=shape, colour=colour), seed)
    path = tmp / f"query-{colour}-{shape}.png"
    img.save(path)
    return path


def name_says(path: str, colour: str | None = None, shape: str | None = None) -> bool:
    """Demo file names spell what they show: 2-red-circles-003.jpg, mosaic-1-red-circle-004.png."""
    parts = Path(path).name.split("-")
    colour_ok = colour is None or colour in parts
    shape_ok = shape is None or any(p in (shape, synthworld.plural(shape, 2)) for p in parts)
    return colour_ok and shape_ok


def like_query(paths: list[str], colour: str, shape: str, exact: int, near: int) -> None:
    """The first `exact` results show colour and shape; the first `near` at least one of them
    (the demo library holds two pictures of each colour and shape, and a toy model)."""
    assert all(name_says(p, colour, shape) for p in paths[:exact]), paths[:near]
    near_ok = [name_says(p, colour) or name_says(p, shape=shape) for p in paths[:near]]
    assert all(near_ok), paths[:near]


# ---------------------------------------------------------------- tests


def test_typing_a_query_shows_the_matching_thumbnails_best_first(page, server):
    open_page(page, server)
    with page.expect_response(is_search("/api/search", q="a red circle")) as r:
        page.fill("#q", "a red circle")
    api_results = r.value.json()["results"]
    wait_grid(page, [x["item_id"] for x in api_results])

    cards = page.eval_on_selector_all(
        ".result",
        "els => els.map(e => ({path: e.dataset.path, alt: e.querySelector('img').alt,"
        " score: e.querySelector('.score').textContent}))",
    )
    paths = [c["path"] for c in cards]
    like_query(paths, "red", "circle", exact=1, near=5)
    assert all(c["alt"] == Path(c["path"]).name for c in cards)
    scores = [float(c["score"]) for c in cards]
    assert scores == sorted(scores, reverse=True)
    for shown, x in zip(scores, api_results, strict=False):
        assert abs(shown - x["score"]) <= 0.005 + 1e-9
    # The thumbnails really load (the page asks the API, which answers with pictures).
    page.wait_for_function("() => document.querySelector('.result img').naturalWidth > 0")
    assert "q=a+red+circle" in page.url  # the address keeps the search


def test_dropping_a_picture_shows_pictures_of_the_same_colour_and_shape(page, server, tmp_path):
    open_page(page, server)
    triangle = shape_picture(tmp_path, "blue", "triangle", 3)
    with page.expect_response(is_search("/api/search/image")) as r:
        page.set_input_files("#file-input", str(triangle))
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    like_query(grid_paths(page), "blue", "triangle", exact=2, near=5)
    expect(page.locator("#query-pill")).to_be_visible()

    # Back to words; then a real drop (a File in a DataTransfer, dropped on the page).
    with page.expect_response(is_search("/api/search")):
        page.click("#query-pill-clear")
    expect(page.locator("#query-pill")).to_be_hidden()
    star = shape_picture(tmp_path, "yellow", "star", 11)
    data = base64.b64encode(star.read_bytes()).decode()
    with page.expect_response(is_search("/api/search/image")) as r:
        page.evaluate(
            """data => {
                const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], "star.png", {type: "image/png"}));
                for (const type of ["dragenter", "dragover", "drop"]) {
                    const init = {dataTransfer: dt, bubbles: true, cancelable: true};
                    document.body.dispatchEvent(new DragEvent(type, init));
                }
            }""",
            data,
        )
    image_only = [x["item_id"] for x in r.value.json()["results"]]
    wait_grid(page, image_only)
    like_query(grid_paths(page), "yellow", "star", exact=2, near=5)
    expect(page.locator("#drop-overlay")).to_be_hidden()

    # Words typed now go along with the picture (form field q): the grid shows what the
    # API answers for picture and words together.
    with page.expect_response(is_search("/api/search/image")) as r:
        page.fill("#q", "a blue circle")
    combined = [x["item_id"] for x in server.post_image(star, q="a blue circle")["results"]]
    assert combined != image_only
    assert [x["item_id"] for x in r.value.json()["results"]] == combined
    wait_grid(page, combined)


def test_opening_an_item_shows_its_detection_boxes_where_the_objects_are(page, server):
    results = open_page(page, server, "?has=star")
    target = next(x for x in results if sum(x["objects"].values()) >= 2)
    detail = server.get(f"/api/items/{target['item_id']}")
    dets = detail["detections"]

    page.click(f'.result[data-item-id="{target["item_id"]}"]')
    view = page.locator("#item-view")
    expect(view).to_be_visible()
    boxes = view.locator(".box")
    boxes.nth(len(dets) - 1).wait_for()
    page.wait_for_function("() => document.getElementById('item-img').naturalWidth > 0")
    assert boxes.count() == len(dets)
    assert sorted(b.get_attribute("data-label") for b in boxes.all()) == sorted(
        d["label"] for d in dets
    )
    for b in boxes.all():
        expect(b).to_be_visible()
    # Each box sits where its fractions say, over the picture.
    img = view.locator("#item-img").bounding_box()
    for b, d in zip(boxes.all(), dets, strict=True):
        bb = b.bounding_box()
        x0, y0, x1, _ = d["box"]
        assert abs(bb["x"] - (img["x"] + x0 * img["width"])) < 3
        assert abs(bb["y"] - (img["y"] + y0 * img["height"])) < 3
        assert abs(bb["width"] - (x1 - x0) * img["width"]) < 3
    assert view.locator(".tag").count() == len(detail["tags"])
    assert view.locator(".path").all_inner_texts() == detail["paths"]
    assert page.url.endswith(f"#item={target['item_id']}")

    page.keyboard.press("Escape")
    view.wait_for(state="hidden")
    assert "#item=" not in page.url


def test_an_artwork_shows_its_style_bars(page, server):
    hits = server.get("/api/search", q="a mosaic artwork", style="mosaic", k=5)["results"]
    assert hits, "no mosaic artwork in the demo library"
    detail = server.get(f"/api/items/{hits[0]['item_id']}")
    page.goto(f"{server.url}/#item={detail['id']}")  # a shared link opens the item
    bars = page.locator("#item-view .style-bar")
    bars.first.wait_for()
    assert [b.get_attribute("data-artist") for b in bars.all()] == [
        s["artist"] for s in detail["styles"]
    ]
    top = page.locator(
        f'#item-view .style-bar[data-artist="{detail["styles"][0]["artist"]}"] .bar-fill'
    )
    assert top.evaluate("e => e.getBoundingClientRect().width") > 0


def test_a_filter_chip_keeps_only_items_that_have_that_object(page, server):
    open_page(page, server)
    chip = page.locator('.chip[data-facet="has"][data-value="star"]')
    assert chip.get_attribute("aria-pressed") == "false"
    assert chip.locator(".count").inner_text().strip()
    with page.expect_response(is_search("/api/search", has="star")) as r:
        chip.click()
    assert chip.get_attribute("aria-pressed") == "true"
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    ids = grid_ids(page)
    assert ids
    for item_id in ids:
        labels = [d["label"] for d in server.get(f"/api/items/{item_id}")["detections"]]
        assert "star" in labels, (item_id, labels)

    with page.expect_response(is_search("/api/search")) as r:
        chip.click()
    assert chip.get_attribute("aria-pressed") == "false"
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    assert any("star" not in x["objects"] for x in r.value.json()["results"])


def test_load_more_pages_through_results_without_duplicates(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    # Without IntersectionObserver the page only pages on the button (no scroll paging).
    ctx.add_init_script("delete window.IntersectionObserver")
    page = ctx.new_page()
    try:
        first = open_page(page, server)
        k = len(first)
        expected, cursor = [], None
        for _ in range(3):
            got = server.get("/api/search", k=k, **({"cursor": cursor} if cursor else {}))
            expected += [x["item_id"] for x in got["results"]]
            cursor = got["next_cursor"]
        assert len(expected) == 3 * k and cursor, "the demo library holds too few items"

        for n in (2, 3):
            page.click("#load-more")
            page.wait_for_function(
                "n => document.querySelectorAll('.result').length >= n", arg=n * k
            )
        page.wait_for_load_state("networkidle")
        ids = grid_ids(page)
        assert len(ids) == 3 * k == len(set(ids))
        assert ids == expected
    finally:
        ctx.close()


def test_scrolling_near_the_bottom_loads_the_next_page(page, server):
    # 60 results (?k=60) reach well below the screen, so nothing loads until we scroll.
    first = open_page(page, server, "?k=60")
    assert len(first) == 60
    page.wait_for_timeout(300)
    assert len(grid_ids(page)) == 60
    with page.expect_response(is_search("/api/search", k="60", cursor=None)) as r:
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    second = [x["item_id"] for x in r.value.json()["results"]]
    page.wait_for_function("n => document.querySelectorAll('.result').length >= n", arg=60 + 1)
    ids = grid_ids(page)
    assert ids[60:] == second and len(ids) == len(set(ids))


def test_the_page_fits_a_phone_screen(browser, server):
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        open_page(page, server)
        page.wait_for_function("() => document.querySelectorAll('.chip').length > 0")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        columns = page.evaluate(
            "getComputedStyle(document.getElementById('results'))"
            ".gridTemplateColumns.split(' ').length"
        )
        assert 2 <= columns <= 3
        lefts = {round(b.bounding_box()["x"]) for b in page.locator(".result").all()[:6]}
        assert len(lefts) >= 2

        page.locator(".result").first.click()
        view = page.locator("#item-view")
        view.wait_for()
        page.wait_for_function("() => document.getElementById('item-img').naturalWidth > 0")
        box = view.bounding_box()
        assert box["x"] >= 0 and box["y"] >= 0
        assert box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
        assert box["width"] >= 380  # full screen
        img = view.locator("#item-img").bounding_box()
        assert img["x"] >= 0 and img["x"] + img["width"] <= 390
        assert img["y"] >= box["y"] and img["y"] + img["height"] <= 844  # none of it cut off
        assert view.evaluate("e => e.scrollWidth <= e.clientWidth")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        ctx.close()


def test_the_keyboard_alone_finds_and_opens_an_item(page, server):
    open_page(page, server)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    with page.expect_response(is_search("/api/search", q="blue")) as r:
        page.keyboard.type("blue")
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    second = grid_ids(page)[1]
    assert page.evaluate("document.activeElement.dataset.itemId") == str(second)
    page.keyboard.press("Enter")
    page.locator("#item-view").wait_for()
    page.wait_for_function(
        "id => document.getElementById('item-view').dataset.itemId === String(id)", arg=second
    )
    page.keyboard.press("Escape")
    page.locator("#item-view").wait_for(state="hidden")
    assert page.evaluate("document.activeElement.dataset.itemId") == str(second)


def test_a_sound_search_shows_the_servers_message(page, server, tmp_path):
    open_page(page, server)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    clip = tmp_path / "clip.wav"
    clip.write_bytes(buf.getvalue())
    before = grid_ids(page)
    with page.expect_response(
        lambda res: urllib.parse.urlsplit(res.url).path == "/api/search/audio"
    ) as r:
        page.set_input_files("#file-input", str(clip))
    assert r.value.status == 409  # the demo server has no ImageBind space
    message = r.value.json()["error"]["message"]
    assert "imagebind" in message
    status = page.locator("#status")
    page.wait_for_function(
        "m => document.getElementById('status').textContent.includes(m)", arg=message
    )
    assert "error" in (status.get_attribute("class") or "")
    assert grid_ids(page)[: len(before)] == before  # the grid keeps what it showed
    expect(page.locator("#query-pill")).to_be_hidden()  # and the search it answers


def test_with_a_token_the_page_asks_for_it_then_shows_results(page, token_server):
    page.goto(token_server.url + "/")
    form = page.locator("#token-form")
    form.wait_for()
    assert page.locator(".result").count() == 0
    page.fill("#token-input", TOKEN)
    with page.expect_response(is_search("/api/search")) as r:
        page.locator("#token-form button[type=submit]").click()
    assert r.value.ok
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    expect(form).to_be_hidden()
    assert page.evaluate("localStorage.getItem('everlook.token')") == TOKEN
    # Thumbnails need the header, so they come through object URLs.
    page.wait_for_function(
        "() => { const i = document.querySelector('.result img');"
        " return i.src.startsWith('blob:') && i.naturalWidth > 0; }"
    )
    page.reload()
    page.locator(".result").first.wait_for()
    expect(form).to_be_hidden()
