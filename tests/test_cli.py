"""The CLI as a user meets it: search options, stats, exit codes, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_library, picture, save

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


@pytest.fixture
def indexed(cli: Any, tmp_path: Path) -> list[Path]:
    files = make_library(tmp_path / "lib", 10)
    res = cli("index", str(tmp_path / "lib"))
    assert res.exit_code == 0, res.output
    assert "10 new" in res.stdout
    return files


def test_text_search_returns_ranked_paths_scores_and_ids(cli, indexed):
    code, hits = cli.json("search", "a blue square", "-k", "4")
    assert code == 0 and len(hits) == 4
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["path"] in map(str, indexed) and isinstance(h["item_id"], int) for h in hits)


def test_image_search_finds_the_same_picture_first(cli, indexed, tmp_path: Path):
    query = save(picture(3), tmp_path / "query.png")  # same picture as img003.jpg, as PNG
    code, hits = cli.json("search", "--image", str(query), "-k", "3")
    assert code == 0
    assert hits[0]["path"].endswith("img003.jpg")
    assert hits[0]["score"] > 0.99


def test_like_by_path_and_by_id_agree_and_leave_the_item_out(cli, indexed):
    code, by_path = cli.json("search", "--like", str(indexed[0]), "-k", "5")
    assert code == 0 and len(by_path) == 5
    assert str(indexed[0]) not in [h["path"] for h in by_path]
    from everlook.settings import Settings
    from everlook.wiring import open_catalog

    item_id = open_catalog(Settings()).item_id_for_path(str(indexed[0]))
    code, by_id = cli.json("search", "--like", str(item_id), "-k", "5")
    assert [h["item_id"] for h in by_id] == [h["item_id"] for h in by_path]


def _home() -> str:
    import os

    return os.environ["EVERLOOK_HOME"]


def test_min_score_cuts_off_weaker_results(cli, indexed):
    _, all_hits = cli.json("search", "--like", str(indexed[1]), "-k", "9")
    cut = (all_hits[3]["score"] + all_hits[4]["score"]) / 2
    _, kept = cli.json("search", "--like", str(indexed[1]), "-k", "9", "--min-score", str(cut))
    assert kept == all_hits[:4]


def test_human_output_is_a_table_with_paths(cli, indexed):
    res = cli("search", "anything", "-k", "2")
    assert res.exit_code == 0
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines[0].split()[:4] == ["#", "score", "id", "path"]
    assert len(lines) == 3 and "/lib/" in lines[1]


def test_search_needs_exactly_one_query(cli, indexed):
    assert cli("search").exit_code == 2
    assert cli("search", "x", "--like", str(indexed[0])).exit_code == 2


def test_like_with_an_unknown_path_is_a_usage_error(cli, indexed, tmp_path):
    res = cli("search", "--like", str(tmp_path / "not-indexed.jpg"))
    assert res.exit_code == 2
    assert "not in the catalog" in res.output


def test_image_query_that_is_not_an_image_is_a_usage_error(cli, indexed, tmp_path):
    bad = tmp_path / "q.jpg"
    bad.write_text("hello")
    res = cli("search", "--image", str(bad))
    assert res.exit_code == 2 and "not a recognised image format" in res.output


def test_indexing_a_missing_folder_is_a_usage_error(cli, tmp_path):
    assert cli("index", str(tmp_path / "nope")).exit_code == 2


def test_stats_reports_items_stages_failures_index_and_models(cli, indexed, tmp_path):
    (tmp_path / "lib" / "bad.jpg").write_text("nope")
    assert cli("index", str(tmp_path / "lib")).exit_code == 1
    code, st = cli.json("stats")
    assert code == 0
    assert st["items"] == {"total": 10, "by_kind": {"image": 10}}
    assert st["stages"] == {"embed/clip": {"done": 10}}
    assert st["failures"][0]["path"].endswith("bad.jpg")
    assert "not a recognised image format" in st["failures"][0]["reason"]
    assert st["index"]["vectors"] == 10 and st["index"]["bytes"] > 0
    assert st["models"] == [
        {"space": "clip", "model_id": "open_clip/everlook-tiny/seed0", "dim": 32, "count": 10}
    ]
    text = cli("stats").stdout
    assert "items 10" in text and "bad.jpg" in text and "open_clip/everlook-tiny/seed0" in text


def test_index_summary_lists_failures_with_reasons(cli, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 1)
    (lib / "zero.jpg").touch()
    res = cli("index", str(lib))
    assert res.exit_code == 1
    assert "1 new" in res.stdout and "1 failed" in res.stdout
    assert "zero.jpg: empty file" in res.stdout


def test_include_and_exclude_globs_and_hidden_folders(cli, tmp_path):
    lib = tmp_path / "lib"
    save(picture(1), lib / "keep.jpg")
    save(picture(2), lib / "raw" / "skip.jpg")
    save(picture(3), lib / ".thumbs" / "hidden.jpg")
    save(picture(4), lib / "pic.PNG")
    save(picture(5), lib / "other.webp")
    code, summary = cli.json(
        "index", str(lib), "--exclude", "raw", "--include", "*.jpg", "--include", "*.png"
    )
    assert code == 0 and summary["new"] == 2  # keep.jpg and pic.PNG (case-insensitive)
    code, summary = cli.json("index", str(lib), "--hidden", "--include", "*.jpg")
    assert summary["new"] == 2  # raw/skip.jpg and .thumbs/hidden.jpg now too


def test_missing_weights_error_says_which_file_to_put_where(cli, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never download in tests
    monkeypatch.setenv("EVERLOOK_CLIP_MODEL", "ViT-B-32")
    monkeypatch.setenv("EVERLOOK_CLIP_PRETRAINED", "laion2b_s34b_b79k")
    make_library(tmp_path / "lib", 1)
    res = cli("index", str(tmp_path / "lib"))
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "open_clip/ViT-B-32/laion2b_s34b_b79k/open_clip_model.safetensors" in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert "EVERLOOK_MODEL_DIR" in msg


def test_db_upgrade_reports_the_revision(cli):
    import migrations

    res = cli("db", "upgrade")
    assert res.exit_code == 0 and f"revision {migrations.head()}" in res.stdout
    assert migrations.head() == "0010"  # and the head is the newest file (test_catalog)


def test_the_console_script_runs_in_a_fresh_process(run_everlook, tmp_path):
    make_library(tmp_path / "lib", 3)
    res = run_everlook("index", str(tmp_path / "lib"))
    assert res.returncode == 0, res.stderr
    res = run_everlook("search", "a photo", "-k", "2", "--json")
    assert res.returncode == 0 and res.stdout.count('"item_id"') == 2
