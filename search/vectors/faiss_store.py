"""FAISS backend: exact (an id map over a flat index) below a size, an inverted file (IVF,
see ``ann``) above it; both served memory-mapped from their file (``faiss_file``).

A store read from a file serves it read only: a query touches the IVF lists it probes,
not the 2 GB of a million vectors. Vectors added or removed afterwards live beside it (an
exact overlay, and the file's ids hidden) until ``save`` writes them in. A store built
or created in memory takes changes directly until its first save.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from search.vectors import BuildOptions, IndexInfo, VectorSource, ann, faiss_file, register


def _ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _flat(dim: int) -> Any:
    # IndexIDMap2 keeps id -> slot so vectors can be removed and reconstructed.
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _selector(ids: np.ndarray) -> tuple[Any, Any]:
    """A FAISS selector of ids and what must outlive it. A bitmap (one bit per id up to
    the largest) checks an id in one load, about a third faster than a hash set when a
    search looks at every vector; a set beyond 64M ids (an 8 MB bitmap)."""
    if len(ids) and ids.min() >= 0 and ids.max() < (1 << 26):
        mask = np.zeros(int(ids.max()) + 1, dtype=bool)
        mask[ids] = True
        bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits
    return faiss.IDSelectorBatch(ids), None


@dataclass
class _State:
    """What searches read, swapped as a whole when a save moves the store to its new
    file (searches run beside a save; add and remove run alone)."""

    index: Any  # IndexIDMap2(IndexFlatIP) or IndexIVFFlat
    mapped: bool = False  # read from a file, memory-mapped: never written to
    overlay: Any = None  # exact store of what was added after the file was read
    hidden: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    base_ids: np.ndarray | None = None  # sorted ids in the file, read when first needed
    fd: int | None = None  # the file read, open: its bytes, even once replaced


class FaissStore:
    def __init__(self, info: IndexInfo, index: Any = None, meta: dict[str, Any] | None = None):
        self.info = info
        self.meta: dict[str, Any] = dict(meta or {"kind": "flat"})
        self._state = _State(index if index is not None else _flat(info.dim))
        self.dirty = index is not None  # built in memory: not on disk yet
        self._gpu: Any = None  # (device number, search.gpu.GpuMirror or None): use_gpu
        self._gpu_lock = threading.Lock()

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._state.index, faiss.IndexIVF) else "flat"

    # ---- changes -------------------------------------------------------------------
    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        arr_ids = _ids(ids)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(arr_ids), -1)
        if vecs.shape[1] != self.info.dim:
            raise ValueError(f"vector dimension {vecs.shape[1]} != index dimension {self.info.dim}")
        if len(arr_ids) == 0:
            return
        # The last vector of an id repeated in one batch wins, as it would one by one.
        last = len(arr_ids) - 1 - np.unique(arr_ids[::-1], return_index=True)[1]
        arr_ids, vecs = arr_ids[last], vecs[last]
        self.remove(arr_ids)  # replace, never duplicate an id
        st = self._state
        if st.mapped:
            if st.overlay is None:
                st.overlay = _flat(self.info.dim)
            st.overlay.add_with_ids(vecs, arr_ids)
        elif self.kind == "ivf":
            ann.add_assigned(st.index, arr_ids, vecs, ann.centroids_of(st.index))
        else:
            st.index.add_with_ids(vecs, arr_ids)
        self._changed()

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        arr_ids = np.unique(_ids(ids))
        st = self._state
        if len(arr_ids) == 0 or self.count() == 0:
            return 0
        if not st.mapped:
            n = int(st.index.remove_ids(faiss.IDSelectorBatch(arr_ids)))
        else:
            n = 0
            if st.overlay is not None and st.overlay.ntotal:
                n = int(st.overlay.remove_ids(faiss.IDSelectorBatch(arr_ids)))
            base = self._base_ids(st)  # sorted: a binary search per id, not a merge of all
            at = np.minimum(np.searchsorted(base, arr_ids), max(len(base) - 1, 0))
            present = arr_ids[base[at] == arr_ids] if len(base) else arr_ids[:0]
            fresh = np.setdiff1d(present, st.hidden, assume_unique=True)
            st.hidden = np.union1d(st.hidden, fresh)
            n += len(fresh)
        if n:
            self._changed()
        return n

    def use_gpu(self, device_no: int = 0) -> None:
        """Searches without a filter run on a GPU copy of the index (search.gpu.GpuMirror,
        cloned at the first such search and again after the index changes in place); the
        CPU index stays the one changed, filtered, overlaid and saved."""
        self._gpu = (device_no, None)

    def _gpu_search(
        self, st: _State, q: np.ndarray, k: int
    ) -> list[list[tuple[int, float]]] | None:
        from search.gpu import GpuMirror

        with self._gpu_lock:  # one clone, even when several searches ask at once
            device_no, mirror = self._gpu
            if mirror is None or mirror.cpu is not st.index:
                mirror = GpuMirror(st.index, device_no)
                self._gpu = (device_no, mirror)
        got = mirror.search(q, k)
        if got is None:
            return None  # no GPU FAISS, k too large, a failed search: the CPU answers
        rows = [
            [(int(i), float(sc)) for i, sc in zip(ids, row, strict=True) if i != -1]
            for ids, row in zip(got[1], got[0], strict=True)
        ]
        # The probed lists may hold fewer than k: the CPU path probes more, never short.
        return rows if min(len(r) for r in rows) >= min(k, st.index.ntotal) else None

    def _changed(self) -> None:
        if self._gpu is not None and not self._state.mapped:
            self._gpu = (self._gpu[0], None)  # changed in place: clone it again
        self.dirty = True
        # The catalog mark the file recorded no longer describes these contents.
        self.meta.pop("mark", None)

    # ---- reads ---------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, allow: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        st = self._state  # one consistent view, even if a save swaps it meanwhile
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1, self.info.dim)
        allow_ids = None if allow is None else np.unique(_ids(allow))
        k = min(k, self.count() if allow_ids is None else len(allow_ids))
        if k <= 0:
            return [[] for _ in range(len(q))]
        base = self._search_base(st, q, k, allow_ids)
        if st.overlay is None or not st.overlay.ntotal:
            return base
        over = _search(st.overlay, q, k, allow_ids, None)
        return [sorted(a + b, key=lambda p: -p[1])[:k] for a, b in zip(base, over, strict=True)]

    def _search_base(
        self, st: _State, q: np.ndarray, k: int, allow_ids: np.ndarray | None
    ) -> list[list[tuple[int, float]]]:
        if allow_ids is not None and len(st.hidden):
            allow_ids = np.setdiff1d(allow_ids, st.hidden, assume_unique=True)
        if st.index.ntotal == 0 or (allow_ids is not None and not len(allow_ids)):
            return [[] for _ in range(len(q))]
        exclude = st.hidden if allow_ids is None and len(st.hidden) else None
        if self._gpu is not None and allow_ids is None and exclude is None:
            got = self._gpu_search(st, q, k)
            if got is not None:
                return got
        if not isinstance(st.index, faiss.IndexIVF):
            return _search(st.index, q, k, allow_ids, exclude)
        # With an allow-list every list is probed: the exact top k among those ids (an
        # id check per vector, a distance per allowed one; ~13 ms at 1% of 1M).
        nprobe = st.index.nlist if allow_ids is not None else max(1, st.index.nprobe)
        want = min(k, st.index.ntotal - (len(exclude) if exclude is not None else 0))
        while True:
            rows = _search(st.index, q, k, allow_ids, exclude, nprobe)
            # The probed lists may hold fewer than k: probe more, never answer short.
            if nprobe >= st.index.nlist or min(len(r) for r in rows) >= want:
                return rows
            nprobe = min(st.index.nlist, nprobe * 4)

    def count(self) -> int:
        st = self._state
        over = st.overlay.ntotal if st.overlay is not None else 0
        return int(st.index.ntotal) - len(st.hidden) + int(over)

    def ids(self) -> np.ndarray:
        st = self._state
        base = np.setdiff1d(self._base_ids(st), st.hidden, assume_unique=True)
        if st.overlay is not None and st.overlay.ntotal:
            base = np.concatenate([base, faiss.vector_to_array(st.overlay.id_map)])
        return base.astype(np.int64)

    def _base_ids(self, st: _State) -> np.ndarray:
        if st.base_ids is not None:
            return st.base_ids
        if isinstance(st.index, faiss.IndexIVF):
            parts = [np.asarray(ids) for _, ids, _ in ann.list_views(st.index)]
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        elif st.index.ntotal:
            ids = faiss.vector_to_array(st.index.id_map)
        else:
            ids = np.zeros(0, dtype=np.int64)
        ids = np.sort(ids.astype(np.int64))
        if st.mapped:  # a file's ids never change: read them once (8 MB at 1M)
            st.base_ids = ids
        return ids

    def describe(self) -> dict[str, Any]:
        st = self._state
        keys = ("kind", "nlist", "nprobe", "recall_at_10", "recall", "trained_on")
        return {**{k: self.meta[k] for k in keys if k in self.meta}, "kind": self.kind,
                "vectors": self.count(), "memory_mapped": st.mapped,
                "unsaved": int(st.overlay.ntotal if st.overlay is not None else 0)
                + len(st.hidden)}  # fmt: skip

    def rebuild_reason(self, options: BuildOptions, recheck: bool = False) -> str | None:
        """Why this index no longer suits its size or settings (None: it does); always
        counted here (a local count), so recheck changes nothing."""
        n = self.count()
        if self.kind == "flat":
            if n >= max(options.exact_max, 1):
                return f"{n} vectors reached EVERLOOK_INDEX_EXACT_MAX ({options.exact_max})"
            return None
        trained = int(self.meta.get("trained_on") or 0)
        if n < options.exact_max // 2:  # half: no back and forth around the threshold
            return f"{n} vectors: back to exact search below {options.exact_max // 2}"
        if n >= 2 * max(trained, 1):
            return f"grew from {trained} to {n} vectors since its lists were trained"
        if self.meta.get("recall_target") != options.recall:
            return f"recall target changed to {options.recall}"
        if options.nlist and self.meta.get("nlist") != min(options.nlist, n):
            return f"EVERLOOK_INDEX_NLIST changed to {options.nlist}"
        return None

    # ---- files ---------------------------------------------------------------------
    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        self._save(path, extra)
        _release_freed_memory()  # what the state before held, now freed

    def _save(self, path: Path, extra: dict[str, Any] | None) -> None:
        st = self._state
        meta = {**self.meta, **(extra or {}), "kind": self.kind, "model_id": self.info.model_id,
                "dim": self.info.dim, "count": self.count(), "faiss": faiss.__version__,
                "saved_at": ann.now_iso()}  # fmt: skip
        if isinstance(st.index, faiss.IndexIVF):
            meta["nprobe"] = int(st.index.nprobe)

        def write_faiss(tmp: str) -> None:
            if st.mapped and st.overlay is None and not len(st.hidden) and st.fd is not None:
                faiss_file.copy_faiss_part(st.fd, int(self.meta["faiss_bytes"]), tmp)
            else:
                faiss.write_index(_merged(st) if st.mapped else st.index, tmp)

        faiss_file.write(path, write_faiss, meta)
        # From now on, serve the file just written: its memory is the page cache's.
        fresh = load_faiss(path, self.info)
        self._state, self.meta, self.dirty = fresh._state, fresh.meta, False


def _release_freed_memory() -> None:
    """glibc keeps freed heap for reuse: after a built index (in memory) was swapped for
    its file, 2.2 GB stayed resident at 1M; malloc_trim gave back all but 0.1 GB."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _search(
    index: Any, q: np.ndarray, k: int, allow: np.ndarray | None, exclude: np.ndarray | None,
    nprobe: int | None = None,
) -> list[list[tuple[int, float]]]:  # fmt: skip
    keep: list[Any] = []  # selectors and their bitmaps must outlive the search
    sel = None
    if allow is not None:
        sel, bits = _selector(allow)
        keep += [sel, bits]
    elif exclude is not None:
        inner, bits = _selector(exclude)
        sel = faiss.IDSelectorNot(inner)
        keep += [inner, bits, sel]
    # faiss's SWIG constructors take keyword fields; its stubs don't say so.
    params: Any = None
    if nprobe is not None:
        params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # type: ignore[call-arg]
    elif sel is not None:
        params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
    with _one_core(len(q)):
        scores, labels = index.search(q, k, params=params)
    del keep
    return [
        [(int(i), float(s)) for i, s in zip(row_ids, row_s, strict=True) if i != -1]
        for row_ids, row_s in zip(labels, scores, strict=True)
    ]


