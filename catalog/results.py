"""What enrichment stages produce, in the catalog's own terms (no model library types).

Stages build these; the catalog stores them with the stage name and model id that made
them (provenance), replacing whatever that stage stored for the item before.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Detection:
    """One object found in a picture. Box corners are fractions of width/height (0..1)."""

    label: str
    confidence: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Segment:
    """One panoptic segment: a thing (countable: person, car) or stuff (sky, grass)."""

    label: str
    is_thing: bool
    area: float  # fraction of the picture's pixels, 0..1
    score: float  # the segmenter's confidence; 1.0 for stuff where it gives none


@dataclass(frozen=True)
class Label:
    """A scored label: kind says which family (``style``, ``artwork``, ``imagenet``...)."""

    kind: str
    label: str
    score: float  # 0..1 (shown as a percentage)


@dataclass
class StageOutput:
    """Everything one stage found for one item."""

    detections: list[Detection] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    # An embedding stage's vectors in this space (float32 bytes, L2-normalised), by the
    # model id that made each: the active model's, and a backfilling model's.
    space: str | None = None
    vectors: dict[str, bytes] = field(default_factory=dict)
