"""Catalog tables. Content (items) is kept apart from location (paths).

An item is one distinct content (SHA-256 of the bytes); the same photo copied to three
folders is one item with three paths. Embeddings live here too, so every vector index
is derived data that can be rebuilt from the catalog.
"""

from __future__ import annotations

import enum
import os
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class FsPath(TypeDecorator[str]):
    """A file path stored as the exact bytes the OS uses (DESIGN principle 8).

    Python hands us paths as str with undecodable bytes escaped as lone surrogates
    (PEP 383); such a str cannot be stored as UTF-8 text. Stored as bytes, every name
    the OS allows round-trips, and comparisons are byte-wise on SQLite (memcmp) and on
    PostgreSQL (bytea): case-sensitive, with no LIKE wildcards, on every backend.
    """

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> bytes | None:
        return None if value is None else os.fsencode(value)

    def process_result_value(self, value: bytes | None, dialect: Any) -> str | None:
        return None if value is None else os.fsdecode(bytes(value))


class StageState(enum.StrEnum):
    pending = "pending"
    done = "done"
    failed = "failed"


# Row ids and the references to them: 64-bit on PostgreSQL (a newsroom archive with many
# writers may pass 2^31 rows in its busiest tables); SQLite's INTEGER PRIMARY KEY is
# already 64-bit and must stay INTEGER to be the rowid (migration 0009).
Key = BigInteger().with_variant(Integer, "sqlite")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (Index("ix_items_taken_at", "taken_at"),)  # migration 0007

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # image | audio
    format: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)  # EXIF local time, naive
    camera_make: Mapped[str | None] = mapped_column(String(128))
    camera_model: Mapped[str | None] = mapped_column(String(128))
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    # Audio items: the file's own duration, sample rate and channel count.
    duration_s: Mapped[float | None] = mapped_column(Float)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    channels: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    paths: Mapped[list[FilePath]] = relationship(
        back_populates="item", cascade="all, delete-orphan", passive_deletes=True
    )