@contextmanager
def _one_core(nq: int) -> Iterator[None]:
    """A single query runs on one core (OpenMP's setting is per thread). Spread over both
    cores, it must wait until the second one is free: with the other core busy (a text
    encoding, another query, another program) an exact search of 20k vectors took 38 ms
    instead of 7.5, an IVF query over its lists 28 ms instead of 0.6. Alone on an idle
    machine two cores halve it (IVF at 1M: 6.5 ms against 12); a server is seldom idle."""
    if nq > 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _merged(st: _State) -> Any:
    """An in-memory index of a mapped file's vectors (less the hidden ids) plus the
    overlay's: what a save writes. Built list by list, no second copy."""
    over_ids = np.zeros(0, dtype=np.int64)
    over_vecs = np.zeros((0, st.index.d), dtype=np.float32)
    if st.overlay is not None and st.overlay.ntotal:
        over_ids = faiss.vector_to_array(st.overlay.id_map).astype(np.int64)
        over_vecs = st.overlay.index.reconstruct_n(0, st.overlay.ntotal)
    if isinstance(st.index, faiss.IndexIVF):
        centroids = ann.centroids_of(st.index)
        out = ann.empty_ivf(centroids)
        out.nprobe = st.index.nprobe
        for lno, ids, vecs in ann.list_views(st.index):
            keep = ~np.isin(ids, st.hidden) if len(st.hidden) else slice(None)
            kept_ids = np.ascontiguousarray(ids[keep], dtype=np.int64)
            kept = np.ascontiguousarray(vecs[keep])
            lists = np.full(len(kept_ids), lno, dtype=np.int64)
            out.add_core(len(kept_ids), faiss.swig_ptr(kept), faiss.swig_ptr(kept_ids),
                         faiss.swig_ptr(lists))  # fmt: skip
        ann.add_assigned(out, over_ids, over_vecs, centroids)
        return out
    out = _flat(st.index.d)
    if st.index.ntotal:
        ids = faiss.vector_to_array(st.index.id_map).astype(np.int64)
        flat: Any = faiss.downcast_index(st.index.index)
        vecs = faiss.rev_swig_ptr(flat.get_xb(), st.index.ntotal * st.index.d)
        vecs = np.asarray(vecs).reshape(-1, st.index.d)
        keep = ~np.isin(ids, st.hidden)
        out.add_with_ids(np.ascontiguousarray(vecs[keep]), ids[keep])
    if len(over_ids):
        out.add_with_ids(over_vecs, over_ids)
    return out


