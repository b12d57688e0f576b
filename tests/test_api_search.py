"""Searching through the API: text (with -negatives), images, items, filters, paging."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import Api, demo_api, error_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(demo_lib: Any, request: pytest.FixtureRequest) -> Iterator[Api]:
    """The app over the demo library, its catalog on SQLite, then on PostgreSQL."""
    lib = demo_lib if request.param == "sqlite" else request.getfixturevalue("demo_lib_pg")
    with demo_api(lib) as a:
        yield a


def names(page: dict[str, Any]) -> list[str]:
    return [r["path"].rsplit("/", 1)[-1] for r in page["results"]]


def png_of(scene_kw: dict[str, Any], seed: int = 7) -> bytes:
    from tools import synthworld

    img = synthworld.render(synthworld.random_scene(random.Random(seed), **scene_kw), seed)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_a_text_query_ranks_the_pictures_it_describes_first(api: Api) -> None:
    page = api.ok("/api/search", params={"q": "a red circle", "k": 5})
    top = names(page)
    assert "red-circle" in top[0], top
    assert all("-red-" in n or "circle" in n for n in top), top
    scores = [r["score"] for r in page["results"]]
    assert scores == sorted(scores, reverse=True)
    first = page["results"][0]
    assert first["thumbnail"] == f"/api/items/{first['item_id']}/thumbnail?size=256"
    assert first["rank"] == 1 and first["kind"] == "image" and first["paths"]


def test_a_negative_word_pushes_what_it_names_down_the_list(api: Api) -> None:
    plain = names(api.ok("/api/search", params={"q": "a circle", "k": 12}))
    away = names(api.ok("/api/search", params={"q": "a circle -red", "k": 12}))
    assert sum("-red-" in n for n in away) < sum("-red-" in n for n in plain), (plain, away)
    assert sum("circle" in n for n in away) >= 6, away  # still circles


def test_only_negative_words_is_a_bad_request(api: Api) -> None:
    error_of(api.get("/api/search", params={"q": "-red -blue"}), 400)


def test_an_uploaded_image_finds_its_indexed_copy_first_then_pictures_like_it(api: Api) -> None:
    """Decoded exactly as when indexing (JPEG draft included), a file finds itself at
    score 1; what follows shares its colour or its shape."""
    original = next(api.library.glob("pictures/3-yellow-stars-*.jpg"))
    r = api.client.post("/api/search/image", params={"k": 4},
                        files={"file": ("q.jpg", original.read_bytes(), "image/jpeg")})  # fmt: skip
    assert r.status_code == 200, r.text
    first, *rest = r.json()["results"]
    assert first["path"] == str(original) and first["score"] > 0.999, first
    assert all("yellow" in n or "star" in n for n in names({"results": rest})), rest


def test_text_steers_an_image_query(api: Api) -> None:
    data = png_of({"shape": "square", "colour": "green"})
    files = {"file": ("q.png", data, "image/png")}
    alone = names(api.client.post("/api/search/image", params={"k": 10}, files=files).json())
    steered = api.client.post("/api/search/image", params={"k": 10}, files=files,
                              data={"q": "red"})  # fmt: skip
    assert steered.status_code == 200, steered.text
    red = lambda ns: sum("-red-" in n for n in ns)  # noqa: E731
    assert red(names(steered.json())) > red(alone), (alone, names(steered.json()))


def test_more_like_this_leaves_the_item_out_and_finds_its_kind(api: Api) -> None:
    item = api.item_id("3-yellow-stars")
    page = api.ok(f"/api/items/{item}/similar", params={"k": 5})
    ids = [r["item_id"] for r in page["results"]]
    assert item not in ids and len(ids) == 5
    assert sum("yellow" in n for n in names(page)) >= 2, names(page)
    via_search = api.ok("/api/search", params={"like": item, "k": 5})
    assert [r["item_id"] for r in via_search["results"]] == ids


def test_every_result_of_a_has_filter_contains_that_object(api: Api) -> None:
    page = api.ok("/api/search", params={"q": "a picture", "has": "star", "k": 10})
    assert page["results"]
    assert all(r["objects"].get("star", 0) >= 1 for r in page["results"]), page
    two = api.ok("/api/search", params={"q": "a picture", "has": "star:2", "k": 10})
    assert all(r["objects"].get("star", 0) >= 2 for r in two["results"]), two


def test_filters_alone_list_matching_items_newest_first(api: Api) -> None:
    page = api.ok("/api/search", params={"path_glob": "*/artworks/*", "k": 50})
    ids = [r["item_id"] for r in page["results"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 30  # 5 styles x per_style 6
    assert all(r["score"] is None for r in page["results"])
    assert api.ok("/api/search", params={"kind": "audio"})["results"] == []
    assert api.ok("/api/search", params={"q": "a star", "after": "2999-01-01"})["results"] == []


def test_a_style_filter_keeps_only_artworks_in_that_style(api: Api) -> None:
    page = api.ok("/api/search", params={"q": "an artwork", "style": "mosaic", "k": 10})
    assert page["results"]
    assert all(any(s["artist"] == "mosaic" for s in r["styles"]) for r in page["results"])
    assert sum("mosaic" in n for n in names(page)) >= len(page["results"]) // 2


@pytest.mark.parametrize(
    "params",
    [{"has": "star:0"}, {"has": ":2"}, {"after": "yesterday"}, {"kind": "video"},
     {"k": 0}, {"k": 201}, {"like": "abc"}, {"min_style": 2}],
)  # fmt: skip
def test_bad_parameters_are_refused_in_the_error_shape(api: Api, params: dict[str, Any]) -> None:
    err = error_of(api.get("/api/search", params={"q": "x", **params}), 422)
    assert err["code"] == "unprocessable"


def test_an_unknown_item_is_not_found(api: Api) -> None:
    error_of(api.get("/api/search", params={"like": 987654}), 404)
    error_of(api.get("/api/items/987654/similar"), 404)


def collect_pages(api: Api, params: dict[str, Any], pages: int) -> list[int]:
    ids: list[int] = []
    cursor = None
    for _ in range(pages):
        page = api.ok("/api/search", params={**params, **({"cursor": cursor} if cursor else {})})
        ids += [r["item_id"] for r in page["results"]]
        cursor = page["next_cursor"]
        assert cursor
    return ids


@pytest.mark.parametrize(
    "query", [{"q": "a blue moon"}, {"q": "a circle", "path_glob": "*/pictures/*"}, {}]
)
def test_three_pages_neither_skip_nor_repeat(api: Api, query: dict[str, Any]) -> None:
    paged = collect_pages(api, {**query, "k": 7}, 3)
    whole = [r["item_id"] for r in api.ok("/api/search", params={**query, "k": 21})["results"]]
    assert paged == whole and len(set(paged)) == 21


def test_pages_stay_whole_when_a_better_match_arrives_between_them(api: Api) -> None:
    """A new item ranking above the cursor belongs to pages already shown: the next page
    continues where the last one ended instead of repeating its last item."""
    import numpy as np

    q = {"q": "a purple cross", "k": 6}
    whole = [r["item_id"] for r in api.ok("/api/search", params={**q, "k": 12})["results"]]
    first = api.ok("/api/search", params=q)
    vec, _ = api.svc.text_vector("a purple cross")
    newcomer = 10**9
    api.svc.engine.index.add(np.array([newcomer]), vec[None, :])
    try:
        second = api.ok("/api/search", params={**q, "cursor": first["next_cursor"]})
    finally:
        api.svc.engine.index.remove([newcomer])
    got = [r["item_id"] for r in first["results"] + second["results"]]
    assert got == whole, (got, whole)


def test_a_cursor_that_was_not_given_out_is_a_bad_request(api: Api) -> None:
    from search.query import Cursor

    error_of(api.get("/api/search", params={"q": "x", "cursor": "not-a-cursor"}), 400)
    listing = api.ok("/api/search", params={"k": 2})["next_cursor"]
    error_of(api.get("/api/search", params={"q": "x", "cursor": listing}), 400)
    given = api.ok("/api/search", params={"q": "x", "k": 2})["next_cursor"]
    assert api.get("/api/search", params={"q": "x", "cursor": given}).status_code == 200
    forged = Cursor(-2.0, 0, 0).encode()  # unsigned: would page through everything
    error_of(api.get("/api/search", params={"q": "x", "cursor": forged}), 400)
    resigned = Cursor(-2.0, 0, 0).encode(b"another key")
    error_of(api.get("/api/search", params={"q": "x", "cursor": resigned}), 400)


def test_a_path_glob_with_many_wildcards_is_refused(api: Api) -> None:
    error_of(api.get("/api/search", params={"path_glob": "*a" * 20}), 422)
    assert api.get("/api/search", params={"path_glob": "*/artworks/*"}).status_code == 200


def test_min_score_drops_weaker_results(api: Api) -> None:
    page = api.ok("/api/search", params={"q": "a red circle", "k": 50, "min_score": 0.5})
    assert all(r["score"] >= 0.5 for r in page["results"])
    assert len(page["results"]) < 50


@pytest.mark.parametrize(
    "params",
    [{"q": "a red\x00 circle"}, {"path_glob": "/x\x00*"}, {"has": "st\x00ar"},
     {"tag": "sky\x00"}, {"label": "\x00"}, {"style": "mo\x00net"}, {"camera": "\x00"},
     {"q": "a star", "has": ["star", "ci\x00rcle:2"]}],
)  # fmt: skip
def test_a_nul_character_in_a_text_parameter_is_a_clear_422(
    api: Api, params: dict[str, Any]
) -> None:
    """PostgreSQL stores no NUL in a text (SQLite would): refused up front and named,
    on either catalog, never a 500 (the PostgreSQL catalog answered 500 to label=%00)."""
    err = error_of(api.get("/api/search", params=params), 422)
    assert any("NUL" in d["problem"] for d in err["details"]), err
    form = api.client.post("/api/search/image", data={"q": "a\x00"},
                           files={"file": ("q.png", png_of({"shape": "star"}))})  # fmt: skip
    assert any("NUL" in d["problem"] for d in error_of(form, 422)["details"])
