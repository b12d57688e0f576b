"""Synthetic data for benchmarks: random-weight checkpoints, small photo-like JPEGs, and a
catalog filled with clustered vectors and detections, bulk inserted (SQLAlchemy Core)."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("dog", "person", "car", "cat", "bicycle", "bird")
EPOCH = datetime(2010, 1, 1)  # capture/file times spread over 2010..2024 (naive local)
SPAN_S = 15 * 365 * 86400


def save_checkpoint(model: str, dest: Path, seed: int = 0) -> Path:
    """An open_clip model with seeded random weights, saved as a user's checkpoint file."""
    if dest.is_file():
        return dest
    import open_clip
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tmp = dest.with_suffix(".tmp")
    torch.save(open_clip.create_model(model).state_dict(), tmp)
    tmp.rename(dest)
    return dest


def small_jpeg(seed: int, size: tuple[int, int] = (480, 360), quality: int = 80) -> bytes:
    """A ~30 KB photo-like JPEG: smooth colours, hard-edged discs, a little noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.uniform(30, 225, (4, 5, 3)).astype(np.uint8)
    resized = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    img = np.asarray(resized, dtype=np.float32).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(20, 120)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, (h, w, 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out.astype(np.float32)


def fill_catalog(
    url: str, n: int, model_id: str, dim: int = 512, clusters: int = 200,
    det_share: float = 0.2, chunk: int = 5000, seed: int = 0,
) -> None:  # fmt: skip
    """Create the schema at url (migrations: SQLite or PostgreSQL) and insert n items
    with a path, a clustered unit vector of model_id in the clip space, and detections
    for det_share of them."""
    import migrations
    from catalog import make_engine
    from catalog.models import DetectionRow, Embedding, FilePath, Item

    engine = make_engine(url)
    migrations.upgrade(engine)
    rng = np.random.default_rng(seed)
    centroids = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    now = datetime.now(UTC)
    for start in range(1, n + 1, chunk):
        ids = np.arange(start, min(start + chunk, n + 1))
        m = len(ids)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * 0.04  # cos ~0.75 to centre
        vecs = _unit(centroids[rng.integers(0, clusters, m)] + noise)
        when = rng.uniform(0, SPAN_S, m)
        has_exif = rng.random(m) < 0.6
        sizes = rng.integers(1_500_000, 6_000_000, m)
        items, paths, embs, dets = [], [], [], []
        for j, i in enumerate(ids.tolist()):
            t = datetime.fromtimestamp(EPOCH.timestamp() + float(when[j]))
            items.append({
                "id": i, "sha256": hashlib.sha256(b"everlook-synthetic-%d" % i).hexdigest(),
                "kind": "image", "format": "JPEG", "width": 4032, "height": 3024,
                "size_bytes": int(sizes[j]), "taken_at": t if has_exif[j] else None,
                "created_at": now,
            })  # fmt: skip
            paths.append({
                "item_id": i, "path": f"/synthetic/photos/{t.year}/IMG_{i:06d}.jpg",
                "size": int(sizes[j]), "mtime_ns": int(t.timestamp() * 1e9), "updated_at": now,
                "undated": not has_exif[j],  # as Catalog writes it: no capture time
            })  # fmt: skip
            embs.append({"item_id": i, "space": "clip", "model_id": model_id, "dim": dim,
                         "vector": vecs[j].tobytes(), "created_at": now})  # fmt: skip
            if rng.random() < det_share:
                dets.extend(_detections(rng, i))
        with engine.begin() as conn:
            for table, rows in ((Item, items), (FilePath, paths), (Embedding, embs),
                                (DetectionRow, dets)):  # fmt: skip
                conn.execute(table.__table__.insert(), rows)
    if engine.dialect.name == "postgresql":
        from catalog.transfer import move_sequences

        move_sequences(engine)  # the rows came with their ids: new ones go on after them
    engine.dispose()


def _detections(rng: np.random.Generator, item_id: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(0, 0.6, 2)
        w, h = rng.uniform(0.1, 0.4, 2)
        out.append({
            "item_id": item_id, "stage": "detect/yolo", "model_id": "yolo11n.pt",
            "label": LABELS[int(rng.integers(0, len(LABELS)))], "confidence": 0.9,
            "x0": float(x0), "y0": float(y0), "x1": float(x0 + w), "y1": float(y0 + h),
        })  # fmt: skip
    return out


def add_done_stage_rows(url: str, stage: str, model_id: str) -> None:
    """Give every embedded item of model_id a done row of stage, as the pipeline writes
    with each embedding: a filled catalog's stats and stage queries then meet the rows
    a real one has. One INSERT ... SELECT."""
    from sqlalchemy import text

    from catalog import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT OR IGNORE INTO stage_status (item_id, stage, status, attempts, model_id,"
                " updated_at) SELECT item_id, :stage, 'done', 1, model_id, created_at"
                " FROM embeddings WHERE model_id = :model"
            ),
            {"stage": stage, "model": model_id},
        )
    engine.dispose()


def cached_catalog(folder: Path, n: int, model_id: str) -> Path:
    """A SQLite catalog of n synthetic items (fill_catalog, plus their embed/clip rows)
    kept in folder between runs: built once (minutes at a million), under a temporary
    name renamed when complete, so an interrupted build is never taken for a finished one.
    Whoever adds items to it takes them out again (done stage rows may stay)."""
    slug = model_id.replace("/", "_").replace(":", "_")
    dest = folder / f"catalog-{n}-{slug}.sqlite"
    if dest.is_file():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".building")
    for leftover in folder.glob(tmp.name + "*"):
        leftover.unlink()
    fill_catalog(f"sqlite:///{tmp}", n, model_id)
    add_done_stage_rows(f"sqlite:///{tmp}", "embed/clip", model_id)
    import sqlite3

    # Fold the WAL in: one self-contained file. No ANALYZE: Everlook never runs it, so
    # the planner must find the same plans here as on a user's catalog.
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=DELETE")  # checkpoints, then drops -wal and -shm
    conn.close()
    tmp.rename(dest)
    return dest
