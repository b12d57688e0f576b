"""The catalog: the source of truth (SQL). Imports nothing else of Everlook's."""

from catalog.db import make_engine, make_sessionmaker
from catalog.models import Base, Embedding, FileFailure, FilePath, Item, StageState, StageStatus
from catalog.queries import Catalog, KnownPath, NewItem

__all__ = [
    "Base",
    "Catalog",
    "Embedding",
    "FileFailure",
    "FilePath",
    "Item",
    "KnownPath",
    "NewItem",
    "StageState",
    "StageStatus",
    "make_engine",
    "make_sessionmaker",
]
