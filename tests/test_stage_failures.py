"""Stages when things go wrong: a failing item, a missing or broken model, a file that
can no longer be read (with a name that is not UTF-8). Failures are recorded per
(item, stage), retried up to the limit, and never stop other items or stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.stages import StageRunner
from tests.helpers import make_library
from tests.test_stages import Spy, make_parts, statuses

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


def test_a_stage_failing_on_one_item_is_recorded_retried_and_blocks_nothing_else(
    env, monkeypatch, tmp_path: Path
):
    parts = make_parts(monkeypatch, ["style", "labels"], stage_max_attempts="3")
    make_library(tmp_path / "lib", 5)
    pipeline = parts.pipeline()
    runner: StageRunner = pipeline.stages
    bad = 3
    runner.stages = [Spy(runner.stages[0], fail_on={bad}), runner.stages[1]]
    pipeline.run([str(tmp_path / "lib")])
    style = statuses(parts, "style")
    assert style[bad] == ("failed", 1)
    assert all(v == ("done", 1) for i, v in style.items() if i != bad)
    assert all(v[0] == "done" for v in statuses(parts, "labels").values())
    detail = parts.catalog.item(bad)
    assert any("cannot handle item 3" in (s["error"] or "") for s in detail["stages"])
    for attempt in (2, 3):
        runner.backfill()
        assert statuses(parts, "style")[bad] == ("failed", attempt)
    runner.backfill()  # given up after 3 attempts: no more tries
    assert statuses(parts, "style")[bad] == ("failed", 3)
    assert runner.pending(runner.stages[0])["failed"] == 1


def test_a_missing_stage_model_stops_that_stage_only_and_says_why(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["detect/yolo", "style"]))
    monkeypatch.setenv("EVERLOOK_YOLO_MODEL", "no-such-detector.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import enrich.detect as det

    monkeypatch.setattr(det, "offline_reason", lambda host: "offline in this test")
    make_library(tmp_path / "lib", 3)
    code, summary = cli.json("index", str(tmp_path / "lib"))
    assert code == 2 and summary["new"] == 3, "the items are indexed all the same"
    assert "no-such-detector.pt" in summary["stages"]["unavailable"]["detect/yolo"]
    assert summary["stages"]["done"]["style"] == 3


def test_a_model_that_cannot_be_built_stops_its_stage_without_spending_attempts(
    cli, env, monkeypatch, tmp_path: Path
):
    import shutil

    model_dir = tmp_path / "models"
    shutil.copytree(env["EVERLOOK_MODEL_DIR"], model_dir)
    (model_dir / "ultralytics").mkdir()
    (model_dir / "ultralytics" / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.setenv("EVERLOOK_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["detect/yolo"]))
    monkeypatch.setenv("EVERLOOK_YOLO_MODEL", "broken.pt")
    make_library(tmp_path / "lib", 3)
    code, summary = cli.json("index", str(tmp_path / "lib"))
    assert code == 2 and summary["new"] == 3
    assert "could not be loaded" in summary["stages"]["unavailable"]["detect/yolo"]
    progress = cli.json("stats")[1]["progress"]["detect/yolo"]
    assert (progress["failed"], progress["retrying"], progress["pending"]) == (0, 0, 3)


def test_an_unreadable_non_utf8_file_is_a_recorded_stage_failure_not_a_crash(
    cli, env, monkeypatch, tmp_path: Path
):
    import os

    from tests.helpers import picture, save

    lib = tmp_path / "lib"
    odd = os.fsdecode(os.path.join(os.fsencode(lib), b"caf\xe9.jpg"))
    save(picture(3), Path(odd), "JPEG")
    make_library(lib, 1)
    assert cli("index", str(lib)).exit_code == 0
    Path(odd).write_bytes(b"not a picture any more")  # changed after indexing
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["detect/yolo"]))
    monkeypatch.setenv("EVERLOOK_YOLO_MODEL", "yolo11n.yaml")
    code, summary = cli.json("enrich")
    assert code == 1 and summary["done"] == {"detect/yolo": 1}
    assert summary["failed"] == {"detect/yolo": 1}
    item = cli.json("show", odd)[1]
    err = next(s["error"] for s in item["stages"] if s["stage"] == "detect/yolo")
    assert "caf\\xe9.jpg" in err
    code, summary = cli.json("enrich", "--retry-failed")
    assert summary["failed"] == {"detect/yolo": 1}, "tried again, and failed again"
