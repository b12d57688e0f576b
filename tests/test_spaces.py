"""Several embedding spaces: CLIP and ImageBind side by side, sound items, a new model
backfilling while the old one answers, switching and pruning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY_IMAGEBIND
from tests.helpers import make_library, tone

SEED0 = "open_clip/everlook-tiny/seed0"
SEED1 = "open_clip/everlook-tiny/seed1"


pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


def with_imagebind(monkeypatch: pytest.MonkeyPatch) -> Any:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    monkeypatch.setenv("EVERLOOK_SPACES", '["clip", "imagebind"]')
    monkeypatch.setenv("EVERLOOK_IMAGEBIND_MODEL", TINY_IMAGEBIND)
    return Parts(Settings())


def sound_library(root: Path) -> dict[str, Path]:
    make_library(root, 3)
    return {
        "low": tone(root / "sounds" / "low.wav", 220),
        "high": tone(root / "sounds" / "high.flac", 3000, seconds=5.0, rate=44100, channels=2),
        "mid": tone(root / "sounds" / "mid.ogg", 880, seconds=1.2, fmt="OGG"),
    }


@pytest.fixture
def seed1(model_dir: Path) -> str:
    import open_clip
    import torch

    dest = model_dir / "open_clip" / "everlook-tiny" / "seed1"
    if not dest.exists():
        dest.mkdir()
        torch.manual_seed(1)
        model = open_clip.create_model("everlook-tiny")
        torch.save(model.state_dict(), dest / "open_clip_model.pt")
    return "seed1"


def test_sounds_are_catalogued_as_audio_items_with_their_duration_rate_and_channels(
    env, tmp_path: Path, monkeypatch
):
    parts = with_imagebind(monkeypatch)
    files = sound_library(tmp_path / "lib")
    report = parts.pipeline().run([str(tmp_path / "lib")])
    assert report.failed == [] and report.new == 6
    item = parts.catalog.item(parts.catalog.item_id_for_path(str(files["high"])))
    assert item["kind"] == "audio" and item["format"] == "FLAC"
    assert item["sample_rate"] == 44100 and item["channels"] == 2
    assert item["duration_s"] == pytest.approx(5.0, abs=0.01)
    # No CLIP vector for a sound; an ImageBind vector for every item, pictures included.
    audio_ids = set(parts.catalog.item_ids_of_kind("audio"))
    assert len(audio_ids) == 3
    assert not audio_ids & set(parts.catalog.embedding_ids("clip", parts.embedder.model_id))
    ib = parts.spaces["imagebind"]
    stored = set(parts.catalog.embedding_ids("imagebind", ib.embedder.model_id))
    assert stored == set(range(1, 7)) and ib.index.count() == 6
    assert parts.index.count() == 3  # CLIP: the pictures only


def test_a_sound_finds_itself_first_and_text_or_pictures_find_sounds(env, tmp_path, monkeypatch):
    parts = with_imagebind(monkeypatch)
    files = sound_library(tmp_path / "lib")
    parts.pipeline().run([str(tmp_path / "lib")])
    from indexer.audio import decode_audio
    from indexer.stages import AUDIO_RATE

    engine = parts.engines()["imagebind"]
    wave = decode_audio(files["low"].read_bytes(), parts.limits(), AUDIO_RATE).samples
    hits = engine.by_audio(wave, k=6)
    assert hits[0].paths == [str(files["low"])] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 6  # pictures and sounds, both in ImageBind's space
    from catalog.filters import Filters

    sounds = engine.by_text("rain on a window", k=10, filters=Filters(kind="audio"))
    assert {h.paths[0] for h in sounds} == {str(p) for p in files.values()}


def test_the_query_picks_its_space_by_modality_and_kind():
    from search.spaces import NoSpace, Space, pick

    class Emb:
        def __init__(self, space: str, modalities: set[str]) -> None:
            self.space, self.modalities = space, frozenset(modalities)

    spaces = {"clip": Space("clip", Emb("clip", {"image", "text"}), None),  # type: ignore[arg-type]
              "imagebind": Space("imagebind", Emb("imagebind", {"image", "text", "audio"}),
                                 None)}  # type: ignore[arg-type]  # fmt: skip
    assert pick(spaces, "text", None).name == "clip"
    assert pick(spaces, "image", "image").name == "clip"
    assert pick(spaces, "text", "audio").name == "imagebind"
    assert pick(spaces, "image", "audio").name == "imagebind"
    assert pick(spaces, "audio", None).name == "imagebind"
    assert pick(spaces, "text", None, "imagebind").name == "imagebind"
    with pytest.raises(NoSpace, match="cannot embed sound"):
        pick(spaces, "audio", None, "clip")
    with pytest.raises(NoSpace, match="enable the imagebind space"):
        pick({"clip": spaces["clip"]}, "audio", None)


def test_a_new_clip_model_backfills_while_the_old_one_answers_until_switched(
    parts, tmp_path: Path, monkeypatch, seed1, cli
):
    """Changing the model never degrades search: the old model keeps its index and
    answers until `everlook spaces switch`, while the new one embeds every item."""
    from everlook.settings import Settings
    from everlook.wiring import Parts

    lib = tmp_path / "lib"
    make_library(lib, 4)
    parts.pipeline().run([str(lib)])
    monkeypatch.setenv("EVERLOOK_CLIP_PRETRAINED", seed1)
    p2 = Parts(Settings())
    clip = p2.spaces["clip"]
    assert clip.embedder.model_id == SEED0 and clip.target.model_id == SEED1
    assert not clip.index.open().rebuilt_because  # the old index is still the one used
    code, status = cli.json("spaces")
    assert code == 0
    assert status["spaces"]["clip"]["backfilling"] == {"model_id": SEED1, "vectors": 0,
                                                       "items": 4}  # fmt: skip
    res = cli("spaces", "switch", "clip")
    assert res.exit_code == 2 and "0 of 4" in res.stderr  # not before it has backfilled
    assert p2.engine().by_text("a red square", k=4)  # the old model answers meanwhile
    assert cli("enrich").exit_code == 0
    assert sorted(p2.catalog.embedding_ids("clip", SEED1)) == [1, 2, 3, 4]
    assert sorted(p2.catalog.embedding_ids("clip", SEED0)) == [1, 2, 3, 4]
    res = cli("spaces", "switch", "clip")
    assert res.exit_code == 0, res.stderr
    p3 = Parts(Settings())
    assert p3.spaces["clip"].embedder.model_id == SEED1 and p3.spaces["clip"].target is None
    assert p3.index.count() == 4
    # The old vectors stay until pruned, then go.
    assert cli.json("spaces")[1]["unused"] == [{"space": "clip", "model_id": SEED0, "vectors": 4}]
    assert cli("db", "prune").exit_code == 0
    assert p3.catalog.embedding_ids("clip", SEED0) == []
    assert sorted(p3.catalog.embedding_ids("clip", SEED1)) == [1, 2, 3, 4]


def test_disabling_a_space_stops_its_stage_and_keeps_its_vectors_until_pruned(
    env, tmp_path: Path, monkeypatch, cli
):
    parts = with_imagebind(monkeypatch)
    sound_library(tmp_path / "lib")
    parts.pipeline().run([str(tmp_path / "lib")])
    ib_model = parts.spaces["imagebind"].embedder.model_id
    assert len(parts.catalog.embedding_ids("imagebind", ib_model)) == 6
    monkeypatch.setenv("EVERLOOK_SPACES", '["clip"]')
    from everlook.settings import Settings
    from everlook.wiring import Parts

    p2 = Parts(Settings())
    assert "embed/imagebind" not in p2.stage_names()
    tone(tmp_path / "lib" / "sounds" / "new.wav", 500)
    report = p2.pipeline().run([str(tmp_path / "lib")])
    assert report.new == 1 and report.failed == []  # catalogued, embedded later
    assert len(p2.catalog.embedding_ids("imagebind", ib_model)) == 6  # kept, not extended
    res = cli("search", "--audio", str(tmp_path / "lib" / "sounds" / "new.wav"))
    assert res.exit_code == 2 and "enable the imagebind space" in res.stderr
    assert cli("db", "prune").exit_code == 0
    assert p2.catalog.embedding_ids("imagebind", ib_model) == []
    assert not (p2.settings.index_dir / "imagebind.faiss").exists()
    # Enabled again: it backfills every item, the new sound included.
    p3 = with_imagebind(monkeypatch)
    p3.stage_runner().backfill()
    assert len(p3.catalog.embedding_ids("imagebind", ib_model)) == 7


def test_a_catalog_from_before_spaces_keeps_its_vectors_and_takes_a_second_model(tmp_path):
    from alembic import command
    from sqlalchemy import text

    import migrations
    from catalog import Catalog, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    command.upgrade(migrations.alembic_config(engine), "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (id, sha256, kind, size_bytes, created_at) "
                          "VALUES (1, 'aa', 'image', 10, '2026-01-01')"))  # fmt: skip
        conn.execute(text("INSERT INTO paths (item_id, path, size, mtime_ns, updated_at) "
                          "VALUES (1, X'2f612e6a7067', 10, 1, '2026-01-01')"))  # fmt: skip
        conn.execute(
            text(
                "INSERT INTO embeddings (item_id, space, model_id, dim, vector, "
                "created_at) VALUES (1, 'clip', 'm0', 1, X'0000803f', '2026-01-01')"
            )
        )
    migrations.upgrade(engine)
    cat = Catalog(engine)
    assert cat.paths_for([1]) == {1: ["/a.jpg"]}
    assert cat.embedding(1, "clip") == ("m0", np.float32(1).tobytes())
    cat.stages.save("embed/clip", "m1", {1: _vector_output(2.0)}, {})
    assert cat.embedding(1, "clip", "m0")[1] == np.float32(1).tobytes()
    assert cat.embedding(1, "clip", "m1")[1] == np.float32(2).tobytes()


def _vector_output(value: float) -> Any:
    from catalog.results import StageOutput

    return StageOutput(space="clip", vectors={"m1": np.float32(value).tobytes()})


def test_a_new_model_without_weights_never_holds_back_the_active_one(
    env, tmp_path: Path, monkeypatch
):
    """The backfilling model has its own stage: its missing weights stop only it."""
    parts = with_imagebind(monkeypatch)
    sound_library(tmp_path / "lib")
    parts.pipeline().run([str(tmp_path / "lib")])
    monkeypatch.setenv("EVERLOOK_IMAGEBIND_MODEL", "no-such-imagebind")
    from everlook.settings import Settings
    from everlook.wiring import Parts

    p2 = Parts(Settings())
    assert p2.spaces["imagebind"].target is not None
    tone(tmp_path / "lib" / "sounds" / "late.wav", 700)
    pipeline = p2.pipeline()
    pipeline.run([str(tmp_path / "lib")])
    p2.stage_runner().backfill()
    runner = pipeline.stages
    assert "embed/imagebind:next" in runner.stats.unavailable
    assert "embed/imagebind" not in runner.stats.unavailable
    active = p2.spaces["imagebind"]
    assert len(p2.catalog.embedding_ids("imagebind", active.embedder.model_id)) == 7
    assert active.index.count() == 7  # the late sound is searchable


def test_switching_back_to_an_earlier_model_reuses_its_stored_vectors(
    parts, tmp_path: Path, monkeypatch, seed1, cli
):
    from everlook.settings import Settings
    from everlook.wiring import Parts

    make_library(tmp_path / "lib", 3)
    parts.pipeline().run([str(tmp_path / "lib")])
    monkeypatch.setenv("EVERLOOK_CLIP_PRETRAINED", seed1)
    assert cli("enrich").exit_code == 0 and cli("spaces", "switch", "clip").exit_code == 0
    monkeypatch.setenv("EVERLOOK_CLIP_PRETRAINED", "seed0")  # back: seed0's vectors are kept
    back = Parts(Settings())
    assert back.spaces["clip"].target.model_id == SEED0
    runner = back.stage_runner()
    calls: list[int] = []
    target = back.spaces["clip"].target
    real = target.embed_images
    monkeypatch.setattr(target, "embed_images", lambda imgs: calls.append(len(imgs)) or real(imgs))
    runner.backfill()
    assert calls == [] and runner.stats.done == {"embed/clip:next": 3}


def test_idle_backfill_gives_every_stage_its_turn(env, tmp_path: Path, monkeypatch):
    """Round robin: a long ImageBind backfill does not starve the other stages."""
    monkeypatch.setenv("EVERLOOK_STAGES", '["style"]')
    parts = with_imagebind(monkeypatch)
    make_library(tmp_path / "lib", 6)
    parts.pipeline(inline_stages=False).run([str(tmp_path / "lib")])
    runner = parts.stage_runner()
    order = []
    for _ in range(4):
        before = dict(runner.stats.done)
        assert runner.backfill_step()
        order += [n for n, c in runner.stats.done.items() if c != before.get(n, 0)]
    assert order[:2] == ["embed/imagebind", "style"] and len(set(order)) == 2


def test_spaces_are_kept_in_a_fixed_order_whatever_order_the_setting_names_them(monkeypatch):
    from everlook.settings import Settings

    monkeypatch.setenv("EVERLOOK_SPACES", '["imagebind", "clip", "imagebind"]')
    assert Settings(_env_file=None).spaces == ["clip", "imagebind"]  # type: ignore[call-arg]


def test_another_clip_count_is_another_model_for_provenance(env, monkeypatch):
    monkeypatch.setenv("EVERLOOK_AUDIO_CLIPS", "5")
    parts = with_imagebind(monkeypatch)
    assert parts.spaces["imagebind"].embedder.model_id == f"imagebind/{TINY_IMAGEBIND}+clips5"
