"""A read-only view of a SQLite catalog through the standard library's sqlite3 alone.

A cold `everlook search "words"` has 0.6 s in all (issue [8]), and importing SQLAlchemy
costs ~0.45 s of it on a 2-core machine. This reader answers the few questions a plain
query asks (the schema's revision, the space's active model, the state of its vectors,
and what a result row shows) with the same answers as :class:`catalog.Catalog` (a test
compares the two on the same file) and nothing else: anything more (filters, writes,
PostgreSQL) goes through the real catalog.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from catalog.words import VOCABULARY, phrase

CHUNK = 500  # ids per IN (...): SQLite's variable limit is far above; keeps plans simple


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i : i + CHUNK])


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _time(value: Any) -> datetime | None:
    """A DateTime column as SQLAlchemy's SQLite dialect stores it ('YYYY-MM-DD HH:MM:SS.ffffff')."""
    if value is None:
        return None
    return datetime.fromisoformat(str(value))


class LiteCatalog:
    """Opens the SQLite file read-only (`mode=ro`): it never creates, migrates or locks
    anything for writing, so it can't disturb a running indexer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A URI, percent-encoded: a folder named with "#", "?" or "%" must not cut it short
        # (SQLite would open, or create, another file).
        uri = path.resolve().as_uri() + "?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self.conn.execute("PRAGMA query_only = ON")
        self.browse = self  # the parts of Catalog's interface result rows use
        self.stages = self

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> LiteCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with closing(self.conn.execute(sql, args)) as cur:
            return cur.fetchall()

    # ---- state --------------------------------------------------------------------------
    def revision(self) -> str | None:
        try:
            rows = self._all("SELECT version_num FROM alembic_version")
        except sqlite3.OperationalError:
            return None
        return str(rows[0][0]) if len(rows) == 1 else None

    def active_model(self, space: str) -> tuple[str, dict[str, Any]] | None:
        """(model id, its builder's arguments) of the space's active model."""
        rows = self._all("SELECT active_model_id, active_args FROM spaces WHERE name = ?", (space,))
        return (str(rows[0][0]), json.loads(rows[0][1])) if rows else None

    def items_labelled_in(self, text: str, kind: str = "imagenet") -> dict[int, float]:
        """As Catalog.items_labelled_in: items whose stored label of this kind the text
        names as a whole phrase -> the best such label's score."""
        words = phrase(text)
        vocab = self._all(VOCABULARY.replace(":kind", "?"), (kind, kind))
        named = [v for (v,) in vocab if phrase(v) in words]
        if not named:
            return {}
        rows = self._all(
            "SELECT item_id, max(score) FROM labels "
            f"WHERE kind = ? AND label IN ({_marks(len(named))}) GROUP BY item_id",
            (kind, *named),
        )
        return {int(i): float(sc) for i, sc in rows}

    def embeddings_table_mark(self) -> tuple[int, int, datetime | None]:
        """As Catalog.embeddings_table_mark: (rows, highest row id, its created_at)."""
        (rows,) = self._all("SELECT count(*) FROM embeddings")[0]
        last = self._all("SELECT id, created_at FROM embeddings ORDER BY id DESC LIMIT 1")
        return int(rows), int(last[0][0]) if last else 0, _time(last[0][1]) if last else None

    # ---- what a result row shows ----------------------------------------------------------
    def paths_for(self, item_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {i: [] for i in item_ids}
        for chunk in _chunks(list(item_ids)):
            inn = _marks(len(chunk))
            sql = f"SELECT item_id, path FROM paths WHERE item_id IN ({inn}) ORDER BY path"
            for item_id, raw in self._all(sql, chunk):
                out[item_id].append(os.fsdecode(bytes(raw)))  # stored as the OS's bytes
        return out

    def summaries(self, item_ids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(item_ids):
            sql = (
                "SELECT id, kind, width, height, taken_at, duration_s FROM items "
                f"WHERE id IN ({_marks(len(chunk))})"
            )
            for item_id, kind, w, h, taken, dur in self._all(sql, chunk):
                when = _time(taken)
                out[item_id] = {"kind": kind, "width": w, "height": h,
                                "taken_at": when.isoformat() if when else None,
                                "duration_s": dur}  # fmt: skip
        return out

    def enrichment(self, item_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {
            i: {"detections": [], "segments": [], "tags": [], "labels": {}} for i in item_ids
        }
        for chunk in _chunks(list(item_ids)):
            inn = _marks(len(chunk))
            for item_id, label, conf, x0, y0, x1, y1, model in self._all(
                "SELECT item_id, label, confidence, x0, y0, x1, y1, model_id FROM detections "
                f"WHERE item_id IN ({inn}) ORDER BY confidence DESC", chunk,
            ):  # fmt: skip
                out[item_id]["detections"].append(
                    {"label": label, "confidence": round(conf, 4),
                     "box": [round(v, 4) for v in (x0, y0, x1, y1)], "model_id": model}
                )  # fmt: skip
            for item_id, label, thing, area, score, model in self._all(
                "SELECT item_id, label, is_thing, area, score, model_id FROM segments "
                f"WHERE item_id IN ({inn}) ORDER BY area DESC", chunk,
            ):  # fmt: skip
                out[item_id]["segments"].append(
                    {"label": label, "thing": bool(thing), "area": round(area, 4),
                     "score": round(score, 4), "model_id": model}
                )  # fmt: skip
            for item_id, kind, label, score, model in self._all(
                "SELECT item_id, kind, label, score, model_id FROM labels "
                f"WHERE item_id IN ({inn}) ORDER BY rank", chunk,
            ):  # fmt: skip
                out[item_id]["labels"].setdefault(kind, []).append(
                    {"label": label, "score": round(score, 4), "model_id": model}
                )
        for detail in out.values():
            detail["tags"] = sorted({g["label"] for g in detail["segments"]})
        return out
