"""Paths are bytes: matched exactly (case, wildcards), and every name the OS allows
round-trips through index, display, --like, moves and deletes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from catalog.jobs import rename_paths
from tests.helpers import make_library, picture, save
from tests.test_watch import Watching, watching  # noqa: F401  (fixture)

# A Latin-1 "é" on its own is not valid UTF-8: the kind of name an archive copied from
# an old system carries. Python hands it around as a lone surrogate (PEP 383).
pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


RAW_NAME = b"caf\xe9 \xff photo.jpg"


def raw_path(folder: Path) -> str:
    return os.fsdecode(os.path.join(os.fsencode(folder), RAW_NAME))


def test_a_folder_differing_only_in_case_keeps_its_items_when_the_other_is_indexed(
    cli, tmp_path: Path
):
    upper, lower = tmp_path / "x" / "Photos", tmp_path / "x" / "photos"
    make_library(upper, 2)
    make_library(lower, 3, start=10)
    assert cli.json("index", str(lower))[0] == 0
    code, summary = cli.json("index", str(upper))
    assert code == 0 and summary["removed"] == 0
    stats = cli.json("stats")[1]
    assert stats["items"]["total"] == 5 and stats["paths"] == 5


def test_underscore_and_percent_in_names_are_not_wildcards(cli, tmp_path: Path):
    a, b = tmp_path / "a_b", tmp_path / "axb"
    c, d = tmp_path / "c%", tmp_path / "cdd"
    for n, folder in enumerate((a, b, c, d)):
        make_library(folder, 1, start=20 + n)
    for folder in (b, d):
        assert cli.json("index", str(folder))[0] == 0
    for folder in (a, c):
        code, summary = cli.json("index", str(folder))
        assert code == 0 and summary["removed"] == 0
    assert cli.json("stats")[1]["paths"] == 4


def test_a_catalog_rename_moves_only_the_exact_folder(parts, tmp_path: Path):
    upper, lower = tmp_path / "Photos", tmp_path / "photos"
    make_library(upper, 1)
    make_library(lower, 1, start=5)
    parts.pipeline().run([str(upper), str(lower)])
    rename_paths(parts.catalog.engine, str(upper), str(tmp_path / "Moved"))
    paths = sorted(p for ps in parts.catalog.paths_for([1, 2]).values() for p in ps)
    assert any(p.startswith(str(lower) + "/") for p in paths), paths
    assert not any(p.startswith(str(upper) + "/") for p in paths), paths


def test_a_name_that_is_not_utf8_is_indexed_shown_found_moved_and_deleted(
    cli, run_everlook, tmp_path: Path
):
    lib = tmp_path / "lib"
    make_library(lib, 2)
    odd = raw_path(lib)
    save(picture(99), Path(odd), "JPEG", quality=90)
    code, summary = cli.json("index", str(lib))
    assert code == 0 and summary["new"] == 3 and summary["failed"] == []
    # Shown escaped for a terminal, never a crash of the printer.
    res = run_everlook("search", "--like", odd, "-k", "5")
    assert res.returncode == 0, res.stderr
    res = run_everlook("search", "--like", os.path.join(lib, "a", "img001.jpg"), "-k", "5")
    assert res.returncode == 0, res.stderr
    assert "caf\\xe9 \\xff photo.jpg" in res.stdout
    # JSON keeps the exact bytes recoverable (surrogate escapes).
    rows = json.loads(run_everlook("search", "--like", odd, "--json").stdout)
    assert rows and all(r["path"] != odd for r in rows)
    moved = os.fsdecode(os.path.join(os.fsencode(lib), b"sub", RAW_NAME))
    os.makedirs(os.path.dirname(moved))
    os.rename(odd, moved)
    code, summary = cli.json("index", str(lib))
    assert code == 0 and summary["moved"] == 1 and summary["new"] == 0
    os.unlink(moved)
    code, summary = cli.json("index", str(lib))
    assert code == 0 and summary["removed"] == 1
    assert cli.json("stats")[1]["items"]["total"] == 2


def test_a_file_that_cannot_be_stored_is_one_failure_not_the_end_of_the_run(
    cli, parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    lib = tmp_path / "lib"
    make_library(lib, 3)
    bad = lib / "a" / "img001.jpg"
    real = parts.catalog.add_items

    def refuse_one(items: Any, stage: str) -> Any:
        if any(i.path == str(bad) for i in items):
            raise ValueError("the database refused this row")
        return real(items, stage)

    pipeline = parts.pipeline()
    monkeypatch.setattr(pipeline.catalog, "add_items", refuse_one)
    report = pipeline.run([str(lib)])
    assert report.new == 2
    assert [p for p, _ in report.failed] == [str(bad)]
    assert "refused" in report.failed[0][1]


def test_a_watched_rename_of_a_non_utf8_name_follows_the_file(watching: Watching):  # noqa: F811
    odd = raw_path(watching.lib)
    save(picture(7), Path(odd), "JPEG")
    watching.settle()
    item = watching.item(Path(odd))
    assert item is not None
    dest = os.fsdecode(os.fsencode(odd) + b".renamed.jpg")
    os.rename(odd, dest)
    watching.settle()
    assert watching.item(Path(dest)) == item
    assert watching.item(Path(odd)) is None


def test_the_api_serves_a_name_that_is_not_utf8_exactly(parts, tmp_path: Path):
    """JSON carries the PEP 383 escape (valid JSON, read back exactly); the file itself
    comes by id. Encoding such a name as UTF-8 would have made every answer naming it a
    500."""
    from fastapi.testclient import TestClient

    from api import create_app

    lib = tmp_path / "lib"
    save(picture(3), Path(raw_path(lib)))
    parts.pipeline().run([str(lib)])
    app = create_app(parts.api_services([str(lib)]), background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/search", params={"q": "a photo"})
        assert r.status_code == 200, r.text
        assert r.content.isascii() and b"\\udce9" in r.content
        hit = json.loads(r.content)["results"][0]
        assert os.fsencode(hit["path"]) == os.path.join(os.fsencode(lib), RAW_NAME)
        item = client.get(f"/api/items/{hit['item_id']}")
        assert item.status_code == 200 and item.json()["paths"] == [hit["path"]]
        original = client.get(f"/api/items/{hit['item_id']}/file")
        assert original.status_code == 200
        assert original.content == Path(hit["path"]).read_bytes()
        assert client.get("/api/stats").status_code == 200
        thumb = client.get(f"/api/items/{hit['item_id']}/thumbnail")
        assert thumb.status_code == 200
