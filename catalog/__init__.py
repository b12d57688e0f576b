"""The catalog: the source of truth (SQL). Imports nothing else of Everlook's.

Its names load on first use (PEP 562): `catalog.lite`, the stdlib reader a cold query
uses, must be importable without SQLAlchemy (~0.45 s), which the rest needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from catalog.db import make_engine, make_sessionmaker
    from catalog.models import Base, Embedding, FileFailure, FilePath, Item, StageState, StageStatus
    from catalog.queries import Catalog, KnownPath, NewItem

_WHERE = {
    "make_engine": "catalog.db", "make_sessionmaker": "catalog.db",
    "Base": "catalog.models", "Embedding": "catalog.models", "FileFailure": "catalog.models",
    "FilePath": "catalog.models", "Item": "catalog.models", "StageState": "catalog.models",
    "StageStatus": "catalog.models",
    "Catalog": "catalog.queries", "KnownPath": "catalog.queries", "NewItem": "catalog.queries",
}  # fmt: skip

__all__ = [
    "Base", "Catalog", "Embedding", "FileFailure", "FilePath", "Item", "KnownPath", "NewItem",
    "StageState", "StageStatus", "make_engine", "make_sessionmaker",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'catalog' has no attribute {name!r}")
