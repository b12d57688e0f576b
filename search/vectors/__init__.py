"""Vector stores: ids are catalog item ids; scores are inner products of unit vectors.

Backends register under a name (``faiss``, ``milvus``) and must pass the shared
contract suite in ``tests/test_vector_store_contract.py``. A backend may also register a
``build``: a whole index made at once from a source of vectors (the catalog), which is
where a backend chooses and trains an approximate index; without one, ``build`` adds the
vectors to an empty store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class IndexInfo:
    """Provenance carried by an index: which model made its vectors."""

    model_id: str
    dim: int


@dataclass(frozen=True)
class BuildOptions:
    """How an index is chosen and built from its size (EVERLOOK_INDEX_* settings)."""

    exact_max: int = 100_000  # below this many vectors: exact search
    recall: float = 0.97  # recall@10 the approximate index is tuned to reach
    nlist: int = 0  # inverted lists of the approximate index; 0: from the size
    seed: int = 0
    gpu: int | None = None  # the CUDA device that may search, if FAISS's GPU build is in


class IndexUnusable(Exception):
    """An index file is missing, corrupt, or made by another model: rebuild it."""


class VectorSource(Protocol):
    """Where a build reads its vectors (the catalog): all of them, or a random sample."""

    def count(self) -> int: ...

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to n (ids, vectors) drawn at random."""
        ...

    def batches(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Every (ids, vectors), in batches."""
        ...


@runtime_checkable
class VectorStore(Protocol):
    info: IndexInfo

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors for these ids."""
        ...

    def remove(self, ids: Sequence[int] | np.ndarray) -> int: ...

    def search(
        self, query: np.ndarray, k: int, allow: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        """For each query row, up to k (id, score) pairs, best first. With ``allow``, the
        exact best k among those ids, whatever the index kind."""
        ...

    def count(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write atomically; ``extra`` is kept with the file (the catalog mark it reflects)
        and read back by ``load`` as ``store.meta``."""
        ...


# Optional on a store: ``meta`` (dict: what its file says), ``dirty`` (changed since it
# was loaded or saved), ``describe()`` and ``rebuild_reason(options, recheck=False)`` (why the index
# kind no longer suits its size, or None). VectorIndex reads them with getattr.


class StoreFactory(Protocol):
    def __call__(self, info: IndexInfo, **kwargs: Any) -> VectorStore: ...


class StoreLoader(Protocol):
    def __call__(self, path: Path, expect: IndexInfo) -> VectorStore: ...


Builder = Callable[..., VectorStore]  # (info, source, options, **where) -> store
_FACTORIES: dict[str, tuple[Callable[..., VectorStore], Callable[..., VectorStore]]] = {}
_DESCRIBERS: dict[str, Callable[[Path], dict[str, Any]]] = {}
_BUILDERS: dict[str, Builder] = {}


def register(
    name: str,
    create: Callable[..., VectorStore],
    load: Callable[..., VectorStore],
    describe: Callable[[Path], dict[str, Any]] | None = None,
    build: Builder | None = None,
) -> None:
    """describe(path) says what a saved index holds (vectors, model_id, dim) cheaply,
    without loading it: `everlook stats` asks it instead of knowing file formats."""
    _FACTORIES[name] = (create, load)
    if describe is not None:
        _DESCRIBERS[name] = describe
    if build is not None:
        _BUILDERS[name] = build


def describe(name: str, path: Path) -> dict[str, Any]:
    _builtin(name)
    info: dict[str, Any] = {"backend": name, "path": str(path), "exists": path.exists()}
    if info["exists"] and name in _DESCRIBERS:
        try:
            info.update(_DESCRIBERS[name](path))
        except Exception as exc:  # a corrupt file is reported, and rebuilt on open
            info["problem"] = str(exc)
    return info


def _builtin(name: str) -> None:
    if name == "faiss":
        import search.vectors.faiss_store
    elif name == "milvus":
        import search.vectors.milvus_store  # noqa: F401  (pymilvus: only when asked for)


def create(name: str, info: IndexInfo, **kwargs: Any) -> VectorStore:
    _builtin(name)
    return _FACTORIES[name][0](info, **kwargs)


def load(name: str, path: Path, expect: IndexInfo, **kwargs: Any) -> VectorStore:
    """Load a saved index; raises IndexUnusable when it cannot serve ``expect``.
    ``kwargs``: where a server-backed store lives (milvus: uri, token, alias)."""
    _builtin(name)
    return _FACTORIES[name][1](path, expect, **kwargs)


def build(
    name: str, info: IndexInfo, source: VectorSource, options: BuildOptions | None = None,
    **kwargs: Any,
) -> VectorStore:  # fmt: skip
    """A whole index from ``source``, of the kind its size calls for."""
    _builtin(name)
    options = options or BuildOptions()
    if name in _BUILDERS:
        return _BUILDERS[name](info, source, options, **kwargs)
    store = create(name, info, **kwargs)
    for ids, vecs in source.batches():
        store.add(ids, vecs)
    return store


def available() -> list[str]:
    """The backends this installation can run (milvus: with pymilvus, the milvus extra)."""
    from importlib.util import find_spec

    return ["faiss", *(["milvus"] if find_spec("pymilvus") is not None else [])]
