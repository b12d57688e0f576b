"""The cold text query (everlook.quick): the full path's answer, without its imports, and
the full path whenever it cannot be sure of giving that answer."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_library

QUERY = "a red square -green"
HEAVY = ("torch", "open_clip", "sqlalchemy", "pydantic_settings", "alembic", "faiss.contrib")


def full_path_rows(parts: Any, text: str, k: int) -> list[dict[str, Any]]:
    from search.present import result_rows

    s = parts.settings
    hits = parts.engine().by_text(text, k, None, None, s.negative_weight)
    return result_rows(parts.catalog, hits, s.artwork_min_score)


@pytest.fixture
def indexed(env: dict[str, str], cli: Any, tmp_path: Path) -> Path:
    make_library(tmp_path / "lib", 14)
    assert cli("index", str(tmp_path / "lib")).exit_code == 0
    return tmp_path


def test_a_cold_query_answers_as_the_full_path_without_torch_sqlalchemy_or_pydantic(
    indexed: Path, env: dict[str, str], parts: Any
):
    expected = full_path_rows(parts, QUERY, 6)
    code = (
        "import json, sys\n"
        "from everlook import quick\n"
        f"rows = quick.text_search({QUERY!r}, 6, None)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'rows': rows, 'heavy': heavy}))\n"
    )
    repo = Path(__file__).resolve().parent.parent
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=indexed, capture_output=True,
                          text=True, env={**clean, **env, "PYTHONPATH": str(repo)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["heavy"] == []
    assert got["rows"] == json.loads(json.dumps(expected, default=str))
    assert len(got["rows"]) == 6 and got["rows"][0]["path"]


def test_the_command_prints_the_same_rows_either_way(indexed: Path, cli: Any, monkeypatch):
    code, quick_rows = cli.json("search", QUERY, "-k", "5")
    monkeypatch.setenv("EVERLOOK_CLIP_BACKEND", "torch")  # the full path, PyTorch
    code2, full_rows = cli.json("search", QUERY, "-k", "5")
    assert code == code2 == 0
    assert [r["item_id"] for r in quick_rows] == [r["item_id"] for r in full_rows]
    for a, b in zip(quick_rows, full_rows, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_an_index_that_no_longer_matches_the_catalog_leaves_the_query_to_the_full_path(
    indexed: Path, env: dict[str, str], parts: Any
):
    from everlook import quick

    assert quick.text_search(QUERY, 4, None) is not None
    db = Path(env["EVERLOOK_HOME"]) / "catalog.db"
    with sqlite3.connect(db) as conn:  # as if an indexer had just removed a vector
        conn.execute("DELETE FROM embeddings WHERE id = (SELECT max(id) FROM embeddings)")
    assert quick.text_search(QUERY, 4, None) is None
    index = Path(env["EVERLOOK_HOME"]) / "index" / "clip.faiss"
    index.unlink()
    assert quick.text_search(QUERY, 4, None) is None


@pytest.mark.parametrize(
    "setting", [("EVERLOOK_CLIP_BACKEND", "torch"), ("EVERLOOK_NEGATIVE_WEIGHT", "lots"),
                ("EVERLOOK_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")],
)  # fmt: skip
def test_settings_the_cold_path_does_not_serve_leave_the_query_to_the_full_path(
    indexed: Path, monkeypatch: pytest.MonkeyPatch, setting: tuple[str, str]
):
    from everlook import quick

    assert quick.text_search(QUERY, 4, None) is not None
    monkeypatch.setenv(*setting)
    assert quick.text_search(QUERY, 4, None) is None


def test_a_catalog_the_cold_path_cannot_read_leaves_the_query_to_the_full_path(
    indexed: Path, env: dict[str, str]
):
    from everlook import quick

    db = Path(env["EVERLOOK_HOME"]) / "catalog.db"
    for damage in (b"", b"not a database at all" * 200):
        db.write_bytes(damage)
        assert quick.text_search(QUERY, 4, None) is None
    assert quick.text_search("-only -negatives", 4, None) is None
