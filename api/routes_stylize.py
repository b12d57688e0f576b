"""Style transfer as background jobs: start one from an item (with a style item, an
uploaded picture or an artist), follow it (status, server-sent events, the picture so
far), fetch or add its result, list and cancel. A worker runs the jobs (in this server
or an `everlook worker`); these routes only read and write the catalog's job rows."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.sse import EventSourceResponse

from api.errors import ApiError, AsciiJSON
from api.schemas import NoNul, StyleJobList, StyleJobPublic, errors
from api.services import Services, StylizeConfig, Svc
from api.uploads import decode_upload_image
from catalog.stylejobs import FINISHED, JobStateError, QueueFull

router = APIRouter(tags=["stylize"])
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="style job id")]
STATES = ("queued", "running", "done", "failed", "cancelled")
EVENT_POLL_S = 0.25  # how often the event stream looks at the job's row
KEEPALIVE_S = 15.0  # a comment line now and then keeps proxies from closing the stream


def _config(svc: Services) -> StylizeConfig:
    if svc.stylize is None:
        raise ApiError(503, "style transfer is not enabled on this server")
    return svc.stylize


def public(job: dict[str, Any]) -> dict[str, Any]:
    """A job as clients see it: links instead of files, no worker identities."""
    jid, state = job["id"], job["state"]
    style = job["style"]
    preview = None
    if state == "running" and job["preview_step"]:
        preview = f"/api/stylize/{jid}/preview?step={job['preview_step']}"
    return {
        **{k: job[k] for k in (
            "id", "state", "item_id", "settings", "model_id", "step", "total", "attempts",
            "max_attempts", "error", "cancel_requested", "add_to_library",
            "derived_item_id", "created_at", "started_at", "finished_at", "seconds")},
        "style": {"kind": style["kind"], "item_id": style["item_id"],
                  "artist": style["artist"]},
        "preview": preview,
        "result": f"/api/stylize/{jid}/result" if state == "done" else None,
    }  # fmt: skip


def _job(svc: Services, job_id: int) -> dict[str, Any]:
    job = svc.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"no style job with id {job_id}")
    return job


def _settings(cfg: StylizeConfig, asked: dict[str, Any]) -> dict[str, Any]:
    from indexer.stylize_worker import job_settings

    try:
        return job_settings(cfg.defaults, asked, cfg.max_side, cfg.max_steps)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


@router.post("/api/stylize", status_code=202, response_model=StyleJobPublic,
             responses=errors(400, 401, 404, 413, 415, 422, 429, 503))  # fmt: skip
async def start(
    svc: Svc,
    item_id: Annotated[int, Form(ge=1, le=2**63 - 1, description="the picture to render")],
    style_item_id: Annotated[int | None, Form(ge=1, le=2**63 - 1, description="a "
                             "picture of the library to take the style from")] = None,
    artist: Annotated[str | None, Form(min_length=1, max_length=200, description="an "
                      "artist: the library's strongest artwork in that style is used"),
                      NoNul] = None,
    style: Annotated[UploadFile | None, File(description="a style picture")] = None,
    side: Annotated[int | None, Form(ge=32, description="long side of the result")] = None,
    steps: Annotated[int | None, Form(ge=1)] = None,
    optimizer: Annotated[str | None, Form(pattern="^(lbfgs|adam)$")] = None,
    style_weight: Annotated[float | None, Form(ge=0)] = None,
    content_weight: Annotated[float | None, Form(ge=0)] = None,
    add_to_library: Annotated[bool, Form(description="index the result as a derived "
                                         "item when done")] = False,
) -> JSONResponse:  # fmt: skip
    """Queue a style transfer of item_id in the style of exactly one of style_item_id,
    artist or an uploaded style picture. 429 (with Retry-After) when the queue is full."""
    cfg = _config(svc)
    given = [x for x in (style_item_id, artist, style) if x is not None]
    if len(given) != 1:
        raise ApiError(422, "give exactly one style: style_item_id, artist or a style file")
    data = await style.read() if style is not None else None
    settings = _settings(cfg, {"side": side, "steps": steps, "optimizer": optimizer,
                               "style_weight": style_weight,
                               "content_weight": content_weight})  # fmt: skip

    def work() -> dict[str, Any]:
        from indexer.stylize_worker import check_picture, style_source

        try:
            check_picture(svc.catalog, item_id, "content")
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        picture = None
        if data is not None:
            picture = decode_upload_image(data, svc.config.limits).image
        try:
            kw = style_source(svc.catalog, svc.jobs, cfg.home, svc.config.artwork_min_score,
                              item_id=style_item_id, artist=artist, picture=picture)  # fmt: skip
        except (LookupError, ValueError) as exc:  # the style's source, not the resource
            raise ApiError(422, str(exc)) from None
        try:
            return svc.jobs.create(
                item_id=item_id, settings=settings, total=settings["steps"],
                add_to_library=add_to_library, max_attempts=cfg.max_attempts,
                queue_max=cfg.queue_max, retry_after=_retry_after(svc), **kw,
            )  # fmt: skip
        except LookupError as exc:  # deleted meanwhile
            raise ApiError(404, str(exc)) from None
        except QueueFull as exc:
            raise ApiError(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None

    job = await run_in_threadpool(work)
    return AsciiJSON(public(job), status_code=202,
                     headers={"Location": f"/api/stylize/{job['id']}"})  # fmt: skip


def _retry_after(svc: Services) -> int:
    return max(1, min(3600, math.ceil(svc.jobs.typical_seconds())))


@router.get("/api/stylize", response_model=StyleJobList, responses=errors(401, 422, 503))
def list_jobs(
    svc: Svc,
    state: Annotated[list[str] | None, Query(description="only jobs in these states")] = None,
    item_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Jobs, newest first."""
    _config(svc)
    bad = [x for x in state or [] if x not in STATES]
    if bad:
        raise ApiError(422, f"state must be among {', '.join(STATES)}; got {bad[0]!r}")
    return {"jobs": [public(j) for j in svc.jobs.list(state or (), limit, item_id)]}


