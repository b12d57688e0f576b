"""Keeping a vector index file in step with the catalog, which is the source of truth.

On open, the index file is loaded and compared with the catalog's stored vectors for
the current model: missing, corrupt, or another model's -> rebuilt from the catalog;
stale (ids differ, e.g. after a crash between a catalog commit and an index save) ->
the difference is added or removed. Searches therefore always see what the catalog has.
"""

from __future__ import annotations

import logging
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


class VectorIndex:
    """A vector store bound to its file, its space/model, and the catalog."""

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
        self._store = store
        self._reconcile(store, report)
        if report.changed:
            self.save()
        self.report = report
        return report

    def _reconcile(self, store: VectorStore, report: SyncReport) -> None:
        wanted = np.asarray(
            self.catalog.embedding_ids(self.space, self.info.model_id), dtype=np.int64
        )
        have = store.ids()
        extra = np.setdiff1d(have, wanted, assume_unique=True)
        missing = np.setdiff1d(wanted, have, assume_unique=True)
        if len(extra):
            report.removed = store.remove(extra)
        if len(missing):
            for rows in self.catalog.iter_embeddings(
                self.space, self.info.model_id, only=missing.tolist()
            ):
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
                store.add(ids, vecs)
                report.added += len(ids)

    def describe(self) -> dict[str, Any]:
        """What the saved index holds, asked of its backend (the index is not loaded)."""
        return vectors.describe(self.backend, self.path)

    def save(self) -> None:
        if self._store is not None:
            self._store.save(self.path)
