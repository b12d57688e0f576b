"""Items through the API: detail, thumbnails, originals (by id only), classify, stats,
facets, health; and attempts to reach files that are not the library's."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.api_support import Api, demo_api, error_of

pytestmark = [pytest.mark.slow, pytest.mark.both_catalogs]


@pytest.fixture(scope="module")
def api(demo_lib: Any) -> Iterator[Api]:
    with demo_api(demo_lib) as a:
        yield a


def test_item_detail_has_metadata_detections_styles_and_paths(api: Api) -> None:
    item = api.item_id("3-yellow-stars")
    d = api.ok(f"/api/items/{item}")
    assert d["id"] == item and d["kind"] == "image" and len(d["sha256"]) == 64
    assert any("3-yellow-stars" in p for p in d["paths"])
    stars = [x for x in d["detections"] if x["label"] == "star"]
    assert len(stars) >= 2
    for det in d["detections"]:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert {s["stage"] for s in d["stages"]} >= {"detect/yolo", "style"}
    assert d["thumbnail"] == f"/api/items/{item}/thumbnail?size=1024"
    assert d["file"] == f"/api/items/{item}/file"


def test_an_artwork_shows_its_style_scores(api: Api) -> None:
    d = api.ok(f"/api/items/{api.item_id('artworks/mosaic-')}")
    assert d["artwork"] is not None and d["styles"], d
    assert d["styles"][0]["artist"] == "mosaic"


@pytest.mark.parametrize("bad", ["0", "-3", "99999999", "abc", "1.5", "1e3"])
def test_a_bad_item_id_is_404_or_422_in_the_error_shape(api: Api, bad: str) -> None:
    r = api.get(f"/api/items/{bad}")
    assert r.status_code in (404, 422), r.text
    error_of(r, r.status_code)


def test_a_thumbnail_is_made_once_and_remade_when_its_cache_file_is_gone(api: Api) -> None:
    item = api.item_id("2-red-circles")
    r = api.get(f"/api/items/{item}/thumbnail", params={"size": 256})
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    img = Image.open(io.BytesIO(r.content))
    assert max(img.size) <= 256 and img.format == "WEBP"
    sha = api.ok(f"/api/items/{item}")["sha256"]
    cached = api.svc.thumbs.path_for(sha, 256)
    assert cached.is_file()
    made = cached.stat().st_mtime_ns
    assert api.get(f"/api/items/{item}/thumbnail").content == r.content
    assert cached.stat().st_mtime_ns == made  # served from the cache, not remade
    shutil.rmtree(api.svc.config.thumbs_dir)
    again = api.get(f"/api/items/{item}/thumbnail", params={"size": 256})
    assert again.status_code == 200 and cached.is_file()
    big = Image.open(io.BytesIO(api.get(f"/api/items/{item}/thumbnail?size=1024").content))
    d = api.ok(f"/api/items/{item}")
    assert max(big.size) == max(d["width"], d["height"])  # never enlarged


def test_a_thumbnail_size_outside_the_fixed_set_is_refused(api: Api) -> None:
    item = api.item_id("2-red-circles")
    for size in ("100", "4096", "-1", "../../etc/passwd"):
        error_of(api.get(f"/api/items/{item}/thumbnail", params={"size": size}), 422)


def test_the_original_file_comes_back_byte_for_byte(api: Api) -> None:
    item = api.item_id("3-yellow-stars")
    path = api.ok(f"/api/items/{item}")["paths"][0]
    r = api.get(f"/api/items/{item}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == Path(path).read_bytes()


def test_a_file_outside_the_library_roots_is_not_served(api: Api, tmp_path: Any) -> None:
    item = api.item_id("3-yellow-stars")
    assert api.get(f"/api/items/{item}/thumbnail?size=512").status_code == 200  # now cached
    elsewhere = api.with_config(roots=(str(tmp_path),))
    error_of(elsewhere.get(f"/api/items/{item}/file"), 404)
    error_of(elsewhere.get(f"/api/items/{item}/thumbnail?size=512"), 404)  # cache or not
    nowhere = api.with_config(roots=())
    error_of(nowhere.get(f"/api/items/{item}/file"), 403)


def test_a_symlink_in_the_library_that_points_outside_is_not_served(
    api: Api, tmp_path: Any
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "innocent.jpg").symlink_to(secret)
    from api.errors import ApiError
    from api.files import inside, open_servable

    assert not inside(str(lib / "innocent.jpg"), [str(lib)])
    assert inside(str(lib / "x.jpg"), [str(lib)])
    assert not inside(str(lib) + "-other/x.jpg", [str(lib)])  # a sibling with the prefix
    with pytest.raises(ApiError) as refused:
        open_servable([str(lib / "innocent.jpg")], [str(lib)])  # judged on the opened file
    assert refused.value.status == 404
    (lib / "real.jpg").write_bytes(b"\xff\xd8\xff pixels")
    with open_servable([str(lib / "innocent.jpg"), str(lib / "real.jpg")], [str(lib)]) as f:
        assert f.read() == b"\xff\xd8\xff pixels"


ESCAPES = ["../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
           "%2e%2e/%2e%2e/etc/passwd", "....//....//etc/passwd", "file:///etc/passwd",
           "\\..\\..\\etc\\passwd"]  # fmt: skip


@pytest.mark.parametrize("attempt", ESCAPES)
def test_no_parameter_reaches_a_file_outside_the_library(api: Api, attempt: str) -> None:
    urls = [
        f"/api/items/{attempt}", f"/api/items/{attempt}/file",
        f"/api/items/{attempt}/thumbnail", f"/static/{attempt}", f"/{attempt}",
    ]  # fmt: skip
    params = ["q", "like", "path_glob", "has", "tag", "style", "label", "camera", "cursor",
              "after"]  # fmt: skip
    responses = [api.get(u) for u in urls]
    responses += [api.get("/api/search", params={p: attempt}) for p in params]
    responses += [api.get("/api/items/1/thumbnail", params={"size": attempt})]
    for r in responses:
        assert r.status_code in (200, 400, 404, 422), (r.request.url, r.status_code)
        assert b"root:" not in r.content, r.request.url
        if r.status_code == 200:  # a search that matched nothing or a listing: JSON
            assert r.headers["content-type"].startswith("application/json"), r.request.url


def test_classify_an_item_against_labels_and_imagenet(api: Api) -> None:
    item = api.item_id("3-yellow-stars")
    r = api.client.post(f"/api/items/{item}/classify", json={"labels": ["star", "circle"]})
    assert r.status_code == 200, r.text
    got = r.json()["labels"]
    assert {x["label"] for x in got} == {"star", "circle"}
    assert abs(sum(x["score"] for x in got) - 1) < 1e-3
    r = api.client.post(f"/api/items/{item}/classify", json={"imagenet": True, "k": 3})
    assert r.status_code == 200 and len(r.json()["labels"]) == 3
    both = api.client.post(f"/api/items/{item}/classify", json={"labels": ["a", "b"],
                                                                  "imagenet": True})  # fmt: skip
    error_of(both, 422)
    error_of(api.client.post(f"/api/items/{item}/classify", json={"labels": ["only"]}), 422)
    many = [f"label {n}" for n in range(101)]  # each new set costs model time: bounded
    error_of(api.client.post(f"/api/items/{item}/classify", json={"labels": many}), 422)
    error_of(api.client.post("/api/items/99999/classify", json={"imagenet": True}), 404)


def test_classify_an_uploaded_image(api: Api) -> None:
    data = next(api.library.glob("pictures/3-yellow-stars-*.jpg")).read_bytes()
    r = api.client.post("/api/classify", data={"labels": "yellow, red, blue"},
                        files={"file": ("x.jpg", data, "image/jpeg")})  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(r.json()["labels"]) == 3
    long = "x" * 101 + ",y"
    r = api.client.post("/api/classify", data={"labels": long},
                        files={"file": ("x.jpg", data, "image/jpeg")})  # fmt: skip
    error_of(r, 422)


def test_readiness_says_when_the_watcher_has_stopped(api: Api) -> None:
    api.svc.watch_failure = "OSError: disk full"
    try:
        err = error_of(api.get("/api/ready"), 503)
        assert "watcher stopped" in err["message"] and "disk full" in err["message"]
    finally:
        api.svc.watch_failure = None
    assert api.get("/api/ready").status_code == 200


def test_stats_facets_health_and_readiness(api: Api) -> None:
    n = sum(1 for p in api.library.rglob("*") if p.is_file())
    stats = api.ok("/api/stats")
    assert stats["items"]["total"] == n and stats["index"]["vectors"] == n
    facets = api.ok("/api/facets")
    objects = {f["value"]: f["count"] for f in facets["objects"]}
    assert {"star", "circle", "square"} <= set(objects) and all(objects.values())
    assert {f["value"] for f in facets["styles"]} >= {"mosaic"}
    assert facets["kinds"] == [{"value": "image", "count": n}]
    assert api.ok("/api/health") == {"status": "ok"}
    ready = api.ok("/api/ready")
    assert ready["status"] == "ready" and ready["vectors"] == n


def test_a_facet_count_is_what_its_filter_finds(api: Api) -> None:
    facets = api.ok("/api/facets")
    for name, param in (("objects", "has"), ("styles", "style")):
        for f in facets[name]:
            found = api.ok("/api/search", params={param: f["value"], "k": 200})["results"]
            assert len(found) == f["count"], (name, f)


def test_the_openapi_schema_documents_every_route_with_the_error_shape(api: Api) -> None:
    schema = api.ok("/openapi.json")
    paths = schema["paths"]
    for route in ("/api/search", "/api/search/image", "/api/search/audio",
                  "/api/items/{item_id}", "/api/items/{item_id}/thumbnail",
                  "/api/items/{item_id}/file", "/api/items/{item_id}/similar",
                  "/api/items/{item_id}/classify", "/api/classify", "/api/stats",
                  "/api/facets", "/api/health", "/api/ready"):  # fmt: skip
        assert route in paths, route
    for route, ops in paths.items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (route, method, status)
