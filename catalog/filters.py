"""Search filters over what the catalog knows: objects, tags, styles, labels, metadata.

A filter becomes the exact set of item ids it admits; the vector store then searches
only those (FAISS id selector), so a filter never shrinks the list below k when k items
match, and the top k are exactly the best k of the matching items.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
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


def _time_clause(after: datetime | None, before: datetime | None) -> Any:
    taken, by_file = [], []
    if after is not None:
        taken.append(Item.taken_at >= after)
        by_file.append(FilePath.mtime_ns >= _mtime_ns(after))
    if before is not None:
        taken.append(Item.taken_at < before)
        by_file.append(FilePath.mtime_ns < _mtime_ns(before))
    file_time = exists().where(FilePath.item_id == Item.id, *by_file)
    return or_(and_(Item.taken_at.is_not(None), *taken), and_(Item.taken_at.is_(None), file_time))


def conditions(f: Filters) -> list[Any]:
    """SQL conditions on Item for everything but the path glob."""
    cond: list[Any] = []
    for label, count in f.has:
        n = (
            select(func.count())
            .where(DetectionRow.item_id == Item.id, DetectionRow.label == label)
            .where(DetectionRow.confidence >= f.min_confidence)
            .scalar_subquery()
        )
        cond.append(n >= max(1, count))
    for tag in f.tags:
        cond.append(exists().where(SegmentRow.item_id == Item.id, SegmentRow.label == tag))
    for artist in f.styles:
        cond.append(
            exists().where(
                LabelRow.item_id == Item.id, LabelRow.kind == "style", LabelRow.label == artist,
                LabelRow.score >= f.min_style,
            )
        )  # fmt: skip
    if f.styles and f.min_artwork > 0:
        cond.append(
            exists().where(
                LabelRow.item_id == Item.id, LabelRow.kind == "artwork",
                LabelRow.score >= f.min_artwork,
            )
        )  # fmt: skip
    for label in f.labels:
        cond.append(exists().where(LabelRow.item_id == Item.id, LabelRow.label == label))
    if f.kind:
        cond.append(Item.kind == f.kind)
    if f.after is not None or f.before is not None:
        cond.append(_time_clause(f.after, f.before))
    if f.camera:
        make = func.coalesce(Item.camera_make, "") + " " + func.coalesce(Item.camera_model, "")
        cond.append(func.lower(make).contains(f.camera.lower(), autoescape=True))
    return cond


def matching_ids(s: Session, f: Filters, batch: int = 500) -> list[int]:
    """Every item id the filters admit, ascending."""
    cond = conditions(f)
    ids = list(s.scalars(select(Item.id).where(*cond).order_by(Item.id)))
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
