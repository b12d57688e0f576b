"""Stages over items: searchable first, decoded once, backfilled, re-queued exactly,
failures isolated and retried, progress reported. Real stages: YOLO built from its
config (random weights), style scores and ImageNet labels over the tiny CLIP model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalog.results import StageOutput
from indexer.stages import Stage, Work
from tests.helpers import make_library

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


ALL = ["detect/yolo", "style", "labels"]


def make_parts(monkeypatch: pytest.MonkeyPatch, stages: list[str], **extra: str) -> Any:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(stages))
    monkeypatch.setenv("EVERLOOK_YOLO_MODEL", "yolo11n.yaml")  # real architecture, random
    monkeypatch.setenv("EVERLOOK_YOLO_CONFIDENCE", "0.0")  # random weights: keep what it says
    for k, v in extra.items():
        monkeypatch.setenv(f"EVERLOOK_{k.upper()}", v)
    return Parts(Settings())


def statuses(parts: Any, stage: str) -> dict[int, tuple[str, int]]:
    from sqlalchemy import select

    from catalog.models import StageStatus

    with parts.catalog.Session() as s:
        rows = s.execute(
            select(StageStatus.item_id, StageStatus.status, StageStatus.attempts).where(
                StageStatus.stage == stage
            )
        )
        return {i: (str(st.value if hasattr(st, "value") else st), a) for i, st, a in rows}


class Spy:
    """Wraps a real stage: records what it saw, and can fail on chosen items."""

    def __init__(self, inner: Stage, fail_on: set[int] | None = None, check: Any = None) -> None:
        self.inner = inner
        self.fail_on = fail_on or set()
        self.check = check
        self.seen: list[int] = []
        self.name, self.kinds, self.needs = inner.name, inner.kinds, inner.needs
        self.image_side = inner.image_side

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def run(self, batch: Any) -> list[StageOutput]:
        self.seen.extend(w.item_id for w in batch)
        if self.check:
            self.check(batch)
        bad = [w.item_id for w in batch if w.item_id in self.fail_on]
        if bad:
            raise RuntimeError(f"cannot handle item {bad[0]}")
        return self.inner.run(batch)


def test_items_are_searchable_before_their_enrichment_runs(env, monkeypatch, tmp_path: Path):
    parts = make_parts(monkeypatch, ALL)
    make_library(tmp_path / "lib", 5)
    pipeline = parts.pipeline()
    assert pipeline.stages is not None
    checked: list[int] = []

    def embedded_and_indexed(batch: Any) -> None:
        ids = parts.index.store.ids().tolist()
        for w in batch:
            assert w.item_id in ids, "enrichment ran before the item was in the index"
            assert parts.catalog.embedding(w.item_id, "clip") is not None
            checked.append(w.item_id)

    runner = pipeline.stages
    runner.stages = [Spy(s, check=embedded_and_indexed) for s in runner.stages]
    report = pipeline.run([str(tmp_path / "lib")])
    assert report.new == 5 and sorted(set(checked)) == sorted(parts.index.store.ids().tolist())
    for stage in ALL:
        assert [st for st, _ in statuses(parts, stage).values()] == ["done"] * 5, stage
    detail = parts.catalog.item(checked[0])
    assert {"style", "artwork", "imagenet"} <= set(detail["labels"])
    assert all(0 <= v <= 1 for d in detail["detections"] for v in d["box"])


def test_each_picture_is_decoded_once_per_run_for_every_stage(env, monkeypatch, tmp_path: Path):
    import indexer.pipeline as pl
    import indexer.stages as st

    parts = make_parts(monkeypatch, ALL)
    make_library(tmp_path / "lib", 6)
    calls = {"pipeline": 0, "stages": 0}
    real = pl.decode_image

    def counting(where: str) -> Any:
        def decode(*a: Any, **k: Any) -> Any:
            calls[where] += 1
            return real(*a, **k)

        return decode

    monkeypatch.setattr(pl, "decode_image", counting("pipeline"))
    monkeypatch.setattr(st, "decode_image", counting("stages"))
    pipeline = parts.pipeline()
    pipeline.run([str(tmp_path / "lib")])
    pipeline.stages.backfill()
    assert calls == {"pipeline": 6, "stages": 0}
    assert len(statuses(parts, "detect/yolo")) == 6


def test_a_stage_enabled_later_backfills_existing_items(cli, env, monkeypatch, tmp_path: Path):
    make_library(tmp_path / "lib", 4)
    assert cli("index", str(tmp_path / "lib")).exit_code == 0
    progress = cli.json("stats")[1]["progress"]
    assert set(progress) == {"embed/clip"}  # nothing else enabled yet
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["style", "labels"]))
    before = cli.json("stats")[1]["progress"]
    assert before["style"]["pending"] == 4 and before["style"]["done"] == 0
    code, summary = cli.json("enrich", "--stage", "style")
    assert code == 0 and summary["done"] == {"style": 4}
    after = cli.json("stats")[1]["progress"]
    assert (after["style"]["done"], after["style"]["pending"]) == (4, 0)
    assert after["labels"]["pending"] == 4, "only the stage asked for ran"
    res = cli("index", str(tmp_path / "lib"))  # an index run backfills what is left
    assert res.exit_code == 0, res.output
    assert cli.json("stats")[1]["progress"]["labels"]["done"] == 4


def test_changing_a_stage_model_requeues_exactly_that_stage(env, monkeypatch, tmp_path: Path):
    parts = make_parts(monkeypatch, ["style", "labels"])
    make_library(tmp_path / "lib", 4)
    parts.pipeline().run([str(tmp_path / "lib")])
    labels_before = statuses(parts, "labels")
    changed = make_parts(
        monkeypatch, ["style", "labels"], artists=json.dumps(["Claude Monet", "Paul Klee"])
    )
    style, labels = changed.stage("style"), changed.stage("labels")
    assert style.model_id != parts.stage("style").model_id
    runner = changed.stage_runner()
    assert runner.pending(style)["pending"] == 4
    assert runner.pending(labels)["pending"] == 0
    spies = [Spy(s) for s in runner.stages]
    runner.stages = spies
    runner.backfill()
    assert sorted(spies[0].seen) == sorted(labels_before) and spies[1].seen == []
    assert statuses(changed, "labels") == labels_before  # untouched: same attempts
    detail = changed.catalog.item(next(iter(labels_before)))
    assert {x["label"] for x in detail["labels"]["style"]} <= {"Claude Monet", "Paul Klee"}


def test_backfill_step_does_one_batch_and_reports_when_idle(env, monkeypatch, tmp_path):
    parts = make_parts(monkeypatch, [], batch_size="2")
    make_library(tmp_path / "lib", 3)
    parts.pipeline().run([str(tmp_path / "lib")])
    runner = make_parts(monkeypatch, ["style"], batch_size="2").stage_runner()
    assert runner.backfill_step() is True
    assert runner.pending(runner.stages[0])["done"] == 2
    assert runner.backfill_step() is True
    assert runner.backfill_step() is False
    assert runner.pending(runner.stages[0])["done"] == 3


def test_show_prints_objects_labels_and_stage_status(cli, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["style", "labels"]))
    files = make_library(tmp_path / "lib", 2)
    assert cli("index", str(tmp_path / "lib")).exit_code == 0
    code, detail = cli.json("show", str(files[0]))
    assert code == 0 and detail["paths"] == [str(files[0])]
    assert len(detail["labels"]["imagenet"]) == 5 and len(detail["labels"]["style"]) == 3
    assert {s["stage"]: s["status"] for s in detail["stages"]} == {
        "embed/clip": "done", "style": "done", "labels": "done"
    }  # fmt: skip
    text = cli("show", str(detail["id"])).stdout
    assert "imagenet" in text and "stage    style done" in text


@pytest.mark.slow
def test_classify_ranks_given_labels_and_imagenet_as_percentages(cli, tmp_path: Path):
    files = make_library(tmp_path / "lib", 1)
    assert cli("index", str(tmp_path / "lib")).exit_code == 0
    code, rows = cli.json("classify", str(files[0]), "--labels", "cat, dog ,bird,cat")
    assert code == 0 and [r["label"] for r in rows] != [] and len(rows) == 3
    assert sum(r["score"] for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    code, rows = cli.json("classify", str(files[0]), "--imagenet", "-k", "7")
    assert code == 0 and len(rows) == 7
    assert cli("classify", str(files[0])).exit_code == 2
    assert cli("classify", str(files[0]), "--labels", "cat").exit_code == 2


def test_stage_inputs_follow_what_the_stage_needs(env, monkeypatch, tmp_path):
    parts = make_parts(monkeypatch, [])
    make_library(tmp_path / "lib", 2)
    parts.pipeline().run([str(tmp_path / "lib")])
    runner = make_parts(monkeypatch, ["detect/yolo", "style"]).stage_runner()
    det, style = runner.stages
    assert det.needs == "image" and style.needs == "clip" and runner.image_side == 640
    works = runner._inputs(style, [1, 2])
    assert all(w.image is None and w.vector is not None for w in works)
    vec = np.frombuffer(parts.catalog.embedding(1, "clip")[1], dtype=np.float32)
    assert np.array_equal(works[0].vector, vec)
    works = runner._inputs(det, [1, 2])
    assert all(isinstance(w, Work) and max(w.image.size) <= 640 for w in works)


def test_the_watcher_embeds_new_files_first_and_enriches_them_when_idle(
    env, monkeypatch, tmp_path: Path
):
    import threading

    from indexer.scan import ScanRules
    from indexer.watch import WatchOptions
    from tests.helpers import picture, save
    from tests.test_watch import wait_for

    parts = make_parts(monkeypatch, ["style", "labels"])
    lib = tmp_path / "lib"
    lib.mkdir()
    rules = ScanRules(parts.settings.include)
    watcher = parts.watcher([str(lib)], rules, WatchOptions(quiet_seconds=0.2))
    assert watcher.pipeline.inline_stages is False
    watcher.start()
    thread = threading.Thread(target=watcher.run_forever, daemon=True)
    thread.start()
    try:
        path = save(picture(5), lib / "new.jpg")
        item = wait_for(lambda: parts.catalog.item_id_for_path(str(path)), what="indexed")
        wait_for(
            lambda: len(statuses(parts, "labels")) == 1 and len(statuses(parts, "style")) == 1,
            what="background enrichment",
        )
        assert {s["stage"] for s in parts.catalog.item(item)["stages"]} == {
            "embed/clip", "style", "labels"
        }  # fmt: skip
    finally:
        watcher.stop()
        thread.join(timeout=10)


@pytest.mark.slow
def test_panoptic_tags_from_detectron2_are_stored_shown_and_filterable(
    cli, env, monkeypatch, tmp_path: Path, shared_images: Path
):
    """Panoptic FPN from its own config, random weights saved where real ones go, run by
    `everlook index` on real photos; its tags then filter searches exactly."""
    import shutil

    from tests.test_segmenter_contract import needs, save_detectron2

    needs("detectron2")
    model_dir = tmp_path / "models"
    shutil.copytree(env["EVERLOOK_MODEL_DIR"], model_dir)
    save_detectron2(model_dir)
    monkeypatch.setenv("EVERLOOK_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("EVERLOOK_STAGES", json.dumps(["panoptic"]))
    monkeypatch.setenv("EVERLOOK_PANOPTIC_BACKEND", "auto")
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("dog_with-bicycle-and-truck_darknet.jpg", "animals_giraffe-and-zebra_darknet.jpg"):
        shutil.copy(shared_images / name, lib / name)
    make_library(lib, 1)
    code, summary = cli.json("index", str(lib))
    assert code == 0, summary
    assert summary["stages"]["done"] == {"panoptic": 3}
    tags: dict[int, set[str]] = {}
    for item in (1, 2, 3):
        detail = cli.json("show", str(item))[1]
        assert detail["segments"], "the stuff head labels every picture somewhere"
        assert all(
            s["model_id"].startswith("detectron2/panoptic_fpn_R_50_3x") for s in detail["segments"]
        )
        assert sum(s["area"] for s in detail["segments"]) <= 1 + 1e-6
        tags[item] = set(detail["tags"])
    some = sorted(set.union(*tags.values()))[0]
    code, hits = cli.json("search", "anything", "--tag", some, "-k", "10")
    assert code == 0
    assert sorted(h["item_id"] for h in hits) == sorted(i for i, t in tags.items() if some in t)
    assert all(some in h["tags"] for h in hits)


def test_a_text_search_also_finds_items_by_their_stored_labels(parts, tmp_path: Path):
    from catalog.results import Label
    from search.engine import LABEL_BOOST

    make_library(tmp_path / "lib", 12)
    parts.pipeline().run([str(tmp_path / "lib")])
    engine = parts.engine()
    query = "a zebra in the grass"
    ranked = engine.by_vector(parts.embedder.embed_texts([query])[0], k=12)
    plain = {h.item_id: h.score for h in ranked}
    # The item just outside the top k whose gap to the k-th is smallest: a label the
    # query names must lift it in, with exactly the documented boost.
    k = min(range(1, 11), key=lambda n: ranked[n - 1].score - ranked[n].score)
    outsider = ranked[k].item_id
    gap = ranked[k - 1].score - ranked[k].score
    assert gap < LABEL_BOOST, "the generated library has no near-tie to test with"
    out = StageOutput(labels=[Label("imagenet", "zebra", 1.0), Label("imagenet", "hay", 0.1)])
    parts.catalog.stages.save("labels", "test", {outsider: out}, {})
    assert outsider not in [h.item_id for h in engine.by_vector(
        parts.embedder.embed_texts([query])[0], k=k)]  # fmt: skip
    hits = engine.by_text(query, k=k)
    assert outsider in [h.item_id for h in hits], "found through its label"
    got = next(h.score for h in hits if h.item_id == outsider)
    assert got == pytest.approx(plain[outsider] + LABEL_BOOST, abs=1e-5)
    # A label the text does not name as a whole word changes nothing.
    assert outsider not in [h.item_id for h in engine.by_text("zebrastripe grass", k=k)]
    assert engine.by_text(query, k=3, min_score=10.0) == []


def test_switching_to_a_new_clip_model_re_runs_stages_over_clip_vectors_only(
    env, monkeypatch, tmp_path: Path
):
    parts = make_parts(monkeypatch, ["detect/yolo", "style"])
    make_library(tmp_path / "lib", 3)
    parts.pipeline().run([str(tmp_path / "lib")])
    before = statuses(parts, "detect/yolo")
    ckpt = Path(env["EVERLOOK_MODEL_DIR"]) / "open_clip" / "everlook-tiny" / "seed0"
    extra = {"clip_pretrained": str(ckpt / "open_clip_model.pt")}
    other = make_parts(monkeypatch, ["detect/yolo", "style"], **extra)
    target = other.spaces["clip"].target
    assert target is not None and target.model_id != parts.embedder.model_id
    # The new model backfills through embed/clip; nothing else moves while the old
    # model still answers.
    runner = other.stage_runner()
    spies = [Spy(s) for s in runner.stages]
    runner.stages = spies
    runner.backfill()
    seen = {s.name: sorted(s.seen) for s in spies}
    assert seen == {"embed/clip:next": sorted(before), "detect/yolo": [], "style": []}
    other.catalog.spaces.set_active("clip", target.model_id, other.embedder_args("clip"))
    switched = make_parts(monkeypatch, ["detect/yolo", "style"], **extra)
    runner = switched.stage_runner()
    spies = [Spy(s) for s in runner.stages]
    runner.stages = spies
    runner.backfill()
    seen = {s.name: sorted(s.seen) for s in spies}
    assert seen == {"detect/yolo": [], "style": sorted(before)}, "style reads CLIP vectors"
    assert statuses(switched, "detect/yolo") == before


def test_background_enrichment_skips_items_not_embedded_by_the_current_model(
    env, monkeypatch, tmp_path: Path
):
    parts = make_parts(monkeypatch, [])
    make_library(tmp_path / "lib", 2)
    parts.pipeline().run([str(tmp_path / "lib")])
    ckpt = Path(env["EVERLOOK_MODEL_DIR"]) / "open_clip" / "everlook-tiny" / "seed0"
    extra = {"clip_pretrained": str(ckpt / "open_clip_model.pt")}
    # Switched to a model (with --force) before it embedded anything.
    model_id = make_parts(monkeypatch, [], **extra).spaces["clip"].target.model_id
    parts.catalog.spaces.set_active(
        "clip",
        model_id,
        {"model_name": "everlook-tiny", **{"pretrained": extra["clip_pretrained"]}},
    )
    other = make_parts(monkeypatch, ["style"], **extra)
    assert other.embedder.model_id == model_id and other.spaces["clip"].target is None
    runner = other.stage_runner()
    assert runner.backfill_step() is False, "nothing it can do: the watcher may sleep"
    assert statuses(other, "style") == {}
