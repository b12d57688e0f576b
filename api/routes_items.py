"""Items (detail, thumbnail, original, classify), the library (stats, facets) and health."""

from __future__ import annotations

import mimetypes
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import text
from starlette.background import BackgroundTask

from api.errors import ApiError, AsciiJSON, error_response
from api.files import SIZES, fd_path, open_servable
from api.routes_search import ItemId, item_modality, item_vector
from api.schemas import (
    Classified,
    ClassifyRequest,
    Facets,
    Health,
    ItemDetail,
    Ready,
    Stats,
    errors,
)  # fmt: skip
from api.services import Services, Svc
from api.uploads import decode_upload_image
from search.present import styles_of

router = APIRouter()
FORMAT_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
                "GIF": "image/gif", "WEBP": "image/webp", "TIFF": "image/tiff",
                "BMP": "image/bmp", "HEIF": "image/heif", "AVIF": "image/avif",
                "WAV": "audio/wav", "RF64": "audio/wav", "FLAC": "audio/flac",
                "OGG": "audio/ogg", "OPUS": "audio/ogg", "MP3": "audio/mpeg",
                "AIFF": "audio/aiff"}  # fmt: skip


def _detail(svc: Services, item_id: int) -> dict[str, Any]:
    detail = svc.catalog.item(item_id)
    if detail is None:
        raise ApiError(404, f"no item with id {item_id}")
    return detail


@router.get("/api/items/{item_id}", response_model=ItemDetail, responses=errors(401, 404, 422),
            tags=["items"])  # fmt: skip
def item(svc: Svc, item_id: ItemId) -> dict[str, Any]:
    """Everything known of one item: metadata, paths, objects, tags, styles, labels."""
    d = _detail(svc, item_id)
    d.update(styles_of(d["labels"], svc.config.artwork_min_score))
    d["thumbnail"] = f"/api/items/{item_id}/thumbnail?size=1024"
    d["file"] = f"/api/items/{item_id}/file"
    job_id = svc.jobs.derived_items([item_id]).get(item_id)
    job = svc.jobs.get(job_id) if job_id is not None else None
    if job is not None:
        style = job["style"]
        source = {k: style[k] for k in ("kind", "item_id", "artist")}
        d["derived_from"] = {"job_id": job_id, "item_id": job["item_id"], "style": source}
    return d


ORIGINAL: dict[str, Any] = {"image/*": {}, "audio/*": {}, "application/octet-stream": {}}
IMAGE = {"content": {"image/webp": {}}, "description": "the thumbnail"}


@router.get("/api/items/{item_id}/thumbnail", response_class=FileResponse, tags=["items"],
            responses={200: IMAGE, **errors(401, 403, 404, 422)})  # fmt: skip
def thumbnail(
    svc: Svc, item_id: ItemId,
    size: Annotated[int, Query(json_schema_extra={"enum": SIZES})] = 256,
) -> FileResponse:  # fmt: skip
    """A WebP thumbnail (made once, kept on disk; remade if the cache file is gone): the
    picture, or a sound's waveform (size wide, a quarter as high)."""
    if size not in SIZES:  # a Literal would not coerce the query string
        raise ApiError(422, f"size must be one of {', '.join(map(str, SIZES))}")
    d = _detail(svc, item_id)
    # The roots are checked even for a cached thumbnail: the cache is keyed by content,
    # and a server started with fewer folders must not show pictures outside them.
    with open_servable(d["paths"], svc.config.roots) as source:
        dest = svc.thumbs.path_for(d["sha256"], size)
        if not dest.is_file():
            dest = svc.thumbs.get(d["sha256"], fd_path(source), size, d["kind"])
    return FileResponse(dest, media_type="image/webp",
                        headers={"Cache-Control": "private, max-age=86400"})  # fmt: skip


@router.get("/api/items/{item_id}/file", response_class=FileResponse, tags=["items"],
            responses={200: {"content": ORIGINAL, "description": "the original file"},
                       **errors(401, 403, 404, 422)})  # fmt: skip
def original(svc: Svc, item_id: ItemId) -> FileResponse:
    """The original file, if it still lies inside a library folder."""
    d = _detail(svc, item_id)
    source = open_servable(d["paths"], svc.config.roots)
    media = FORMAT_TYPES.get(d["format"] or "") or mimetypes.guess_type(d["paths"][0])[0]
    # Served through the handle that was checked; closed once sent (or, if the client
    # goes away first, when the response and its handle are collected).
    return FileResponse(fd_path(source), media_type=media or "application/octet-stream",
                        background=BackgroundTask(source.close))  # fmt: skip


