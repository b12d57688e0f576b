"""Response shapes, as they appear in the OpenAPI schema (with examples)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def _no_nul(value: Any) -> Any:
    """PostgreSQL stores no NUL character in a text (SQLite would): a parameter compared
    with stored text that holds one is refused up front, saying so, on either catalog."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("holds a NUL character (U+0000), which no stored text can hold")
    return value


NoNul = AfterValidator(_no_nul)  # on text (or lists of it) that reaches the catalog


class ErrorDetail(BaseModel):
    status: int = Field(examples=[404])
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["no item with id 7"])
    details: list[dict[str, str]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these statuses answer in the error shape."""
    return {s: {"model": ErrorBody, "description": "error"} for s in statuses}


class Scored(BaseModel):
    label: str
    score: float


class ArtistScore(BaseModel):
    artist: str = Field(examples=["Claude Monet"])
    score: float = Field(examples=[0.82])


class Result(BaseModel):
    rank: int = Field(examples=[1])
    item_id: int = Field(examples=[12])
    score: float | None = Field(description="cosine similarity (with any label boost); "
                                "null in a listing without a query", examples=[0.3127])  # fmt: skip
    path: str | None = Field(examples=["/photos/2024/beach.jpg"])
    paths: list[str]
    kind: str = Field(examples=["image"])
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    duration_s: float | None = Field(default=None, description="audio items: seconds")
    file: str = Field(
        examples=["/api/items/12/file"],
        description="the item's bytes (pictures shown, sounds played)",
    )
    objects: dict[str, int] = Field(examples=[{"dog": 1, "person": 2}])
    tags: list[str] = Field(examples=[["sky", "sand", "sea"]])
    styles: list[ArtistScore]
    artwork: float | None = None
    labels: list[Scored]
    thumbnail: str = Field(examples=["/api/items/12/thumbnail?size=256"])


class SearchPage(BaseModel):
    results: list[Result]
    next_cursor: str | None = Field(
        description="pass as `cursor` (same other parameters) for the next page; null at "
        "the end", examples=["eyJzIjogMC4yOSwgImkiOiA0MSwgIm4iOiAyNH0"],
    )  # fmt: skip


class Detection(BaseModel):
    label: str
    confidence: float
    box: list[float] = Field(description="x0, y0, x1, y1 as fractions (0..1) of the width "
                             "and height", examples=[[0.1, 0.2, 0.5, 0.9]])  # fmt: skip
    model_id: str


class Segment(BaseModel):
    label: str
    thing: bool
    area: float
    score: float
    model_id: str


class StageState(BaseModel):
    stage: str
    status: str
    model_id: str | None
    error: str | None
    attempts: int | None = None


class LabelScore(BaseModel):
    label: str
    score: float
    model_id: str


class StyleSource(BaseModel):
    kind: str = Field(description="item | upload | artist", examples=["artist"])
    item_id: int | None = Field(description="the style picture's item (an artist's "
                                "exemplar too)", examples=[31])  # fmt: skip
    artist: str | None = Field(examples=["Claude Monet"])


class DerivedFrom(BaseModel):
    job_id: int
    item_id: int | None = Field(description="the content item (null if since deleted)")
    style: StyleSource


class StyleJobPublic(BaseModel):
    id: int = Field(examples=[3])
    state: str = Field(description="queued | running | done | failed | cancelled")
    item_id: int | None = Field(description="the content item (null if since deleted)")
    style: StyleSource
    settings: dict[str, Any]
    model_id: str | None = Field(description="the network that made the result")
    step: int = Field(description="optimiser steps done")
    total: int
    attempts: int
    max_attempts: int
    error: str | None
    cancel_requested: bool
    add_to_library: bool
    derived_item_id: int | None = Field(description="the library item the result became")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None = Field(description="running time of the last attempt")
    preview: str | None = Field(description="the picture so far (while running)")
    result: str | None = Field(description="the result picture (PNG, when done)")


class StyleJobList(BaseModel):
    jobs: list[StyleJobPublic]


class ItemDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    kind: str
    sha256: str
    format: str | None
    width: int | None
    height: int | None
    size_bytes: int
    taken_at: str | None
    camera_make: str | None
    camera_model: str | None
    gps: list[float] | None
    created_at: str | None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    paths: list[str]
    stages: list[StageState]
    detections: list[Detection]
    segments: list[Segment]
    tags: list[str]
    labels: dict[str, list[LabelScore]]
    styles: list[ArtistScore]
    artwork: float | None
    thumbnail: str
    file: str
    derived_from: DerivedFrom | None = Field(
        default=None, description="set when this item is a style-transfer result added "
        "to the library: the job that made it and its sources",
    )  # fmt: skip


class Facet(BaseModel):
    value: str
    count: int


class DateRange(BaseModel):
    min: str | None
    max: str | None


class Facets(BaseModel):
    objects: list[Facet]
    tags: list[Facet]
    styles: list[Facet]
    labels: list[Facet]
    kinds: list[Facet]
    dates: DateRange


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false, "5" not 5
    # Bounded: each new label set costs a forward pass per prompt template while every
    # other query waits for the model.
    labels: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] | None = Field(
        default=None, min_length=1, max_length=100, examples=[["cat", "dog", "bird"]]
    )
    imagenet: bool = Field(default=False, description="rank the ImageNet-1k classes instead")
    k: int = Field(default=5, ge=1, le=1000)


class Classified(BaseModel):
    labels: list[Scored]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    catalog: bool
    index: bool
    vectors: int


class ItemCounts(BaseModel):
    total: int = Field(examples=[12840])
    by_kind: dict[str, int] = Field(examples=[{"image": 12840}])


class ModelCount(BaseModel):
    space: str = Field(examples=["clip"])
    model_id: str = Field(examples=["open_clip/ViT-B-32/laion2b_s34b_b79k"])
    dim: int = Field(examples=[512])
    count: int = Field(examples=[12840])


class IndexState(BaseModel):
    vectors: int = Field(examples=[12840], description="vectors in CLIP's index")
    spaces: dict[str, int] = Field(
        default_factory=dict,
        description="vectors in each enabled space's index",
        examples=[{"clip": 12840, "imagebind": 12990}],
    )


class StylizeState(BaseModel):
    defaults: dict[str, Any] = Field(description="the settings a job starts from")
    max_side: int
    max_steps: int
    queue_max: int
    jobs: dict[str, int] = Field(description="jobs by state", examples=[{"done": 3}])
    adds_to_library: bool = Field(description="whether results can be added here")


class Stats(BaseModel):
    items: ItemCounts
    paths: int = Field(examples=[12901])
    stages: dict[str, dict[str, int]] = Field(
        examples=[{"detect/yolo": {"done": 12800, "pending": 38, "failed": 2}}]
    )
    failures: list[dict[str, Any]] = Field(
        description="files that could not be indexed (path, reason, attempts, updated_at) "
        "and (item, stage) failures (item_id, stage, error)",
        examples=[[{"path": "/photos/broken.jpg", "reason": "cannot decode JPEG image",
                    "attempts": 2, "updated_at": "2026-11-27T14:00:00"}]],
    )  # fmt: skip
    models: list[ModelCount]
    index: IndexState
    watching: list[str] = Field(description="library folders this server watches")
    stylize: StylizeState | None = Field(
        default=None, description="style transfer on this server: its defaults and limits "
        "(null when off)",
    )  # fmt: skip
