"""Search: by text (with -negatives), by uploaded image (with text), by item, by
filters alone; one page shape and a cursor that neither skips nor repeats."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import StringConstraints

from api.errors import ApiError
from api.schemas import NoNul, SearchPage, errors
from api.services import Services, Svc
from api.uploads import decode_upload_audio, decode_upload_image
from catalog.filters import Filters, parse_has
from search.engine import Hit
from search.present import result_rows
from search.query import Cursor
from search.spaces import BadSpace, NoSpace, pick

router = APIRouter(tags=["search"])
THUMB = "/api/items/{}/thumbnail?size=256"


def _has(spec: str) -> tuple[str, int]:
    try:
        return parse_has(spec)
    except ValueError as exc:
        raise ApiError(422, f"has={exc}") from None


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, f"{name}={value!r} is not a day (or time) of the calendar") from None
    return t.replace(tzinfo=None)  # catalog times are naive local, as EXIF's


# A day, or a day and time, said in the schema and checked strictly: pydantic's lax date
# parsing would take "0" for 1970-01-01.
Day = Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?)?$")]


Text = Annotated[str | None, Query(max_length=500), NoNul]
MAX_WILDCARDS = 8
Many = Annotated[list[str] | None, Query(max_length=50), NoNul]
# The schema says what a `has` value may be, so a client (or a schema fuzzer) knows it
# before asking: a label, optionally ":N" for at least N (1-999).
HasSpec = Annotated[str, StringConstraints(pattern=r"^\s*[^:\s][^:]*(:[1-9][0-9]{0,2})?$",
                                           max_length=200), NoNul]  # fmt: skip


def filter_params(
    svc: Svc,
    has: Annotated[
        list[HasSpec] | None,
        Query(
            max_length=50,
            description='object, or "LABEL:N" for at least N',
            examples=["dog", "person:2"],
        ),
    ] = None,
    tag: Annotated[Many, Query(description="panoptic tag, e.g. sky")] = None,
    style: Annotated[Text, Query(description="artist style, e.g. Claude Monet")] = None,
    min_style: Annotated[float | None, Query(ge=0, le=1)] = None,
    label: Annotated[Many, Query(description="stored label, e.g. an ImageNet class")] = None,
    kind: Annotated[str | None, Query(pattern="^(image|audio)$")] = None,
    after: Annotated[Day, Query(description="taken on/after this day (else file time)")] = None,
    before: Annotated[Day, Query(description="taken before this day")] = None,
    camera: Annotated[Text, Query(description="camera make/model contains")] = None,
    path_glob: Annotated[Text, Query(description="path matches this glob", max_length=300)] = None,
) -> Filters:
    c = svc.config
    if path_glob and sum(path_glob.count(ch) for ch in "*?[") > MAX_WILDCARDS:
        # fnmatch runs in Python over every path: many wildcards cost seconds a query.
        raise ApiError(422, f"path_glob: at most {MAX_WILDCARDS} wildcards (* ? [)")
    return Filters(
        has=[_has(h) for h in has or []], min_confidence=c.has_min_confidence,
        tags=list(tag or []), styles=[style] if style else [],
        min_style=c.style_min_score if min_style is None else min_style,
        min_artwork=c.artwork_min_score, labels=list(label or []), kind=kind,
        after=_when(after, "after"), before=_when(before, "before"), camera=camera or None,
        path_glob=path_glob or None,
    )  # fmt: skip


ItemId = Annotated[int, Path(ge=1, le=2**63 - 1, description="catalog item id")]
K = Annotated[int, Query(ge=1, le=200, description="results per page")]
MinScore = Annotated[float | None, Query(ge=-2, le=2, description="drop results below")]
CursorQ = Annotated[str | None, Query(max_length=300, description="next_cursor of a page")]
SpaceQ = Annotated[str | None, Query(pattern="^(clip|imagebind)$", description="embedding "
                   "space; default: clip for text and pictures, imagebind for sound")]  # fmt: skip


def space_for(svc: Services, query: str, filters: Filters, requested: str | None) -> str:
    """The enabled space that answers a query of this modality for the kind asked."""
    try:
        return pick(svc.engines, query, filters.kind, requested).name
    except BadSpace as exc:
        raise ApiError(422, str(exc)) from None
    except NoSpace as exc:  # the space that would answer is not enabled on this server
        raise ApiError(409, str(exc)) from None


def _cursor(token: str | None, ranked: bool, key: bytes) -> Cursor | None:
    if not token:
        return None
    try:
        c = Cursor.decode(token, key)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if (c.score is not None) != ranked:
        raise ApiError(400, "this cursor belongs to another kind of query")
    return c


def page(
    svc: Services, vec: np.ndarray | None, k: int, cursor: str | None, min_score: float | None,
    filters: Filters, exclude: list[int], words: str | None, space: str = "clip",
) -> dict[str, Any]:  # fmt: skip
    """One page of results for a query vector in a space (or the newest items, with none)."""
    # Each space signs its own cursors: a score threshold from ImageBind's space means
    # nothing in CLIP's, so a cursor carried across (a changed kind filter) is refused.
    key = svc.cursor_key + space.encode()
    after = _cursor(cursor, vec is not None, key)
    hits: list[Hit]
    engine = svc.engines[space]
    if vec is None:
        hits, nxt = engine.newest(filters, k, after)
    else:
        hits, nxt = engine.page(vec, k, after, min_score, filters, exclude, words or None)
    rows = result_rows(svc.catalog, hits, svc.config.artwork_min_score,
                       first_rank=(after.seen if after else 0) + 1)  # fmt: skip
    for r in rows:
        r["thumbnail"] = THUMB.format(r["item_id"])
        r["file"] = f"/api/items/{r['item_id']}/file"
    return {"results": rows, "next_cursor": nxt.encode(key) if nxt else None}


def item_vector(svc: Services, item_id: int, space: str = "clip") -> np.ndarray:
    try:
        return svc.engines[space].item_vector(item_id)
    except LookupError:
        if not svc.catalog.item_exists(item_id):
            raise ApiError(404, f"no item with id {item_id}") from None
        raise ApiError(409, f"item {item_id} has no {space} embedding of the current model "
                       "yet") from None  # fmt: skip


def item_modality(svc: Services, item_id: int) -> str:
    kind = svc.catalog.items_of_kind([item_id]).get(item_id)
    if kind is None:
        raise ApiError(404, f"no item with id {item_id}")
    return "audio" if kind == "audio" else "image"


def _text_query(
    svc: Services, q: str, image: np.ndarray | None = None, space: str = "clip"
) -> tuple[np.ndarray, str]:
    try:
        return svc.text_vector(q, image, space)
    except ValueError as exc:  # only -negatives
        raise ApiError(400, str(exc)) from None


SEARCH_ERRORS = errors(400, 401, 404, 409, 422, 503)


@router.get("/api/search", response_model=SearchPage, responses=SEARCH_ERRORS)
def search(
    svc: Svc,
    filters: Annotated[Filters, Depends(filter_params)],
    q: Annotated[Text, Query(description='words; "-word" or -"two words" to search away '
                             "from them", examples=["a dog on a beach -people"])] = None,
    like: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="more like this")] = None,
    k: K = 24, min_score: MinScore = None, cursor: CursorQ = None, space: SpaceQ = None,
) -> dict[str, Any]:  # fmt: skip
    """Search by text, by an item ("more like this"), both at once, or by filters alone
    (newest first). With nothing given: every item, newest first. Text finds pictures
    through CLIP; with kind=audio (or space=imagebind) it finds sounds through ImageBind."""
    q = (q or "").strip() or None
    vec, words = None, None
    modality = item_modality(svc, like) if like is not None else "text"
    name = space_for(svc, modality, filters, space) if (q or like) else "clip"
    base = item_vector(svc, like, name) if like is not None else None
    if q is not None:
        vec, words = _text_query(svc, q, base, name)
    elif base is not None:
        vec = base
    exclude = [like] if like is not None else []
    return page(svc, vec, k, cursor, min_score, filters, exclude, words, name)


@router.get("/api/items/{item_id}/similar", response_model=SearchPage, responses=SEARCH_ERRORS,
            tags=["items"])  # fmt: skip
def similar(
    svc: Svc, item_id: ItemId,
    filters: Annotated[Filters, Depends(filter_params)],
    k: K = 24, min_score: MinScore = None, cursor: CursorQ = None, space: SpaceQ = None,
) -> dict[str, Any]:  # fmt: skip
    """More like this item (the item itself left out): pictures through CLIP, sounds (or
    pictures like a sound) through ImageBind."""
    name = space_for(svc, item_modality(svc, item_id), filters, space)
    vec = item_vector(svc, item_id, name)
    return page(svc, vec, k, cursor, min_score, filters, [item_id], None, name)


@router.post("/api/search/image", response_model=SearchPage,
             responses=errors(400, 401, 409, 413, 415, 422, 503))  # fmt: skip
async def search_image(
    svc: Svc,
    filters: Annotated[Filters, Depends(filter_params)],
    file: Annotated[UploadFile, File(description="the image to search with")],
    q: Annotated[str | None, Form(max_length=500, description="text combined with the "
                                  "image; -words search away from them"), NoNul] = None,
    k: K = 24, min_score: MinScore = None, cursor: CursorQ = None, space: SpaceQ = None,
) -> dict[str, Any]:  # fmt: skip
    """Pictures (or, with kind=audio, sounds) like an uploaded picture, optionally
    steered by text."""
    data = await file.read()
    name = space_for(svc, "image", filters, space)

    def work() -> dict[str, Any]:
        upload = decode_upload_image(data, svc.config.limits, svc.config.draft_side)
        vec = svc.image_vector(upload.image, name)
        words = None
        text = (q or "").strip()
        if text:
            vec, words = _text_query(svc, text, vec, name)
        return page(svc, vec, k, cursor, min_score, filters, [], words, name)

    return await run_in_threadpool(work)


@router.post("/api/search/audio", response_model=SearchPage,
             responses=errors(400, 401, 409, 413, 415, 422, 503))  # fmt: skip
async def search_audio(
    svc: Svc,
    filters: Annotated[Filters, Depends(filter_params)],
    file: Annotated[UploadFile, File(description="a recording (WAV, FLAC, Ogg Vorbis/Opus, "
                                     "MP3)")],
    k: K = 24, min_score: MinScore = None, cursor: CursorQ = None, space: SpaceQ = None,
) -> dict[str, Any]:  # fmt: skip
    """Pictures and sounds (kind=image or kind=audio for one of them) that go with an
    uploaded recording: a dog barking finds dogs, rain finds rain. Through ImageBind."""
    data = await file.read()
    name = space_for(svc, "audio", filters, space)

    def work() -> dict[str, Any]:
        emb: Any = svc.engines[name].embedder
        sound = decode_upload_audio(data, svc.config.limits, emb.audio_sample_rate)
        try:
            vec = svc.audio_vector(sound.samples, name)
        except ValueError as exc:  # e.g. nothing left to embed
            raise ApiError(422, f"cannot embed the recording: {exc}") from None
        return page(svc, vec, k, cursor, min_score, filters, [], None, name)

    return await run_in_threadpool(work)
