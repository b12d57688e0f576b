"""The vector index chosen by size: an approximate IVF above EVERLOOK_INDEX_EXACT_MAX (here
a tiny threshold and list count, so a few thousand vectors exercise it), its measured
recall, exact filtered search on it, opening without reading the catalog, and rebuilding
in the background while searches go on."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalog import Catalog, NewItem
from search import vectors
from search.index_sync import VectorIndex
from search.vectors import BuildOptions, IndexInfo
from tests.test_vector_store_contract import ArraySource

pytestmark = pytest.mark.both_catalogs  # those bound to a catalog: on SQLite and PostgreSQL

MODEL, DIM = "test/ann", 32
INFO = IndexInfo(MODEL, DIM)
SMALL = BuildOptions(exact_max=1000, nlist=32)


def clustered(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    v = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def brute(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return ids[np.argsort(-(vecs @ q), kind="stable")][:k].tolist()


@pytest.fixture(scope="module")
def ivf_store() -> tuple[Any, np.ndarray, np.ndarray]:
    vecs = clustered(4000)
    ids = np.arange(1, 4001)
    return vectors.build("faiss", INFO, ArraySource(ids, vecs), SMALL), ids, vecs


def test_over_the_threshold_the_index_is_approximate_and_meets_its_recall(ivf_store):
    store, ids, vecs = ivf_store
    assert store.kind == "ivf" and store.meta["nlist"] == 32
    assert 1 <= store.meta["nprobe"] < 32  # fewer lists probed than exist
    assert store.meta["recall_at_10"] >= SMALL.recall
    # and the claim holds on queries the build never saw
    queries = clustered(200, seed=9)
    hits = 0
    for q in queries:
        got = [i for i, _ in store.search(q, 10)[0]]
        hits += len(set(got) & set(brute(ids, vecs, q, 10)))
    assert hits / 2000 >= 0.93, hits / 2000


def test_below_the_threshold_the_index_is_exact():
    vecs = clustered(500)
    store = vectors.build("faiss", INFO, ArraySource(np.arange(500), vecs), SMALL)
    assert store.kind == "flat" and store.meta["recall_at_10"] == 1.0  # type: ignore[attr-defined]


def test_a_build_logs_its_measured_recall_in_one_line(caplog):
    caplog.set_level(logging.INFO, logger="search.vectors.ann")
    vecs = clustered(1500, seed=3)
    vectors.build("faiss", INFO, ArraySource(np.arange(1500), vecs), SMALL)
    lines = [r.getMessage() for r in caplog.records if "recall@10" in r.getMessage()]
    assert len(lines) == 1 and "probed per query" in lines[0]


@pytest.mark.parametrize("share", [0.003, 0.01, 0.1, 0.5])
def test_a_filter_gives_the_exact_top_k_on_the_approximate_index(ivf_store, share: float):
    store, ids, vecs = ivf_store
    rng = np.random.default_rng(int(share * 1000))
    allowed = np.sort(rng.choice(ids, int(len(ids) * share), replace=False))
    for q in clustered(10, seed=int(share * 100) + 1):
        got = [i for i, _ in store.search(q, 10, allow=allowed.tolist())[0]]
        assert got == brute(allowed, vecs[allowed - 1], q, 10)


def test_a_search_never_answers_short_when_the_probed_lists_hold_fewer_than_k(ivf_store):
    store, _, vecs = ivf_store
    (row,) = store.search(vecs[0], 600)  # far more than nprobe lists hold
    assert len(row) == 600 and len({i for i, _ in row}) == 600


def test_the_saved_file_says_what_it_is_and_how_well_it_finds(ivf_store, tmp_path: Path):
    store, _, _ = ivf_store
    store.save(tmp_path / "clip.faiss")
    info = vectors.describe("faiss", tmp_path / "clip.faiss")
    assert info["kind"] == "ivf" and info["vectors"] == 4000
    assert info["recall_at_10"] >= SMALL.recall and set(info["recall"]) == {
        "library", "unrelated"}  # fmt: skip
    again = vectors.load("faiss", tmp_path / "clip.faiss", INFO)
    assert again.describe()["memory_mapped"] is True  # type: ignore[attr-defined]


def test_an_old_format_file_is_unusable_and_so_rebuilt(tmp_path: Path):
    path = tmp_path / "clip.faiss"
    path.write_bytes(b"EVLKFAIS" + b"\x00\x00\x00\x02{}" + b"\x00" * 64)
    with pytest.raises(vectors.IndexUnusable, match="format 1"):
        vectors.load("faiss", path, INFO)


# ---- bound to a catalog ---------------------------------------------------------------
@pytest.fixture
def catalog(tmp_path: Path, catalog_backend: str, request: pytest.FixtureRequest) -> Catalog:
    from bench._synthetic import fill_catalog
    from catalog import make_engine
    from tests.conftest import catalog_url

    url = catalog_url(catalog_backend, tmp_path / "catalog.db", request)
    fill_catalog(url, 3000, MODEL, dim=DIM, clusters=20, det_share=0.05, chunk=1000)
    return Catalog(make_engine(url))


def index_of(catalog: Catalog, tmp_path: Path, options: BuildOptions = SMALL) -> VectorIndex:
    return VectorIndex(catalog, "faiss", tmp_path / "index" / "clip.faiss", "clip", INFO, options)


def add_items(catalog: Catalog, start: int, n: int, seed: int) -> dict[str, int]:
    vecs = clustered(n, seed=seed)
    items = [NewItem(sha256=f"{start + i:064x}", kind="image", size_bytes=1,
                     path=f"/more/{start + i}.jpg", mtime_ns=i, model_id=MODEL, dim=DIM,
                     vector=vecs[i].tobytes()) for i in range(n)]  # fmt: skip
    return catalog.add_items(items, "embed/clip")


def no_whole_catalog(monkeypatch: pytest.MonkeyPatch, catalog: Catalog, *names: str) -> None:
    def whole_catalog(*a: Any, **k: Any) -> None:
        raise AssertionError("opening read the whole catalog")

    for name in names:
        monkeypatch.setattr(catalog, name, whole_catalog)


def test_reopening_an_unchanged_index_reads_nothing_of_the_catalog(catalog, tmp_path, monkeypatch):
    first = index_of(catalog, tmp_path)
    assert first.open().rebuilt_because and first.store.kind == "ivf"  # type: ignore[attr-defined]
    no_whole_catalog(monkeypatch, catalog, "embedding_ids", "iter_embeddings", "embedding_count")
    again = index_of(catalog, tmp_path)
    report = again.open()
    assert not report.changed and again.count() == 3000
    assert again.store.describe()["memory_mapped"] is True  # type: ignore[attr-defined]
    assert not again.refresh().changed


def test_a_reopened_index_takes_in_what_was_written_since_without_listing_every_id(
    catalog, tmp_path, monkeypatch
):
    index_of(catalog, tmp_path).open()
    added = add_items(catalog, 10_000, 25, seed=4)
    no_whole_catalog(monkeypatch, catalog, "embedding_ids", "embedding_count")
    again = index_of(catalog, tmp_path)
    report = again.open()
    assert (report.added, report.removed, report.checked_all) == (25, 0, False)
    assert set(added.values()) <= set(again.store.ids().tolist())


def test_a_removal_since_the_save_is_caught_by_the_counts(catalog, tmp_path):
    index_of(catalog, tmp_path).open()
    gone = catalog.remove_paths([f"/synthetic/photos/{y}/IMG_{i:06d}.jpg"
                                 for i in (5, 17) for y in range(2010, 2025)])  # fmt: skip
    assert sorted(gone) == [5, 17]
    added = add_items(catalog, 20_000, 2, seed=6)  # as many in as out: counts alone are level
    again = index_of(catalog, tmp_path)
    report = again.open()
    assert report.removed == 2 and report.checked_all
    ids = set(again.store.ids().tolist())
    assert not ids & {5, 17} and set(added.values()) <= ids and len(ids) == 3000


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_truncated_file_or_a_header_that_disagrees_is_rebuilt(catalog, tmp_path, damage):
    index = index_of(catalog, tmp_path)
    index.open()
    q = clustered(1, seed=8)[0]
    before = index.search(q[None, :], 5)
    data = bytearray(index.path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 4096]
    else:  # the header claims another count than FAISS's part holds
        data = data.replace(b'"count": 3000', b'"count": 3001')
    index.path.write_bytes(bytes(data))
    again = index_of(catalog, tmp_path)
    assert again.open().rebuilt_because
    assert again.search(q[None, :], 5)[0][0] == before[0][0]
    assert vectors.describe("faiss", index.path).get("problem") is None


def test_the_owner_rebuilds_in_the_background_while_searches_go_on(catalog, tmp_path):
    options = BuildOptions(exact_max=3400, nlist=16)
    index = index_of(catalog, tmp_path, options)
    index.open()
    assert index.store.kind == "flat"  # type: ignore[attr-defined]
    problems: list[str] = []
    stop = threading.Event()

    def searching() -> None:
        q = clustered(50, seed=12)
        while not stop.is_set():
            for row in q:
                try:
                    if len(index.search(row[None, :], 10)[0]) != 10:
                        problems.append("short answer")
                except Exception as exc:  # any failure is the finding
                    problems.append(repr(exc))

    threads = [threading.Thread(target=searching) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for batch in range(8):  # the pipeline's order: the catalog first, then the index
            added = add_items(catalog, 30_000 + 60 * batch, 60, seed=20 + batch)
            ids = np.array(sorted(added.values()))
            stored = {i: np.frombuffer(catalog.embedding(int(i), "clip", MODEL)[1], np.float32)
                      for i in ids}  # type: ignore[index]  # fmt: skip
            index.add(ids, np.stack([stored[i] for i in ids]))
            if batch == 6:
                index.remove(ids[:5])  # while the rebuild may be reading the catalog
                catalog.remove_paths([f"/more/{30_000 + 60 * batch + i}.jpg" for i in range(5)])
        assert index.finish_rebuild(timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert index.store.kind == "ivf"  # type: ignore[attr-defined]
    want = sorted(catalog.embedding_ids("clip", MODEL))
    assert sorted(index.store.ids().tolist()) == want and len(want) == 3000 + 480 - 5
    assert vectors.describe("faiss", index.path)["kind"] == "ivf"


def test_everlook_index_waits_for_the_rebuild_its_growth_started(
    env: dict[str, str], cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from search.vectors import describe
    from tests.helpers import make_library

    monkeypatch.setenv("EVERLOOK_INDEX_EXACT_MAX", "12")
    monkeypatch.setenv("EVERLOOK_INDEX_NLIST", "2")
    make_library(tmp_path / "lib", 20)
    assert cli("index", str(tmp_path / "lib")).exit_code == 0
    saved = describe("faiss", Path(env["EVERLOOK_HOME"]) / "index" / "clip.faiss")
    assert saved["kind"] == "ivf" and saved["vectors"] == 20
