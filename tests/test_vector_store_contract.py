"""The contract every vector store backend must pass (index, save, reload, delete, search),
for each kind of index a backend builds: exact, and approximate (trained here on a few
hundred vectors with a tiny list count, so the approximate path runs in milliseconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search import vectors
from search.vectors import BuildOptions, IndexInfo, IndexUnusable

INFO = IndexInfo(model_id="test/model-a", dim=16)
KINDS = ("exact", "approximate")


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class ArraySource:
    """A VectorSource over arrays (the catalog's part in a build)."""

    def __init__(self, ids: np.ndarray, vecs: np.ndarray, batch: int = 1000) -> None:
        self.ids, self.vecs, self.batch = np.asarray(ids, dtype=np.int64), vecs, batch

    def count(self) -> int:
        return len(self.ids)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pick = np.random.default_rng(seed).permutation(len(self.ids))[:n]
        return self.ids[pick], self.vecs[pick]

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(self.ids), self.batch):
            yield self.ids[s : s + self.batch], self.vecs[s : s + self.batch]


def new_store(backend: str, kind: str, where: dict[str, Any]) -> vectors.VectorStore:
    """An empty store of the kind: the approximate one trained on other vectors first."""
    if kind == "exact":
        return vectors.create(backend, INFO, **where)
    rng = np.random.default_rng(11)
    train = ArraySource(np.arange(10_000, 10_256), unit(rng, 256))
    store = vectors.build(backend, INFO, train, BuildOptions(exact_max=1, nlist=4), **where)
    assert getattr(store, "kind", "approximate") != "flat"
    store.remove(train.ids)
    assert store.count() == 0
    return store


@pytest.fixture(params=[(b, k) for b in vectors.available() for k in KINDS],
                ids=lambda p: f"{p[0]}-{p[1]}")  # fmt: skip
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def backend(backend_kind: tuple[str, str]) -> str:
    return backend_kind[0]


