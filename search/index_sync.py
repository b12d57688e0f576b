"""Keeping a vector index file in step with the catalog, which is the source of truth.

On open, the index file is loaded and compared with the catalog's stored vectors for
the current model: missing, corrupt, or another model's -> rebuilt from the catalog;
stale (ids differ, e.g. after a crash between a catalog commit and an index save) ->
the difference is added or removed. Searches therefore always see what the catalog has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalog import Catalog
from search import vectors
from search.vectors import IndexInfo, IndexUnusable, VectorStore

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    rebuilt_because: str | None = None
    added: int = 0
    removed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rebuilt_because or self.added or self.removed)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds new readers back, so a stream
    of searches cannot starve the watcher. (FAISS allows concurrent searches but not a
    search during add/remove; a copy-on-write swap would copy the whole index, 200 MB
    at 100k x 512, on every batch the watcher adds.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex:
    """A vector store bound to its file, its space/model, and the catalog.

    Threads share it through its methods (search, add, remove, save, refresh), which
    take a read-write lock: searches run side by side, a change waits for them and
    holds them back while it runs. ``store`` is the raw backend, for single-threaded use.
    """

    def __init__(
        self, catalog: Catalog, backend: str, path: Path, space: str, info: IndexInfo
    ) -> None:
        self.catalog = catalog
        self.backend = backend
        self.path = path
        self.space = space
        self.info = info
        self._store: VectorStore | None = None
        self.report = SyncReport()
        self.lock = ReadWriteLock()
        # A reader (a server without a watcher) never writes the index file: the
        # process that holds the writer lock owns it.
        self.read_only = False
        self._mark: tuple[int, int, Any] | None = None  # the catalog's state at the last look

    @property
    def loaded(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self.open()
        assert self._store is not None
        return self._store

    def open(self) -> SyncReport:
        report = SyncReport()
        try:
            store = vectors.load(self.backend, self.path, self.info)
        except IndexUnusable as why:
            report.rebuilt_because = str(why)
            # A first run has no index yet: nothing to warn about.
            level = logging.INFO if not self.path.exists() else logging.WARNING
            log.log(level, "rebuilding vector index from the catalog: %s", why)
            store = vectors.create(self.backend, self.info)
        # The catalog's mark before reconciling: whatever is written meanwhile shows
        # as a change at the next refresh.
        mark = self.catalog.embeddings_mark(self.space, self.info.model_id)
        with self.lock.writing():
            self._store = store
            self._reconcile(store, report)
            self._mark = mark
        if report.changed:
            self.save()
        self.report = report
        return report

    def refresh(self) -> SyncReport:
        """Bring the loaded index in step with the catalog after another process changed
        it (vectors added or removed); one aggregate query when nothing changed."""
        report = SyncReport()
        mark = self.catalog.embeddings_mark(self.space, self.info.model_id)
        if mark == self._mark:
            return report
        store = self.store
        # The index's ids first, then the catalog's: the pipeline commits to the catalog
        # before it adds to the index, so an id read here as present in the index was in
        # the catalog already, and is never removed by mistake. The catalog is read
        # outside the lock, so searches are held back only while vectors change.
        with self.lock.reading():
            have = store.ids()
        extra, missing = self._difference(have)
        if self._mark is not None and self._mark[2] is not None:
            # Written since the last look but under an id the index has: a vector
            # replaced, or an id SQLite reused after deleting the newest item.
            renewed = self.catalog.embedding_ids_since(
                self.space, self.info.model_id, self._mark[2]
            )
            missing = np.union1d(missing, np.asarray(renewed, dtype=np.int64))
        batches = list(self._vectors(missing))  # read before the lock, not under it
        if len(extra) or batches:
            with self.lock.writing():
                self._apply(store, extra, batches, report)
        self._mark = mark
        return report

    def search(
        self, query: np.ndarray, k: int, allow: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        store = self.store
        with self.lock.reading():
            return store.search(query, k, allow=allow)

    def add(self, ids: Sequence[int] | np.ndarray, vecs: np.ndarray) -> None:
        store = self.store
        with self.lock.writing():
            store.add(ids, vecs)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        store = self.store
        with self.lock.writing():
            return store.remove(ids)

    def count(self) -> int:
        store = self.store
        with self.lock.reading():
            return store.count()

    def _reconcile(self, store: VectorStore, report: SyncReport) -> None:
        extra, missing = self._difference(store.ids())
        self._apply(store, extra, self._vectors(missing), report)  # streamed, batch by batch

    def _difference(self, have: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids the index has and the catalog does not, ids the catalog has and it lacks)."""
        wanted = np.asarray(
            self.catalog.embedding_ids(self.space, self.info.model_id), dtype=np.int64
        )
        return (np.setdiff1d(have, wanted, assume_unique=True),
                np.setdiff1d(wanted, have, assume_unique=True))  # fmt: skip

    def _vectors(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The catalog's vectors of ids, in batches of (ids, vectors)."""
        if not len(ids):
            return
        for rows in self.catalog.iter_embeddings(self.space, self.info.model_id, only=ids.tolist()):
            yield (np.array([r[0] for r in rows], dtype=np.int64),
                   np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))  # fmt: skip

    @staticmethod
    def _apply(
        store: VectorStore, extra: np.ndarray,
        batches: Iterable[tuple[np.ndarray, np.ndarray]], report: SyncReport,
    ) -> None:  # fmt: skip
        if len(extra):
            report.removed = store.remove(extra)
        for ids, vecs in batches:
            store.add(ids, vecs)
            report.added += len(ids)

    def describe(self) -> dict[str, Any]:
        """What the saved index holds, asked of its backend (the index is not loaded)."""
        return vectors.describe(self.backend, self.path)

    def save(self) -> None:
        if self._store is not None and not self.read_only:
            with self.lock.reading():  # serialising does not change the index
                self._store.save(self.path)