def load_faiss(path: Path, expect: IndexInfo) -> FaissStore:
    index, header, fd = faiss_file.open_mapped(path, expect)
    store = FaissStore(expect, index, header)
    store._state.mapped, store._state.fd, store.dirty = True, fd, False
    weakref.finalize(store._state, os.close, fd)  # with the last search holding the state
    return store


def _create(info: IndexInfo, **_: Any) -> FaissStore:
    return FaissStore(info)


def build_faiss(info: IndexInfo, source: VectorSource, options: BuildOptions) -> FaissStore:
    """The index a source's size calls for: exact below options.exact_max, else IVF."""
    import time

    t0 = time.perf_counter()
    if source.count() < max(options.exact_max, 1):
        store = FaissStore(info, _flat(info.dim), {"kind": "flat"})
        for ids, vecs in source.batches():
            store.add(ids, vecs)
        store.meta.update(trained_on=store.count(), recall_at_10=1.0, built_at=ann.now_iso(),
                          build_seconds=round(time.perf_counter() - t0, 2))  # fmt: skip
        return store
    index, meta = ann.build_ivf(info.dim, source, options)
    return FaissStore(info, index, meta)


def describe_faiss(path: Path) -> dict[str, Any]:
    header = faiss_file.read_header(path)
    keys = ("kind", "nlist", "nprobe", "recall_at_10", "recall", "trained_on",
            "build_seconds", "built_at", "saved_at")  # fmt: skip
    return {"bytes": path.stat().st_size, "vectors": header.get("count"),
            "model_id": header.get("model_id"), "dim": header.get("dim"),
            **{k: header[k] for k in keys if k in header}}  # fmt: skip


register("faiss", _create, load_faiss, describe_faiss, build_faiss)
