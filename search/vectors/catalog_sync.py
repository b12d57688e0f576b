"""What changed in the catalog since an index last matched it, found without reading
the whole catalog; and the catalog as a source of vectors for a build.

A *mark* is (rows, highest row id, that row's created_at) over the embeddings table,
three cheap reads (see Catalog.embeddings_table_mark). An index file records the mark of
the catalog it holds. On open (and at every refresh of a reading server):

- same mark: nothing changed, nothing is read;
- moved: the rows written since (ids above the mark's, and ids SQLite reused at the top
  of the range after deleting the newest rows) are re-read and added, O(changes); and if
  the row counts say rows were deleted somewhere (rows then + rows written since != rows
  now), the model's vectors are counted (one index scan) and, only when that count and
  the index's disagree, the full difference of ids is taken (O(catalog): after a crash
  between a catalog commit and an index save, or after deletions);
- no mark (a file saved by hand, or whose count disagreed at save): the full difference.

Not noticed: a vector rewritten in place under the same (item, model) row. The catalog
does that only when the same content is embedded again by the same model, which gives
the same vector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from catalog import Catalog
from search.vectors import VectorStore

Locking = Callable[[], AbstractContextManager[Any]]


@dataclass
class SyncReport:
    rebuilt_because: str | None = None
    added: int = 0
    removed: int = 0
    checked_all: bool = False  # the full difference of ids was taken
    switched: bool = False  # now serving a newer file another process saved
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rebuilt_because or self.added or self.removed or self.switched)


def utc(at: datetime | None) -> datetime | None:
    """The catalog writes UTC times; SQLite reads them back naive, PostgreSQL aware. A
    mark saved from one must equal, and compare with, the same time read from the other
    (a catalog moved by `everlook migrate-store` with its index files kept)."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


@dataclass(frozen=True)
class Mark:
    rows: int
    last_id: int
    last_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        at = self.last_at.isoformat() if self.last_at is not None else None
        return {"rows": self.rows, "last_id": self.last_id, "last_at": at}

    @classmethod
    def from_json(cls, value: Any) -> Mark | None:
        """The mark an index file recorded; None if it has none or it is malformed."""
        try:
            at = value["last_at"]
            return cls(int(value["rows"]), int(value["last_id"]),
                       utc(datetime.fromisoformat(at)) if at is not None else None)  # fmt: skip
        except (TypeError, KeyError, ValueError):
            return None


def table_mark(catalog: Catalog) -> Mark:
    rows, last_id, last_at = catalog.embeddings_table_mark()
    return Mark(rows, last_id, utc(last_at))


def decode(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of catalog rows; a row of another length is left out (it could not
    be searched with this model's queries anyway)."""
    good = [(i, v) for i, v in rows if len(v) == 4 * dim]
    ids = np.array([i for i, _ in good], dtype=np.int64)
    vecs = np.frombuffer(b"".join(v for _, v in good), dtype=np.float32).reshape(len(good), dim)
    return ids, vecs


class CatalogVectors:
    """A model's vectors in the catalog, as a VectorSource for builds and catch-ups."""

    def __init__(self, catalog: Catalog, space: str, model_id: str, dim: int) -> None:
        self.catalog, self.space, self.model_id, self.dim = catalog, space, model_id, dim
        self._ids: np.ndarray | None = None

    def all_ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.asarray(
                self.catalog.embedding_ids(self.space, self.model_id), dtype=np.int64
            )
        return self._ids

    def count(self) -> int:
        return len(self.all_ids())

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.all_ids()
        if n < len(ids):
            ids = np.random.default_rng(seed).choice(ids, n, replace=False)
        parts = list(self.vectors(np.sort(ids)))
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rows in self.catalog.iter_embeddings(self.space, self.model_id):
            yield decode(rows, self.dim)

    def vectors(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if len(ids):
            only = ids.tolist()
            for rows in self.catalog.iter_embeddings(self.space, self.model_id, only=only):
                yield decode(rows, self.dim)


def _unlocked() -> AbstractContextManager[Any]:
    from contextlib import nullcontext

    return nullcontext()


@dataclass
class CatchUp:
    """Brings a store that matched the catalog at some mark up to the catalog now.
    Reads happen outside the store's lock; `writing` wraps each change and `reading`
    each look at the store (both no-ops for a store no one else sees yet)."""

    catalog: Catalog
    source: CatalogVectors
    store: VectorStore
    writing: Locking = _unlocked
    reading: Locking = _unlocked

    def run(self, then: Mark | None, report: SyncReport) -> Mark:
        """The mark the store matches afterwards."""
        now = table_mark(self.catalog)
        if then is None:
            self.full_difference(report)
            return now
        if now == then:
            return then
        sp, model = self.source.space, self.source.model_id
        rows = self.catalog.embedding_rows_since(then.last_id, then.last_at)
        ours = np.unique(np.array([r[3] for r in rows if r[1] == sp and r[2] == model],
                                  dtype=np.int64))  # fmt: skip
        for ids, vecs in self.source.vectors(ours):  # each batch read before the lock
            with self.writing():
                self.store.add(ids, vecs)
            report.added += len(ids)
        written = sum(1 for r in rows if r[0] <= now.last_id)
        if then.rows + written != now.rows:  # rows were deleted somewhere since
            wanted = self.catalog.embedding_count(sp, model)
            with self.reading():
                have = self.store.count()
            if have != wanted:
                self.full_difference(report)
        return now

    def full_difference(self, report: SyncReport) -> None:
        """Add what the catalog has and the store lacks, remove what it no longer has."""
        if hasattr(self.store, "id_pages"):
            self._paged_difference(report)
            return
        # The store's ids first, then the catalog's: the pipeline commits to the catalog
        # before it adds to the index, so an id read here as present in the index was in
        # the catalog already, and is never removed by mistake.
        with self.reading():
            have = np.asarray(self.store.ids(), dtype=np.int64)
        wanted = np.asarray(
            self.catalog.embedding_ids(self.source.space, self.source.model_id), dtype=np.int64
        )
        self._apply(have, wanted, report)
        report.checked_all = True

    def _apply(self, have: np.ndarray, wanted: np.ndarray, report: SyncReport) -> None:
        extra = np.setdiff1d(have, wanted)
        missing = np.setdiff1d(wanted, have)
        if len(extra):
            with self.writing():
                report.removed += self.store.remove(extra)
        for ids, vecs in self.source.vectors(missing):  # each batch read before the lock
            with self.writing():
                self.store.add(ids, vecs)
            report.added += len(ids)

    def _paged_difference(self, report: SyncReport, page: int = 50_000) -> None:
        """The same difference a range of ids at a time, for a store on a server
        (Milvus) that many processes share: neither side's ids are ever all in memory.
        A page of the catalog's ids sets the range; the store's ids in it are read, then
        the catalog's again (what a writer committed to the catalog before adding to the
        store is then seen on both sides, never removed by mistake)."""
        sp, model = self.source.space, self.source.model_id
        lo = None
        while True:
            first = self.catalog.embedding_ids_page(sp, model, lo, page)
            hi = int(first[-1]) if len(first) == page else None  # None: the last range
            with self.reading():
                parts = list(
                    self.store.id_pages(  # type: ignore[attr-defined]
                        None if lo is None else lo + 1, hi
                    )
                )
            have = np.concatenate([np.zeros(0, dtype=np.int64), *parts])
            wanted = np.asarray(self.catalog.embedding_ids_page(sp, model, lo, None, hi),
                                dtype=np.int64)  # fmt: skip
            self._apply(have, wanted, report)
            if hi is None:
                break
            lo = hi
        report.checked_all = True