@pytest.fixture
def where(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where a server-backed store lives: Milvus on the session's milvus-lite server."""
    if backend == "milvus":
        return {"uri": request.getfixturevalue("milvus_uri")}
    return {}


@pytest.fixture
def empty(backend_kind: tuple[str, str], where: dict[str, Any]) -> vectors.VectorStore:
    return new_store(*backend_kind, where)


@pytest.fixture
def filled(empty: vectors.VectorStore) -> tuple[vectors.VectorStore, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = np.arange(100, 150)
    vecs = unit(rng, 50)
    empty.add(ids, vecs)
    return empty, ids, vecs


def test_each_vector_finds_itself_first_with_score_one(filled):
    store, ids, vecs = filled
    results = store.search(vecs[:5], k=3)
    for row, expected in zip(results, ids[:5], strict=True):
        assert row[0][0] == expected
        assert row[0][1] == pytest.approx(1.0, abs=1e-5)
        assert row[0][1] >= row[1][1] >= row[2][1]


def test_scores_are_inner_products(filled):
    store, ids, vecs = filled
    (top,) = store.search(vecs[0], k=50)
    by_id = dict(top)
    for i, v in zip(ids, vecs, strict=True):
        assert by_id[int(i)] == pytest.approx(float(vecs[0] @ v), abs=1e-5)


def test_count_and_ids_follow_adds_and_removes(filled):
    store, ids, _ = filled
    assert store.count() == 50
    assert sorted(store.ids().tolist()) == ids.tolist()
    assert store.remove([100, 101, 999]) == 2
    assert store.count() == 48
    assert 100 not in store.ids().tolist()


def test_removed_ids_are_never_returned(filled):
    store, ids, vecs = filled
    store.remove(ids[:10])
    got = {i for row in store.search(vecs[:10], k=50) for i, _ in row}
    assert got.isdisjoint(set(ids[:10].tolist()))


def test_adding_an_existing_id_replaces_its_vector(filled):
    store, ids, vecs = filled
    store.add([ids[0]], vecs[1:2])
    assert store.count() == 50
    (top,) = store.search(vecs[1], k=2)
    assert {i for i, _ in top} == {int(ids[0]), int(ids[1])}


def test_allow_list_restricts_results(filled):
    store, ids, vecs = filled
    allow = ids[20:25].tolist()
    (row,) = store.search(vecs[0], k=10, allow=allow)
    assert len(row) == 5
    assert {i for i, _ in row} == set(allow)


def test_an_allow_list_gives_the_exact_best_k_among_its_ids(filled):
    store, ids, vecs = filled
    allow = ids[::3]
    for q in vecs[:5]:
        (row,) = store.search(q, k=4, allow=allow.tolist())
        want = allow[np.argsort(-(vecs[::3] @ q), kind="stable")][:4]
        assert [i for i, _ in row] == want.tolist()


def test_k_larger_than_index_returns_everything_once(filled):
    store, ids, vecs = filled
    (row,) = store.search(vecs[0], k=1000)
    assert sorted(i for i, _ in row) == ids.tolist()


def test_empty_index_returns_no_results(empty):
    assert empty.search(unit(np.random.default_rng(0), 1), k=5) == [[]]


def test_wrong_dimension_is_refused(empty):
    with pytest.raises(ValueError):
        empty.add([1], np.ones((1, 8), dtype=np.float32))


def test_save_and_reload_gives_identical_results(filled, backend, tmp_path: Path):
    store, _ids, vecs = filled
    path = tmp_path / "idx" / "clip.idx"
    store.save(path)
    again = vectors.load(backend, path, INFO)
    assert again.count() == store.count()
    assert again.search(vecs[:3], k=5) == store.search(vecs[:3], k=5)
    # and it keeps working after reload: append and delete
    again.add([999], vecs[0:1])
    assert again.remove([100]) == 1
    assert again.search(vecs[0], k=1)[0][0][0] == 999


def test_changes_after_a_reload_are_searched_and_kept_by_the_next_save(
    filled, backend, tmp_path: Path
):
    store, ids, vecs = filled
    path = tmp_path / "x.idx"
    store.save(path)
    again = vectors.load(backend, path, INFO)
    again.add([ids[1], 999], vecs[2:4])  # one replaced, one new
    again.remove(ids[5:8])
    want = sorted({*ids.tolist(), 999} - set(ids[5:8].tolist()))
    assert sorted(again.ids().tolist()) == want and again.count() == len(want)
    assert again.search(vecs[2], k=2)[0][0][0] in (ids[1], ids[2])
    found = {i for i, _ in again.search(vecs[5], k=60)[0]}
    assert found == set(want)
    again.save(path)
    third = vectors.load(backend, path, INFO)
    assert sorted(third.ids().tolist()) == want
    assert third.search(vecs[:4], k=5) == again.search(vecs[:4], k=5)


def test_what_a_save_is_told_comes_back_with_the_file_until_the_store_changes(
    filled, backend, tmp_path: Path
):
    store, ids, vecs = filled
    store.save(tmp_path / "x.idx", {"mark": {"rows": 5}})
    again = vectors.load(backend, tmp_path / "x.idx", INFO)
    assert again.meta["mark"] == {"rows": 5}  # type: ignore[attr-defined]
    again.add([ids[0]], vecs[:1])
    assert "mark" not in again.meta  # type: ignore[attr-defined]


def test_save_leaves_no_temporary_files(filled, tmp_path: Path):
    store, _, _ = filled
    store.save(tmp_path / "x.idx")
    store.save(tmp_path / "x.idx")
    assert [p.name for p in tmp_path.iterdir()] == ["x.idx"]


def test_an_index_made_by_another_model_is_unusable(filled, backend, tmp_path: Path):
    store, _, _ = filled
    store.save(tmp_path / "x.idx")
    with pytest.raises(IndexUnusable, match="model-a"):
        vectors.load(backend, tmp_path / "x.idx", IndexInfo("test/model-b", 16))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "appended"])
def test_a_damaged_index_file_is_unusable(filled, backend, tmp_path: Path, damage: str):
    store, _, _ = filled
    path = tmp_path / "x.idx"
    store.save(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not an index at all" * 10)
    elif damage == "appended":
        data += b"\x00" * 100
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(IndexUnusable):
        vectors.load(backend, path, INFO)


def test_a_missing_index_file_is_unusable(backend, tmp_path: Path):
    with pytest.raises(IndexUnusable):
        vectors.load(backend, tmp_path / "nope.idx", INFO)