@router.get("/api/stylize/{job_id}", response_model=StyleJobPublic,
            responses=errors(401, 404, 422, 503))  # fmt: skip
def job_status(svc: Svc, job_id: JobId) -> dict[str, Any]:
    _config(svc)
    return public(_job(svc, job_id))


# The stream is built here, not in FastAPI's own SSE mode (response_class=...), which
# would start streaming before a 404 could be answered; the schema says what it returns.
@router.get("/api/stylize/{job_id}/events",
            responses={200: {"content": {"text/event-stream": {}}},
                       **errors(401, 404, 422, 503)})  # fmt: skip
async def job_events(svc: Svc, job_id: JobId, request: Request) -> EventSourceResponse:
    """Server-sent events: one `job` event (the job as GET returns it) at once and at
    every change (a step, a new preview, the end); the stream ends with the job."""
    _config(svc)
    first = await run_in_threadpool(_job, svc, job_id)

    async def stream() -> AsyncIterator[str]:
        job, last, quiet = first, None, 0.0
        while True:
            shown = public(job)
            key = (shown["state"], shown["step"], shown["preview"], shown["cancel_requested"])
            if key != last:
                last, quiet = key, 0.0
                yield f"event: job\nid: {shown['step']}\ndata: {json.dumps(shown)}\n\n"
            elif quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": still here\n\n"
            if shown["state"] in FINISHED or await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)
            quiet += EVENT_POLL_S
            got = await run_in_threadpool(svc.jobs.get, job_id)
            if got is None:
                return
            job = got

    return EventSourceResponse(stream(), headers={"Cache-Control": "no-cache",
                                                  "X-Accel-Buffering": "no"})  # fmt: skip


def _file(cfg: StylizeConfig, rel: str) -> str:
    path = (cfg.home / rel).resolve()
    if not path.is_relative_to(cfg.home.resolve()) or not path.is_file():
        raise ApiError(404, "the file of this job is gone")
    return str(path)


@router.get("/api/stylize/{job_id}/preview", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}},
                       **errors(401, 404, 422, 503)})  # fmt: skip
def job_preview(svc: Svc, job_id: JobId) -> FileResponse:
    """The picture so far (JPEG), while the job runs."""
    from indexer.stylize_worker import preview_path

    cfg = _config(svc)
    _job(svc, job_id)
    path = preview_path(cfg.home, job_id)
    if not path.is_file():
        raise ApiError(404, f"job {job_id} has no picture to show yet")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/api/stylize/{job_id}/result", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}},
                       **errors(401, 404, 409, 422, 503)})  # fmt: skip
def job_result(
    svc: Svc, job_id: JobId,
    download: Annotated[bool, Query(description="as an attachment")] = False,
) -> FileResponse:  # fmt: skip
    """The result (PNG, its provenance in an iTXt chunk)."""
    cfg = _config(svc)
    job = _job(svc, job_id)
    if job["state"] != "done" or not job["result_file"]:
        raise ApiError(409, f"job {job_id} is {job['state']}: no result")
    name = f"everlook-stylized-{job_id}.png" if download else None
    return FileResponse(_file(cfg, job["result_file"]), media_type="image/png", filename=name,
                        content_disposition_type="attachment" if download else "inline",
                        headers={"Cache-Control": "private, max-age=86400"})  # fmt: skip


@router.post("/api/stylize/{job_id}/cancel", response_model=StyleJobPublic,
             responses=errors(401, 404, 409, 422, 503))  # fmt: skip
def cancel(svc: Svc, job_id: JobId) -> dict[str, Any]:
    """Cancel: a queued job at once, a running one at its next step."""
    _config(svc)
    try:
        return public(svc.jobs.cancel(job_id))
    except KeyError:
        raise ApiError(404, f"no style job with id {job_id}") from None
    except JobStateError as exc:
        raise ApiError(409, str(exc)) from None


@router.post("/api/stylize/{job_id}/library", response_model=StyleJobPublic,
             responses=errors(401, 404, 409, 422, 503))  # fmt: skip
def add_to_library(svc: Svc, job_id: JobId) -> dict[str, Any]:
    """Index the result into the library as a derived item (now if the job is done,
    else when it is). derived_item_id tells when it has landed."""
    cfg = _config(svc)
    if svc.index_back is None:
        raise ApiError(409, "this server does not index (started without library folders "
                       "or with --no-watch): add results from a server that watches")  # fmt: skip
    try:
        job = svc.jobs.add_to_library(job_id)
    except KeyError:
        raise ApiError(404, f"no style job with id {job_id}") from None
    except JobStateError as exc:
        raise ApiError(409, str(exc)) from None
    if job["state"] == "done" and job["derived_item_id"] is None:
        svc.index_back(_file(cfg, job["result_file"]))
    return public(job)
