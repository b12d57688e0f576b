"""Ranking and paging in the engine over a real FAISS store: ties at the cutoff and the
label boost never make a page skip or repeat an item."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from search.engine import LABEL_BOOST, SearchEngine
from search.query import Cursor
from search.vectors import IndexInfo, create

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


DIM = 64


class Library:
    """The engine's view of the catalog, in memory: labels and paths by item id."""

    def __init__(self, named: dict[int, float] | None = None) -> None:
        self.named = named or {}

    def items_labelled_in(self, _text: str) -> dict[int, float]:
        return dict(self.named)

    def paths_for(self, ids: list[int]) -> dict[int, list[str]]:
        return {i: [f"/lib/{i}.jpg"] for i in ids}


class Index:
    def __init__(self, ids: list[int], vecs: np.ndarray) -> None:
        self.store = create("faiss", IndexInfo(model_id="test", dim=DIM))
        for i, v in zip(ids, vecs, strict=True):  # one by one: FAISS keeps this order
            self.store.add(np.array([i]), v[None, :])

    def search(self, q: np.ndarray, k: int, allow: Any = None) -> Any:
        return self.store.search(q, k, allow=allow)


def with_score(score: float, axis: int) -> np.ndarray:
    """A unit vector whose inner product with e0 is exactly `score` (in float32)."""
    v = np.zeros(DIM, dtype=np.float64)
    v[0], v[axis] = score, np.sqrt(1 - score**2)
    return v.astype(np.float32)


def all_pages(engine: SearchEngine, q: np.ndarray, k: int, words: str | None) -> list[int]:
    got: list[int] = []
    cursor: Cursor | None = None
    for _ in range(100):
        hits, cursor = engine.page(q, k, cursor, label_text=words)
        got += [h.item_id for h in hits]
        if cursor is None:
            return got
    raise AssertionError("paging did not end")


def test_identical_pictures_at_a_page_boundary_are_all_shown_once() -> None:
    rng = np.random.default_rng(0)
    others = rng.normal(size=(20, DIM)).astype(np.float32)
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    same = with_score(0.9, 5)
    ids = [9, 7, 3, *range(20, 40)]  # the copies first, inserted highest id first
    vecs = np.vstack([same, same, same, others[:20] * 0.3 + with_score(0.1, 6)])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    engine = SearchEngine(None, Index(ids, vecs), Library())  # type: ignore[arg-type]
    q = np.eye(DIM, dtype=np.float32)[0]
    for k in (1, 2, 4):
        pages = all_pages(engine, q, k, None)
        scores = {i: float(v @ q) for i, v in zip(ids, vecs, strict=True)}
        expected = sorted(ids, key=lambda i: (-scores[i], i))
        assert pages == expected, (k, pages[:6], expected[:6])


def test_a_boosted_label_lifts_an_item_from_below_the_cutoff_onto_its_page() -> None:
    plain = {1: 0.315, 2: 0.312, 3: 0.31, 4: 0.2, 5: 0.1, 6: 0.05}
    labelled = {7: 0.30, 8: 0.29, 9: 0.28, 10: 0.27}
    named = {7: 0.1, 8: 0.1, 9: 0.1, 10: 1.0}
    raw = {**plain, **labelled}
    ids = list(raw)
    vecs = np.vstack([with_score(raw[i], i) for i in ids])
    engine = SearchEngine(None, Index(ids, vecs), Library(named))  # type: ignore[arg-type]
    q = np.eye(DIM, dtype=np.float32)[0]
    final = {i: float(vecs[n] @ q) + LABEL_BOOST * named.get(i, 0) for n, i in enumerate(ids)}
    expected = sorted(ids, key=lambda i: (-final[i], i))
    assert expected[0] == 10  # 0.27 raw + 0.05 boost beats every plain item
    for k in (1, 2, 3):
        assert all_pages(engine, q, k, "a tabby cat") == expected, k
    top = engine.ranked(q, 2, label_text="a tabby cat")
    assert [i for i, _ in top] == expected[:2]
