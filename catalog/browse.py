"""Browsing the catalog without a query: newest items under filters, and the facets
(what objects, tags, styles, labels, kinds and dates the library holds) that a search
page offers as filter chips."""

from __future__ import annotations

from typing import Any

from sqlalchemy import distinct, exists, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from catalog.filters import Filters, conditions, label_kinds, matching_ids
from catalog.models import DetectionRow, Item, LabelRow, SegmentRow


class Browse:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.Session = sessions

    def newest_ids(self, filters: Filters, below: int | None, limit: int) -> list[int]:
        """Up to limit item ids the filters admit, newest (highest id) first, each below
        `below` when given: a page of a listing that neither skips nor repeats."""
        with self.Session() as s:
            if filters.path_glob:  # matched in Python over bytes: the whole list
                ids = [i for i in reversed(matching_ids(s, filters)) if below is None or i < below]
                return ids[:limit]
            kinds = label_kinds(s) if filters.labels else None
            stmt = select(Item.id).where(*conditions(filters, kinds))
            if below is not None:
                stmt = stmt.where(Item.id < below)
            return list(s.scalars(stmt.order_by(Item.id.desc()).limit(limit)))

    def facets(
        self, min_confidence: float, min_style: float, min_artwork: float = 0.0, limit: int = 50
    ) -> dict[str, Any]:
        """Values with how many items carry each, most common first (at most limit).
        Counted as the filters count: objects over the `has` confidence, styles only on
        items that pass the artwork score, so a chip's count is what it finds."""
        artwork = aliased(LabelRow)
        is_artwork = exists().where(
            artwork.item_id == LabelRow.item_id, artwork.kind == "artwork",
            artwork.score >= min_artwork,
        )  # fmt: skip

        def counted(
            s: Session, label: Any, item: Any, *where: Any, unique: bool = False
        ) -> list[dict[str, Any]]:
            # unique: one row per item already, so a plain count (a covering index scan,
            # where count(DISTINCT) sorts every row through a temporary tree)
            n = func.count() if unique else func.count(distinct(item))
            rows = s.execute(
                select(label, n).where(*where).group_by(label).order_by(n.desc(), label)
                .limit(limit)
            )  # fmt: skip
            return [{"value": v, "count": c} for v, c in rows]

        with self.Session() as s:
            # Asked apart: SQLite answers a lone min() or max() with one seek in the
            # taken_at index (migration 0007), but both in one SELECT with a full scan.
            lo = s.scalar(select(func.min(Item.taken_at)))
            hi = s.scalar(select(func.max(Item.taken_at)))
            return {
                "objects": counted(s, DetectionRow.label, DetectionRow.item_id,
                                   DetectionRow.confidence >= min_confidence),
                "tags": counted(s, SegmentRow.label, SegmentRow.item_id),
                "styles": counted(s, LabelRow.label, LabelRow.item_id, LabelRow.kind == "style",
                                  LabelRow.score >= min_style,
                                  *([is_artwork] if min_artwork > 0 else [])),
                "labels": counted(s, LabelRow.label, LabelRow.item_id,
                                  LabelRow.kind == "imagenet"),
                "kinds": counted(s, Item.kind, Item.id, unique=True),
                "dates": {"min": lo.isoformat() if lo else None,
                          "max": hi.isoformat() if hi else None},
            }  # fmt: skip

    def summaries(self, item_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Kind, size and capture time of items, for a result list."""
        out: dict[int, dict[str, Any]] = {}
        with self.Session() as s:
            for i in range(0, len(item_ids), 500):
                rows = s.execute(
                    select(Item.id, Item.kind, Item.width, Item.height, Item.taken_at,
                           Item.duration_s)
                    .where(Item.id.in_(item_ids[i : i + 500]))
                )  # fmt: skip
                for item_id, kind, w, h, taken, dur in rows:
                    out[item_id] = {"kind": kind, "width": w, "height": h,
                                    "taken_at": taken.isoformat() if taken else None,
                                    "duration_s": dur}  # fmt: skip
        return out
