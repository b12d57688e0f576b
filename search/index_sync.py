"""Keeping a vector index file in step with the catalog, which is the source of truth.

On open, the index file is read memory-mapped (milliseconds at any size) and brought up
to the catalog from the mark it recorded (search.vectors.catalog_sync): nothing is read
when nothing changed, the rows written since when the catalog moved, the full difference
of ids only when counts disagree. Missing, corrupt, or another model's -> rebuilt from the
catalog, of the kind its size calls for (exact below EVERLOOK_INDEX_EXACT_MAX vectors, an
IVF above: search.vectors.ann). Searches therefore always see what the catalog has.

The process that owns the index (not ``read_only``: the one that indexes) rebuilds it in
the background when it crosses the threshold or doubles past what its lists were trained
on: the old index serves meanwhile, what this process adds or removes meanwhile is
replayed on the new one, which is then swapped in and saved. A reading server follows a
newer file that the owner saved by switching to it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from catalog import Catalog
from search import vectors
from search.vectors import BuildOptions, IndexInfo, IndexUnusable, VectorStore
from search.vectors.catalog_sync import CatalogVectors, CatchUp, Mark, SyncReport, table_mark

__all__ = ["ReadWriteLock", "SyncReport", "VectorIndex"]

log = logging.getLogger(__name__)


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


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class VectorIndex:
    """A vector store bound to its file, its space/model, and the catalog.

    Threads share it through its methods (search, add, remove, save, refresh), which
    take a read-write lock: searches run side by side, a change waits for them and
    holds them back while it runs. ``store`` is the raw backend, for single-threaded use.
    """

    def __init__(
        self, catalog: Catalog, backend: str, path: Path, space: str, info: IndexInfo,
        options: BuildOptions | None = None, where: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.catalog = catalog
        self.backend = backend
        # Where a server-backed store lives (milvus: uri, token, alias); FAISS: nothing.
        self.where = dict(where or {})
        self.path = path
        self.space = space
        self.info = info
        self.options = options or BuildOptions()
        self._store: VectorStore | None = None
        self.report = SyncReport()
        self.lock = ReadWriteLock()
        # A reader (a server without a watcher) never writes the index file: the
        # process that holds the writer lock owns it.
        self.read_only = False
        self._mark: Mark | None = None  # the catalog's state the store matches
        self._file: tuple[int, int, int] | None = None  # the file the store came from
        self._open_lock = threading.Lock()
        # (ids, vectors) added or (ids, None) removed while a rebuild reads the catalog
        self._journal: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._rebuilding: threading.Thread | None = None
        self._rebuild_lock = threading.Lock()
        # Saves one at a time, each of the store serving when it starts: a save of the
        # store a rebuild replaced must never land after the new one's.
        self._save_lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self.open()
        assert self._store is not None
        return self._store

    def _source(self) -> CatalogVectors:
        return CatalogVectors(self.catalog, self.space, self.info.model_id, self.info.dim)

    def open(self) -> SyncReport:
        with self._open_lock:
            report = SyncReport()
            store, then = self._load_or_build(report)
            # The store is not shared yet: caught up without taking the lock.
            mark = CatchUp(self.catalog, self._source(), store).run(then, report)
            with self.lock.writing():
                self._store, self._mark = self._placed(store), mark
            # A rebuild or a full difference is O(catalog) to do again; a catch-up is not,
            # and is left to the owner's next save.
            if report.rebuilt_because or report.checked_all:
                self.save()
            self.report = report
            return report

    def _load_or_build(self, report: SyncReport) -> tuple[VectorStore, Mark | None]:
        try:
            store = vectors.load(self.backend, self.path, self.info, **self.where)
            self._file = _stat(self.path)
            return store, Mark.from_json(getattr(store, "meta", {}).get("mark"))
        except IndexUnusable as why:
            report.rebuilt_because = str(why)
            # A first run has no index yet: nothing to warn about.
            level = logging.INFO if not self.path.exists() else logging.WARNING
            log.log(level, "rebuilding vector index from the catalog: %s", why)
            then = table_mark(self.catalog)  # before reading: later writes show as changes
            store = vectors.build(self.backend, self.info, self._source(), self.options,
                                  **self.where)  # fmt: skip
            return store, then

    def _placed(self, store: VectorStore) -> VectorStore:
        """The store, told to search on the GPU when the options say so (a CUDA device
        and FAISS's GPU build: everlook.wiring)."""
        use_gpu = getattr(store, "use_gpu", None)
        if self.options.gpu is not None and use_gpu is not None:
            from search.gpu import faiss_gpu_available  # FAISS is loaded by now

            if faiss_gpu_available():
                use_gpu(self.options.gpu)
        return store

    def refresh(self) -> SyncReport:
        """Bring the loaded index in step with the catalog after another process changed
        it (vectors added or removed): three cheap reads when nothing changed, the rows
        written since when it did; a newer file saved by the owner is switched to."""
        if self._store is None:
            return self.open()
        report = SyncReport()
        follow = getattr(self._store, "follow", None)
        if follow is not None:
            follow()  # a shared store's rebuild another process published
        if self.read_only and getattr(self._store, "shared", False):
            # A store every process writes (Milvus): the writers keep it in step with
            # the catalog; a reader re-adding their rows would only repeat their work.
            return report
        if _stat(self.path) != self._file and self._switch_to_file(report):
            return report
        catch = CatchUp(self.catalog, self._source(), self._store, self.lock.writing,
                        self.lock.reading)  # fmt: skip
        self._mark = catch.run(self._mark, report)
        return report

    def _switch_to_file(self, report: SyncReport) -> bool:
        """Serve the file another process saved (its changes written in, its mark newer):
        loaded and caught up aside, then swapped in. False: it is unusable, keep ours."""
        try:
            fresh = vectors.load(self.backend, self.path, self.info, **self.where)
        except IndexUnusable:
            return False
        stat = _stat(self.path)
        then = Mark.from_json(getattr(fresh, "meta", {}).get("mark"))
        mark = CatchUp(self.catalog, self._source(), fresh).run(then, SyncReport())
        with self.lock.writing():
            before = self._store.count() if self._store is not None else 0
            self._store, self._mark, self._file = self._placed(fresh), mark, stat
        after = fresh.count()
        report.added, report.removed = max(0, after - before), max(0, before - after)
        report.notes.append("switched to the index file another process saved")
        report.switched = True
        return True

    def search(
        self, query: np.ndarray, k: int, allow: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        store = self.store
        with self.lock.reading():
            return store.search(query, k, allow=allow)

    def add(self, ids: Sequence[int] | np.ndarray, vecs: np.ndarray) -> None:
        if self._store is None:
            self.open()
        with self.lock.writing():
            store = self._store  # the one now: a rebuild may have swapped it meanwhile
            assert store is not None
            store.add(ids, vecs)
            if self._journal is not None:  # a rebuild is reading the catalog: replay later
                self._journal.append((np.array(ids, dtype=np.int64), np.array(vecs)))
        self._consider_rebuild()

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        if self._store is None:
            self.open()
        with self.lock.writing():
            store = self._store  # the one now, as in add
            assert store is not None
            if self._journal is not None:
                self._journal.append((np.array(ids, dtype=np.int64), None))
            return store.remove(ids)

    def count(self) -> int:
        store = self.store
        with self.lock.reading():
            return store.count()

    def describe(self) -> dict[str, Any]:
        """What the saved index holds, asked of its backend (kind, vectors, recall@10
        measured at its build...), and what this process serves when it is loaded."""
        out = vectors.describe(self.backend, self.path)
        describe = getattr(self._store, "describe", None)
        if describe is None and self.where:  # a server's store: ask it, without a catch-up
            try:
                describe = getattr(vectors.load(self.backend, self.path, self.info,
                                                **self.where), "describe", None)  # fmt: skip
            except Exception as exc:  # unreachable, or not built yet: said, not raised
                out["problem"] = str(exc)
        if describe is not None:
            out["serving"] = describe()
        out["rebuilding"] = self._rebuilding is not None and self._rebuilding.is_alive()
        return out

    def save(self) -> None:
        with self._save_lock:
            self._save()
        self._consider_rebuild()

    def _save(self) -> None:
        store = self._store
        if store is None or self.read_only:
            return
        meta = getattr(store, "meta", {})
        if getattr(store, "dirty", True) or meta.get("mark") is None:
            with self.lock.reading():  # serialising does not change the index
                mark = table_mark(self.catalog)
                wanted = self.catalog.embedding_count(self.space, self.info.model_id)
                # The mark is only written when the index holds as many vectors as the
                # catalog then: a next open trusts it and reads nothing.
                ok = store.count() == wanted
                store.save(self.path, {"mark": mark.to_json() if ok else None})
                self._file = _stat(self.path)

    # ---- rebuilding ----------------------------------------------------------------
    def _consider_rebuild(self) -> None:
        if self.read_only or self._store is None:
            return
        thread = self._rebuilding
        if thread is not None and thread.is_alive():
            return  # one at a time: its journal takes what is added meanwhile
        reason = getattr(self._store, "rebuild_reason", None)
        why = reason(self.options) if reason is not None else None
        if why:
            self.rebuild(why)

    def rebuild(self, why: str = "asked for", wait: bool = False) -> None:
        """Build a new index from the catalog in a background thread while this one
        serves; at most one at a time."""
        with self._rebuild_lock:
            thread = self._rebuilding
            if thread is None or not thread.is_alive():
                with self.lock.writing():
                    self._journal = []  # before the build reads anything
                thread = threading.Thread(target=self._rebuild, args=(why,), daemon=True,
                                          name=f"rebuild-{self.space}-index")  # fmt: skip
                self._rebuilding = thread
                thread.start()
        if wait:
            thread.join()

    def finish_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild (a command about to exit); True when none runs."""
        thread = self._rebuilding
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _rebuild(self, why: str) -> None:
        if getattr(self._store, "shared", False):
            # A store every process writes (Milvus): one process rebuilds it, the others
            # follow the alias it publishes.
            from catalog.db import try_exclusive

            name = f"rebuild:{self.where.get('alias') or self.path}"
            with try_exclusive(self.catalog.engine, name) as mine:
                follow = getattr(self._store, "follow", None)
                if follow is not None:
                    follow()  # published meanwhile by the one that held it?
                reason = getattr(self._store, "rebuild_reason", None)
                if not mine or reason is None or reason(self.options, recheck=True) is None:
                    with self.lock.writing():
                        self._journal = None
                    return
                self._rebuild_now(why)
            return
        self._rebuild_now(why)

    def _rebuild_now(self, why: str) -> None:
        log.info("rebuilding the %s vector index in the background: %s", self.space, why)
        try:
            then = table_mark(self.catalog)  # before the build reads: later writes show
            fresh = vectors.build(self.backend, self.info, self._source(), self.options,
                                  **self.where)  # fmt: skip
            with self._save_lock, self.lock.writing():  # no old save lands after this
                for ids, vecs in self._journal or []:
                    if vecs is not None:
                        fresh.add(ids, vecs)
                    else:
                        fresh.remove(ids)
                self._journal = None
                self._store = self._placed(fresh)
            self.save()
            if getattr(fresh, "shared", False):
                # Other processes wrote to the old store meanwhile (through the catalog
                # first): what they wrote since the build began is read back in.
                catch = CatchUp(self.catalog, self._source(), fresh, self.lock.writing,
                                self.lock.reading)  # fmt: skip
                self._mark = catch.run(then, SyncReport())
        except Exception:
            log.exception("rebuilding the %s vector index failed; the old one serves", self.space)
        finally:
            with self.lock.writing():
                self._journal = None
