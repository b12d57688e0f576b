"""Vector stores: ids are catalog item ids; scores are inner products of unit vectors.

Backends register under a name (``faiss``; ``milvus`` later) and must pass the shared
contract suite in ``tests/test_vector_store_contract.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class IndexInfo:
    """Provenance carried by an index: which model made its vectors."""

    model_id: str
    dim: int


class IndexUnusable(Exception):
    """An index file is missing, corrupt, or made by another model: rebuild it."""


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
        """For each query row, up to k (id, score) pairs, best first."""
        ...

    def count(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...


class StoreFactory(Protocol):
    def __call__(self, info: IndexInfo, **kwargs: Any) -> VectorStore: ...


class StoreLoader(Protocol):
    def __call__(self, path: Path, expect: IndexInfo) -> VectorStore: ...


_FACTORIES: dict[str, tuple[Callable[..., VectorStore], Callable[..., VectorStore]]] = {}
_DESCRIBERS: dict[str, Callable[[Path], dict[str, Any]]] = {}


def register(
    name: str,
    create: Callable[..., VectorStore],
    load: Callable[..., VectorStore],
    describe: Callable[[Path], dict[str, Any]] | None = None,
) -> None:
    """describe(path) says what a saved index holds (vectors, model_id, dim) cheaply,
    without loading it: `everlook stats` asks it instead of knowing file formats."""
    _FACTORIES[name] = (create, load)
    if describe is not None:
        _DESCRIBERS[name] = describe


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
        import search.vectors.faiss_store  # noqa: F401


def create(name: str, info: IndexInfo, **kwargs: Any) -> VectorStore:
    _builtin(name)
    return _FACTORIES[name][0](info, **kwargs)


def load(name: str, path: Path, expect: IndexInfo) -> VectorStore:
    """Load a saved index; raises IndexUnusable when it cannot serve ``expect``."""
    _builtin(name)
    return _FACTORIES[name][1](path, expect)


def available() -> list[str]:
    _builtin("faiss")
    return sorted(_FACTORIES)
