"""Search hits as result rows: one shape for `everlook search --json` and the API."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a cold query reads a LiteCatalog and must not import SQLAlchemy
    from catalog import Catalog
    from catalog.lite import LiteCatalog


@dataclass(frozen=True)
class Hit:
    item_id: int
    score: float
    paths: list[str]


def result_rows(
    catalog: Catalog | LiteCatalog, hits: Sequence[Hit], min_artwork: float, first_rank: int = 1
) -> list[dict[str, Any]]:
    ids = [h.item_id for h in hits]
    details = catalog.stages.enrichment(ids)
    meta = catalog.browse.summaries(ids)
    empty = {"kind": "image", "width": None, "height": None, "taken_at": None, "duration_s": None}
    return [
        _row(n, h, details[h.item_id], meta.get(h.item_id, empty), min_artwork)
        for n, h in enumerate(hits, first_rank)
    ]


def _row(
    n: int, hit: Hit, detail: dict[str, Any], meta: dict[str, Any], min_artwork: float
) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for d in detail["detections"]:
        counts[d["label"]] = counts.get(d["label"], 0) + 1
    return {
        "rank": n, "item_id": hit.item_id,
        "score": None if math.isnan(hit.score) else round(hit.score, 6),
        "path": hit.paths[0] if hit.paths else None, "paths": hit.paths, **meta,
        "objects": counts, "tags": detail["tags"], **styles_of(detail["labels"], min_artwork),
        "labels": [{"label": x["label"], "score": x["score"]}
                   for x in detail["labels"].get("imagenet", [])],
    }  # fmt: skip


def styles_of(labels: dict[str, Any], min_artwork: float) -> dict[str, Any]:
    """Artist scores, shown only for items that look like artworks (a photo's nearest
    painter is noise), and the artwork score itself."""
    artwork = (labels.get("artwork") or [{"score": 0.0}])[0]["score"]
    styles = labels.get("style", []) if artwork >= min_artwork else []
    return {
        "styles": [{"artist": x["label"], "score": x["score"]} for x in styles],
        "artwork": artwork if "artwork" in labels else None,
    }