class FilePath(Base):
    """Where an item's bytes live. Size and mtime let a rescan skip unchanged files."""

    __tablename__ = "paths"
    # The file-time half of a date filter: undated items' paths by time (migration 0010).
    __table_args__ = (
        Index("ix_paths_undated_mtime", "mtime_ns", "item_id",
              sqlite_where=text("undated = 1"), postgresql_where=text("undated = true")),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    item_id: Mapped[int] = mapped_column(
        Key, ForeignKey("items.id", ondelete="CASCADE"), index=True
    )
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    # The item has no capture time (fixed by its content): its files' times date it.
    undated: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    item: Mapped[Item] = relationship(back_populates="paths")


class Embedding(Base):
    __tablename__ = "embeddings"
    # One vector per (item, space, model): while a new model of a space backfills, the
    # active one keeps answering queries from its own vectors.
    __table_args__ = (
        UniqueConstraint("item_id", "space", "model_id", name="uq_embedding_item_space_model"),
        Index("ix_embeddings_space_model_item", "space", "model_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    item_id: Mapped[int] = mapped_column(Key, ForeignKey("items.id", ondelete="CASCADE"))
    space: Mapped[str] = mapped_column(String(32), index=True)  # clip | imagebind
    model_id: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, L2-normalised
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SpaceRow(Base):
    """The model that answers a space's queries, and how to build it again (JSON of the
    embedder's arguments), so a newly configured model can backfill beside it."""

    __tablename__ = "spaces"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    active_model_id: Mapped[str] = mapped_column(String(200))
    active_args: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class StageStatus(Base):
    """One row per (item, stage): where that item stands in that stage of the pipeline."""

    __tablename__ = "stage_status"
    # A stage's progress counted from an index (migration 0007), not from every row.
    __table_args__ = (Index("ix_stage_status_progress", "stage", "model_id", "status", "attempts"),)

    item_id: Mapped[int] = mapped_column(
        Key, ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[StageState] = mapped_column(
        Enum(StageState, name="stage_state", native_enum=False, length=16), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    model_id: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class FileFailure(Base):
    """A file that could not become an item (unreadable, not an image, over a limit...).

    Kept by path because there is no content to key it by. Retried on every scan and
    cleared as soon as the file indexes, or vanishes.
    """

    __tablename__ = "file_failures"

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Job(Base):
    """A queued piece of work for one path (the watcher's crash-safe queue).

    One row per path: a burst of events on the same file coalesces into one job whose
    due time moves forward. A claim names its owner (host:pid:nonce) and runs under a
    lease the owner renews while it works: a job whose owner died is taken over once the
    lease runs out (at once by a process on the same host that sees the pid is gone),
    never while its owner lives (migration 0009).
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    action: Mapped[str] = mapped_column(String(16))  # index | delete
    due_at: Mapped[float] = mapped_column(Float, index=True)  # unix time
    size: Mapped[int | None] = mapped_column(BigInteger)  # stat when last seen
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    closed: Mapped[bool] = mapped_column(default=False)  # writer closed it (inotify)
    claimed: Mapped[bool] = mapped_column(default=False, index=True)
    owner: Mapped[str | None] = mapped_column(String(120))
    lease_until: Mapped[float | None] = mapped_column(Float)  # unix time
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class DetectionRow(Base):
    """An object a detector found in an item (box corners as fractions of the picture)."""

    __tablename__ = "detections"
    __table_args__ = (Index("ix_detections_label_item", "label", "item_id"),)

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    item_id: Mapped[int] = mapped_column(
        Key, ForeignKey("items.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[float] = mapped_column(Float)
    x0: Mapped[float] = mapped_column(Float)
    y0: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)


class SegmentRow(Base):
    """A panoptic segment of an item: a thing or stuff, with the share of pixels it covers."""

    __tablename__ = "segments"
    __table_args__ = (Index("ix_segments_label_item", "label", "item_id"),)

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    item_id: Mapped[int] = mapped_column(
        Key, ForeignKey("items.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(100))
    is_thing: Mapped[bool] = mapped_column()
    area: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)


class LabelRow(Base):
    """A scored label of an item: artist style, artwork-ness, ImageNet class..."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_kind_label", "kind", "label", "score"),)

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    item_id: Mapped[int] = mapped_column(
        Key, ForeignKey("items.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class StyleJob(Base):
    """A style-transfer job: render an item in the style of another item, an uploaded
    picture or an artist. Claimed by a worker under a lease it renews every step, so a
    worker that dies has its job taken over once the lease runs out (or at once by the
    next worker on the same host, which sees the owner's process is gone).

    Items are referred to with ON DELETE SET NULL: deleting an item never deletes the
    history of what was made from it; a queued job whose item went fails cleanly. The
    content's SHA-256 is kept for provenance either way."""

    __tablename__ = "style_jobs"
    __table_args__ = (Index("ix_style_jobs_state_created", "state", "created_at"),)

    id: Mapped[int] = mapped_column(Key, primary_key=True)
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, name="job_state", native_enum=False, length=16)
    )
    item_id: Mapped[int | None] = mapped_column(Key, ForeignKey("items.id", ondelete="SET NULL"))
    item_sha256: Mapped[str] = mapped_column(String(64))
    style_kind: Mapped[str] = mapped_column(String(16))  # item | upload | artist
    style_item_id: Mapped[int | None] = mapped_column(
        Key, ForeignKey("items.id", ondelete="SET NULL")
    )
    style_sha256: Mapped[str | None] = mapped_column(String(64))
    style_artist: Mapped[str | None] = mapped_column(String(200))
    style_file: Mapped[str | None] = mapped_column(Text)  # an upload, relative to the data dir
    settings: Mapped[str] = mapped_column(Text)  # JSON of StyleSettings
    model_id: Mapped[str | None] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer)
    preview_step: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    add_to_library: Mapped[bool] = mapped_column(default=False)
    result_file: Mapped[str | None] = mapped_column(Text)  # relative to the data dir
    # The item a result became when added to the library is the item with these bytes:
    # found by a join, so whoever indexes the file (the watcher, a worker) need not
    # come back to link it, and a crash between the two cannot leave it unlinked.
    result_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    owner: Mapped[str | None] = mapped_column(String(200))  # host:pid:nonce of the worker
    lease_until: Mapped[float | None] = mapped_column(Float)  # unix time
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)  # running time of the last attempt
