"""Filters keep exact top-k semantics: checked against brute force over the catalog,
down to a filter that admits 0.1 % of the items."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from catalog import Catalog, NewItem
from catalog.filters import Filters
from catalog.results import Detection, Label, Segment, StageOutput
from search.engine import SearchEngine
from search.index_sync import VectorIndex
from search.vectors import IndexInfo

N, DIM = 3000, 16

MODEL = "test/filters"


class NoEmbedder:
    space = "clip"
    model_id = MODEL
    dim = DIM


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])  # every test on both
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[SearchEngine, np.ndarray]:
    import migrations
    from catalog import make_engine
    from tests.conftest import catalog_url

    base = tmp_path_factory.mktemp("filters")
    engine = make_engine(catalog_url(request.param, base / "catalog.db", request))
    migrations.upgrade(engine)
    cat = Catalog(engine)
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    items = []
    for i in range(N):
        cam = ("Canon", "EOS R5") if i % 7 == 0 else ("NIKON", "Z 6")
        items.append(NewItem(
            sha256=f"{i:064x}", kind="audio" if i % 50 == 0 else "image", size_bytes=1,
            path=f"/lib/{'2019' if i % 4 == 0 else '2024'}/img{i:05d}.jpg", mtime_ns=i,
            meta={"taken_at": datetime(2019 + i % 6, 1 + i % 12, 1),
                  "camera_make": cam[0], "camera_model": cam[1]},
            model_id=MODEL, dim=DIM, vector=vecs[i].tobytes(),
        ))  # fmt: skip
    ids = cat.add_items(items, "embed/clip")
    order = np.array([ids[f"{i:064x}"] for i in range(N)])
    outputs = {}
    for i, item_id in enumerate(order):
        dets = [Detection("dog", 0.9, (0, 0, 1, 1))] * (i % 3) if i % 5 == 0 else []
        if i % 1000 == 0:  # 3 items of 3000 hold a zebra: 0.1 %
            dets = [*dets, Detection("zebra", 0.8, (0.1, 0.1, 0.5, 0.5))]
        dets += [Detection("cat", 0.2, (0, 0, 0.5, 0.5))] if i % 11 == 0 else []
        segs = [Segment("sky", False, 0.4, 1.0)] if i % 3 == 0 else []
        labels = [Label("style", "Claude Monet", 0.6 if i % 9 == 0 else 0.1),
                  Label("artwork", "artwork", 0.9 if i % 2 == 0 else 0.1)]  # fmt: skip
        outputs[int(item_id)] = StageOutput(dets, segs, labels)
    cat.stages.save("enrich", "test", outputs, {})
    index = VectorIndex(cat, "faiss", base / "clip.faiss", "clip", IndexInfo(MODEL, DIM))
    eng = SearchEngine(NoEmbedder(), index, cat)  # type: ignore[arg-type]
    return eng, vecs[np.argsort(order)]


def brute(eng: SearchEngine, vecs: np.ndarray, q: np.ndarray, f: Filters, k: int) -> list[int]:
    allowed = np.array(eng.catalog.filter_ids(f), dtype=np.int64)
    scores = vecs[allowed - 1] @ q
    return allowed[np.argsort(-scores, kind="stable")][:k].tolist()


CASES = {
    "dog": Filters(has=[("dog", 1)], min_confidence=0.5),
    "two dogs": Filters(has=[("dog", 2)], min_confidence=0.5),
    "zebra (0.1 %)": Filters(has=[("zebra", 1)]),
    "low confidence cats don't count": Filters(has=[("cat", 1)], min_confidence=0.5),
    "sky tag": Filters(tags=["sky"]),
    "monet on artworks": Filters(styles=["Claude Monet"], min_style=0.5, min_artwork=0.5),
    "audio": Filters(kind="audio"),
    "2021": Filters(after=datetime(2021, 1, 1), before=datetime(2022, 1, 1)),
    "canon": Filters(camera="eos r5"),
    "path glob": Filters(path_glob="/lib/2019/*"),
    "combined": Filters(has=[("dog", 1)], tags=["sky"], camera="nikon"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_filtered_top_k_equals_brute_force_over_the_matching_items(world, name: str):
    eng, vecs = world
    f = CASES[name]
    rng = np.random.default_rng(len(name))
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        got = [h.item_id for h in eng.by_vector(q, k=10, filters=f)]
        want = brute(eng, vecs, q, f, 10)
        assert got == want
        assert len(got) == min(10, len(eng.catalog.filter_ids(f)))


def test_each_filter_admits_exactly_the_items_it_describes(world):
    eng, _ = world
    count = {name: len(eng.catalog.filter_ids(f)) for name, f in CASES.items()}
    assert count["zebra (0.1 %)"] == 3
    assert count["dog"] == len([i for i in range(N) if i % 5 == 0 and i % 3 != 0])
    assert count["two dogs"] == len([i for i in range(N) if i % 5 == 0 and i % 3 == 2])
    assert count["low confidence cats don't count"] == 0
    assert count["sky tag"] == N // 3
    assert count["monet on artworks"] == len([i for i in range(N) if i % 18 == 0])
    assert count["audio"] == N // 50
    assert count["2021"] == len([i for i in range(N) if i % 6 == 2])
    assert count["canon"] == len([i for i in range(N) if i % 7 == 0])
    assert count["path glob"] == N // 4


def test_a_filter_matching_nothing_returns_nothing(world):
    eng, vecs = world
    assert eng.by_vector(vecs[0], k=10, filters=Filters(tags=["volcano"])) == []


def test_file_time_stands_in_when_an_item_has_no_capture_time(tmp_path: Any):
    import migrations
    from catalog import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrations.upgrade(engine)
    cat = Catalog(engine)
    t2020 = int(datetime(2020, 6, 1).timestamp() * 1e9)
    t2024 = int(datetime(2024, 6, 1).timestamp() * 1e9)
    cat.add_items([
        NewItem(sha256="a" * 64, kind="image", size_bytes=1, path="/x/a.jpg", mtime_ns=t2020),
        NewItem(sha256="b" * 64, kind="image", size_bytes=1, path="/x/b.jpg", mtime_ns=t2024,
                meta={"taken_at": datetime(2020, 6, 2)}),
    ], "embed/clip")  # fmt: skip
    f = Filters(after=datetime(2020, 1, 1), before=datetime(2021, 1, 1))
    assert cat.filter_ids(f) == [1, 2]
    f = Filters(after=datetime(2024, 1, 1))
    assert cat.filter_ids(f) == [], "the capture time wins over the file time"
    odd = os.fsdecode(b"/x/caf\xe9.jpg")
    cat.set_paths([(odd, 1, 1, t2020)])
    assert cat.filter_ids(Filters(path_glob=os.fsdecode(b"/x/caf\xe9*"))) == [1]
