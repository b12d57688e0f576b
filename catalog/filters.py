"""Search filters over what the catalog knows: objects, tags, styles, labels, metadata.

A filter becomes the exact set of item ids it admits; the vector store then searches
only those (FAISS id selector), so a filter never shrinks the list below k when k items
match, and the top k are exactly the best k of the matching items.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import CompoundSelect, func, intersect, select, true, union
from sqlalchemy import text as text_sql
from sqlalchemy.orm import Session

from catalog.models import DetectionRow, FilePath, Item, LabelRow, SegmentRow
from catalog.words import VOCABULARY, phrase


@dataclass
class Filters:
    has: list[tuple[str, int]] = field(default_factory=list)  # (object label, min count)
    min_confidence: float = 0.0  # detections below this do not count for `has`
    tags: list[str] = field(default_factory=list)  # panoptic segment labels
    styles: list[str] = field(default_factory=list)  # artist names
    min_style: float = 0.0  # style score (0..1) an item needs for `styles`
    min_artwork: float = 0.0  # ... and its artwork score
    labels: list[str] = field(default_factory=list)  # any stored label (ImageNet...)
    kind: str | None = None  # image | audio
    after: datetime | None = None  # capture time, else file time (naive local)
    before: datetime | None = None
    camera: str | None = None  # substring of "make model", case-insensitive
    path_glob: str | None = None  # fnmatch over the full path (``*`` crosses folders)

    def active(self) -> bool:
        return bool(
            self.has or self.tags or self.styles or self.labels or self.kind or self.after
            or self.before or self.camera or self.path_glob
        )  # fmt: skip


def parse_has(spec: str) -> tuple[str, int]:
    """``dog`` or ``person:2`` (at least two people) -> (label, count); ValueError else.
    The CLI's --has and the API's has= read the same way."""
    label, _, count = spec.rpartition(":") if ":" in spec else (spec, "", "1")
    if not label.strip() or not count.isdigit() or not 1 <= int(count) <= 999:
        raise ValueError(f"{spec!r}: use LABEL or LABEL:COUNT (e.g. person:2, at most 999)")
    return label.strip(), int(count)


def _mtime_ns(t: datetime) -> int:
    # Naive: local time, as EXIF times are. Clamped to a 64-bit column's range: a date
    # like 2999-01-01 is a fine filter, not an integer overflow in the database.
    try:
        ns = int(t.timestamp() * 1_000_000_000)
    except (OverflowError, ValueError, OSError):  # year 1 or 9999 in local time
        ns = -(2**63) if t.year < 1970 else 2**63 - 1
    return max(-(2**63), min(2**63 - 1, ns))


# Every condition is "the item id is in a set an index yields", not a test run on each
# item: SQLite then walks the index range of what matches (1 % of a million items: ~10k
# index entries) instead of every item with a sub-query each (0.6 s at 1M for a date
# window). The plans are checked by EXPLAIN in tests/test_scale_queries.py.
_KINDS = """
WITH RECURSIVE kinds(kind) AS (
    SELECT min(kind) FROM labels
    UNION ALL
    SELECT (SELECT min(kind) FROM labels WHERE kind > kinds.kind) FROM kinds
    WHERE kinds.kind IS NOT NULL
)
SELECT kind FROM kinds WHERE kind IS NOT NULL
"""  # the label kinds in use, by a loose scan of ix_labels_kind_label (a few seeks)


def _time_ids(after: datetime | None, before: datetime | None) -> Any:
    """Capture time when the item has one, else the time of any of its files: two index
    ranges (ix_items_taken_at; ix_paths_undated_mtime, the paths of items without a
    capture time), no probe of an item."""
    taken: list[Any] = [Item.taken_at.is_not(None)]
    by_file: list[Any] = [FilePath.undated == true()]  # the partial index's own term
    if after is not None:
        taken.append(Item.taken_at >= after)
        by_file.append(FilePath.mtime_ns >= _mtime_ns(after))
    if before is not None:
        taken.append(Item.taken_at < before)
        by_file.append(FilePath.mtime_ns < _mtime_ns(before))
    return union(select(Item.id).where(*taken), select(FilePath.item_id).where(*by_file))


def id_sets(f: Filters, kinds: Sequence[str] | None = None) -> tuple[list[Any], list[Any]]:
    """The filters as (selects of the item ids each admits, conditions on Item's own
    columns), for everything but the path glob. ``kinds``: the label kinds in use
    (label_kinds), which let a plain label filter seek its index."""
    sets: list[Any] = []
    rows: list[Any] = []
    for label, count in f.has:
        n = max(1, count)
        having = (
            select(DetectionRow.item_id)
            .where(DetectionRow.label == label, DetectionRow.confidence >= f.min_confidence)
            .group_by(DetectionRow.item_id)
        )
        sets.append(having.having(func.count() >= n) if n > 1 else having)
    for tag in f.tags:
        sets.append(select(SegmentRow.item_id).where(SegmentRow.label == tag))
    for artist in f.styles:
        sets.append(
            select(LabelRow.item_id).where(
                LabelRow.kind == "style", LabelRow.label == artist, LabelRow.score >= f.min_style
            )
        )
    if f.styles and f.min_artwork > 0:
        sets.append(
            select(LabelRow.item_id).where(
                LabelRow.kind == "artwork", LabelRow.score >= f.min_artwork
            )
        )
    for label in f.labels:
        which = [LabelRow.label == label]
        if kinds is not None:
            which.append(LabelRow.kind.in_(list(kinds) or [""]))
        sets.append(select(LabelRow.item_id).where(*which))
    if f.after is not None or f.before is not None:
        sets.append(_time_ids(f.after, f.before))
    if f.kind:
        rows.append(Item.kind == f.kind)
    if f.camera:
        make = func.coalesce(Item.camera_make, "") + " " + func.coalesce(Item.camera_model, "")
        rows.append(func.lower(make).contains(f.camera.lower(), autoescape=True))
    return sets, rows


def conditions(f: Filters, kinds: Sequence[str] | None = None) -> list[Any]:
    """SQL conditions on Item for everything but the path glob (see id_sets)."""
    return _on_items(*id_sets(f, kinds))


def _on_items(sets: list[Any], rows: list[Any]) -> list[Any]:
    return [Item.id.in_(q) for q in sets] + rows


def label_kinds(s: Session) -> list[str]:
    return list(s.scalars(text_sql(_KINDS)))


def _intersection(sets: list[Any]) -> Any:
    if len(sets) == 1:
        return sets[0]
    # SQLite takes no parenthesised compound inside a compound: a union goes in as a
    # sub-query.
    plain: list[Any] = []
    for q in sets:
        plain.append(select(q.subquery().c[0]) if isinstance(q, CompoundSelect) else q)
    return intersect(*plain)


def matching_ids(s: Session, f: Filters, batch: int = 500) -> list[int]:
    """Every item id the filters admit, ascending."""
    sets, rows = id_sets(f, label_kinds(s) if f.labels else None)
    if sets and not rows:
        # The sets' intersection as it comes from their indexes: looking each id up in
        # items as well (to test nothing) cost ~2 us an id, 23 ms for a 1 % date window
        # at a million items. Every id in these tables is an item's (foreign keys).
        # A single set may name an item twice (a tag per segment): once each, as before.
        ids: list[int] = sorted(set(s.scalars(_intersection(sets))))
    else:
        ids = list(s.scalars(select(Item.id).where(*_on_items(sets, rows)).order_by(Item.id)))
    if not f.path_glob:
        return ids
    # Globs run in Python: paths are bytes (any name the OS allows) and SQL GLOB/LIKE
    # differ between backends. Only the candidates' paths are read, in batches.
    pattern = os.fsencode(f.path_glob)
    keep: set[int] = set()
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        for item_id, path in s.execute(
            select(FilePath.item_id, FilePath.path).where(FilePath.item_id.in_(chunk))
        ):
            if item_id not in keep and fnmatch.fnmatchcase(os.fsencode(path), pattern):
                keep.add(item_id)
    return [i for i in ids if i in keep]


def labelled_in(s: Session, text: str, kind: str) -> dict[int, float]:
    """Items carrying a stored label of this kind that the text names as a whole phrase
    (case-insensitive): item id -> the best such label's score. The vocabulary is small
    (the labels in use, at most ImageNet's 1,000), so it is matched in Python."""
    words = phrase(text)
    vocab = s.scalars(text_sql(VOCABULARY), {"kind": kind})
    named = [v for v in vocab if phrase(v) in words]
    if not named:
        return {}
    rows = s.execute(
        select(LabelRow.item_id, func.max(LabelRow.score))
        .where(LabelRow.kind == kind, LabelRow.label.in_(named))
        .group_by(LabelRow.item_id)
    )
    return {int(i): float(sc) for i, sc in rows}