def _classify(svc: Services, vec: np.ndarray, req: ClassifyRequest) -> dict[str, Any]:
    if (req.labels is None) == (not req.imagenet):
        raise ApiError(422, "give labels or imagenet=true (one of them)")
    try:
        clf = svc.classifier()
        with svc.model():
            ranked = (clf.classify_imagenet(vec[None, :], req.k) if req.imagenet
                      else clf.classify(vec[None, :], req.labels or []))  # fmt: skip
    except ValueError as exc:  # fewer than two distinct labels
        raise ApiError(422, str(exc)) from None
    return {"labels": [{"label": n, "score": round(float(p), 6)} for n, p in ranked[0][: req.k]]}


@router.post("/api/items/{item_id}/classify", response_model=Classified, tags=["classify"],
             responses=errors(400, 401, 404, 409, 422, 503))  # fmt: skip
def classify_item(svc: Svc, item_id: ItemId, req: ClassifyRequest) -> dict[str, Any]:
    """Zero-shot classification of a picture against your labels or ImageNet's."""
    if item_modality(svc, item_id) == "audio":
        raise ApiError(422, f"item {item_id} is a sound: zero-shot labels are for pictures")
    return _classify(svc, item_vector(svc, item_id), req)


@router.post("/api/classify", response_model=Classified, tags=["classify"],
             responses=errors(400, 401, 413, 415, 422, 503))  # fmt: skip
async def classify_upload(
    svc: Svc,
    file: Annotated[UploadFile, File(description="the image to classify")],
    labels: Annotated[str | None, Form(max_length=5000, description="comma-separated",
                                       examples=["cat,dog,bird"])] = None,
    imagenet: Annotated[bool, Form()] = False,
    k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> dict[str, Any]:  # fmt: skip
    """Zero-shot classification of an uploaded image."""
    data = await file.read()
    names = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    try:
        req = ClassifyRequest(labels=names or None, imagenet=imagenet, k=k)
    except ValidationError as exc:  # the form's labels, held to the JSON body's bounds
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ApiError(422, f"labels: {where}: {first['msg']}") from None

    def work() -> dict[str, Any]:
        upload = decode_upload_image(data, svc.config.limits, svc.config.draft_side)
        return _classify(svc, svc.image_vector(upload.image), req)

    return await run_in_threadpool(work)


@router.get("/api/stats", response_model=Stats, tags=["library"], responses=errors(401))
def stats(svc: Svc) -> dict[str, Any]:
    """Items, paths, stage progress, failures, models, and the loaded index."""
    out = svc.catalog.stats()
    out["index"] = {"vectors": svc.engine.index.count(),
                    "spaces": {n: e.index.count() for n, e in svc.engines.items()}}  # fmt: skip
    out["watching"] = list(svc.watcher.roots) if svc.watcher is not None else []
    if svc.stylize is not None:
        cfg = svc.stylize
        out["stylize"] = {"defaults": cfg.defaults, "max_side": cfg.max_side,
                          "max_steps": cfg.max_steps, "queue_max": cfg.queue_max,
                          "jobs": svc.jobs.counts(),
                          "adds_to_library": svc.index_back is not None}  # fmt: skip
    return out


@router.get("/api/facets", response_model=Facets, tags=["library"], responses=errors(401))
def facets(svc: Svc) -> dict[str, Any]:
    """What the library holds, for filter chips: objects, tags, styles, labels, kinds,
    dates, with item counts (recomputed at most every 10 s)."""
    now = time.monotonic()
    if svc.facets is not None and now - svc.facets[0] < 10:
        return svc.facets[1]
    c = svc.config
    out = svc.catalog.browse.facets(c.has_min_confidence, c.style_min_score, c.artwork_min_score)
    svc.facets = (now, out)
    return out


@router.get("/api/health", response_model=Health, tags=["health"])
async def health() -> dict[str, str]:
    """Liveness: answers at once, whatever the models or the catalog are doing."""
    return {"status": "ok"}


@router.get("/api/ready", response_model=Ready, tags=["health"], responses=errors(401, 503))
def ready(svc: Svc) -> Any:
    """Readiness: the catalog answers and the vector index is loaded."""
    try:
        with svc.catalog.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return error_response(503, f"the catalog does not answer: {type(exc).__name__}")
    index = svc.engine.index
    if not index.loaded:
        return error_response(503, "the vector index is still loading")
    if svc.watch_failure:
        return error_response(503, f"the watcher stopped ({svc.watch_failure}); new files "
                              "are not indexed until the server restarts")  # fmt: skip
    return AsciiJSON({"status": "ready", "catalog": True, "index": True,
                         "vectors": index.count()})  # fmt: skip
