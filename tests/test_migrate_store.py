"""`everlook migrate-store`: an embedded library (SQLite + FAISS) moved onto PostgreSQL
and Milvus (issue [9] point 8) answers exactly as before, its ids, stage results and
style jobs kept; the target must be empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import make_library

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")


def test_a_library_moved_onto_postgresql_and_milvus_answers_as_before(
    cli, env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, milvus_uri: str
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, 10)
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["style"]))
    assert cli("index", str(lib)).exit_code == 0
    code, before = cli.json("search", "a blue square", "-k", "5")
    assert code == 0 and len(before) == 5
    code, stats_before = cli.json("stats")
    res = cli("migrate-store", "--database-url", pg_url, "--milvus-uri", milvus_uri,
              "--milvus-collection", "moved")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "10 vectors in Milvus" in res.output and "EVERLOOK_VECTOR_BACKEND=milvus" in res.output
    # The library here is as it was; the moved one answers alike.
    monkeypatch.setenv("EVERLOOK_DATABASE_URL", pg_url)
    monkeypatch.setenv("EVERLOOK_VECTOR_BACKEND", "milvus")
    monkeypatch.setenv("EVERLOOK_MILVUS_URI", milvus_uri)
    monkeypatch.setenv("EVERLOOK_MILVUS_COLLECTION", "moved")
    monkeypatch.setenv("EVERLOOK_HOME", str(tmp_path / "elsewhere"))  # another machine
    code, after = cli.json("search", "a blue square", "-k", "5")
    assert code == 0
    assert [(h["item_id"], h["path"]) for h in after] == [(h["item_id"], h["path"]) for h in before]
    assert [h["score"] for h in after] == pytest.approx([h["score"] for h in before], abs=1e-5)
    code, stats_after = cli.json("stats")
    for key in ("items", "paths"):
        assert stats_after[key] == stats_before[key], key
    # New items get new ids after the copied ones (the sequences moved past them).
    make_library(lib / "more", 1, start=500)
    assert cli("index", str(lib)).exit_code == 0
    code, stats_more = cli.json("stats")
    assert stats_more["items"]["total"] == stats_before["items"]["total"] + 1
    # A second move into the same, now filled, database is refused.
    monkeypatch.setenv("EVERLOOK_DATABASE_URL", f"sqlite:///{tmp_path / 'home' / 'catalog.db'}")
    monkeypatch.setenv("EVERLOOK_VECTOR_BACKEND", "faiss")
    again = cli("migrate-store", "--database-url", pg_url)
    assert again.exit_code == 2 and "not empty" in again.output
