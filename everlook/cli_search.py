"""`everlook search`, `show` and `classify`: asking the library questions."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from everlook.cli import (
    EXIT_USAGE,
    _fail_config,
    _parts,
    _settings,
    app,
    emit_json,
    err,
    shown,
)  # fmt: skip
from everlook.rows import print_rows

Opt = typer.Option


def _has(spec: str) -> tuple[str, int]:
    from catalog.filters import parse_has

    try:
        return parse_has(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _date(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{name} {value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None


@app.command()
def search(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[Path | None, Opt("--image", help="Find images like this file.")] = None,
    audio: Annotated[
        Path | None, Opt("--audio", help="Find what goes with this recording (ImageBind).")
    ] = None,
    like: Annotated[
        str | None, Opt("--like", help="Find images like this indexed path or item id.")
    ] = None,
    k: Annotated[int, Opt("-k", "--top", min=1, max=10000, help="How many results.")] = 10,
    min_score: Annotated[
        float | None, Opt("--min-score", help="Drop results below this cosine similarity.")
    ] = None,
    has: Annotated[
        list[str] | None,
        Opt("--has", help="Contains this object (repeatable); LABEL:N for at least N."),
    ] = None,
    tag: Annotated[
        list[str] | None, Opt("--tag", help="Panoptic tag, e.g. sky, grass (repeatable).")
    ] = None,
    style: Annotated[str | None, Opt("--style", help='Artist style, e.g. "Claude Monet".')] = None,
    min_style: Annotated[
        float | None, Opt("--min-style", min=0, max=1, help="Style score --style needs (0..1).")
    ] = None,
    label: Annotated[
        list[str] | None, Opt("--label", help="A stored label, e.g. an ImageNet class.")
    ] = None,
    kind: Annotated[
        str | None, Opt("--kind", help="image or audio (default: images; both for --audio).")
    ] = None,
    space: Annotated[
        str | None, Opt("--space", help="clip or imagebind (default: by query and --kind).")
    ] = None,
    after: Annotated[str | None, Opt("--after", help="Taken on/after (else file time).")] = None,
    before: Annotated[str | None, Opt("--before", help="Taken before this date.")] = None,
    camera: Annotated[str | None, Opt("--camera", help="Camera make/model contains.")] = None,
    path_glob: Annotated[str | None, Opt("--path-glob", help="Path matches this glob.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print results as JSON.")] = False,
) -> None:
    """Search by text, an image file (--image), a recording (--audio) or an indexed item
    (--like), narrowed by filters; with filters alone, list the matching items. Text and
    pictures find pictures through CLIP; sounds (--audio, --kind audio) go through
    ImageBind."""
    given = sum(x is not None for x in (text, image, audio, like))
    if kind is not None and kind not in ("image", "audio"):
        err.print(f"[red]error:[/red] --kind must be image or audio, not {kind!r}")
        raise typer.Exit(EXIT_USAGE)
    if space is not None and space not in ("clip", "imagebind"):
        err.print(f"[red]error:[/red] --space must be clip or imagebind, not {space!r}")
        raise typer.Exit(EXIT_USAGE)
    filtered = any((has, tag, style, label, kind, after, before, camera, path_glob))
    if given > 1 or (given == 0 and not filtered):
        err.print(
            "[red]error:[/red] give one of TEXT, --image FILE, --audio FILE or --like "
            "PATH_OR_ID, or filters alone"
        )
        raise typer.Exit(EXIT_USAGE)
    when = _date(after, "--after"), _date(before, "--before")
    if (
        text is not None
        and given == 1
        and not filtered
        and space in (None, "clip")
        and (min_style is None)
    ):
        # Words alone: the cold path (everlook.quick) answers in a fraction of a second
        # without torch, SQLAlchemy or pydantic, or says it can't and the full path runs.
        from everlook import quick

        rows = None if quick.DECLINED else quick.text_search(text, k, min_score)
        if rows is not None:
            print_rows(rows, as_json)
            return
    # A running server answers first: this path imports neither the catalog nor numpy
    # nor torch, so the whole command takes a fraction of a second.
    wire = {"q": text, "min_score": min_score, "min_style": min_style, "has": has, "tag": tag,
            "style": style, "label": label, "kind": kind, "after": after, "before": before,
            "camera": camera, "path_glob": path_glob, "space": space}  # fmt: skip
    remote = _from_server(_settings(), wire, image, audio, like, k)
    if remote is not None:
        print_rows(remote, as_json)
        return

    from catalog.filters import Filters
    from indexer.media import MediaError, decode_image, read_file
    from search.embedders import ModelUnavailable
    from search.present import result_rows
    from search.spaces import NoSpace, pick

    parts = _parts()
    s = parts.settings
    filters = Filters(
        has=[_has(h) for h in has or []], min_confidence=s.has_min_confidence,
        tags=list(tag or []), styles=[style] if style else [],
        min_style=s.style_min_score if min_style is None else min_style,
        min_artwork=s.artwork_min_score, labels=list(label or []), kind=kind,
        after=when[0], before=when[1], camera=camera, path_glob=path_glob,
    )  # fmt: skip
    try:
        item = resolve_item(parts, like) if like is not None else None
        modality = _modality(parts, text, image, audio, item)
        engine = parts.engines()[pick(parts.spaces, modality, kind, space).name]
        if text is not None:
            hits = engine.by_text(text, k, min_score, filters, s.negative_weight)
        elif image is not None:
            try:
                raw = read_file(str(image), parts.limits())
                decoded = decode_image(raw.data, parts.limits(), parts.query_draft_side())
            except MediaError as exc:
                err.print(f"[red]error:[/red] cannot use {image} as a query: {exc}")
                raise typer.Exit(EXIT_USAGE) from exc
            hits = engine.by_image(decoded.image, k, min_score, filters)
        elif audio is not None:
            hits = engine.by_audio(_read_sound(parts, audio), k, min_score, filters)
        elif item is not None:
            hits = engine.by_item(item, k, min_score, filters)
        else:
            hits = engine.by_filters(filters, k)
    except (ModelUnavailable, LookupError, NoSpace) as exc:
        raise _fail_config(exc) from exc
    print_rows(result_rows(parts.catalog, hits, s.artwork_min_score), as_json)


def _modality(parts: Any, text: Any, image: Any, audio: Any, item: int | None) -> str:
    """What the query is: text, a picture or a sound (an item is what its kind is)."""
    if audio is not None:
        return "audio"
    if image is not None:
        return "image"
    if item is not None:
        return "audio" if parts.catalog.items_of_kind([item]).get(item) == "audio" else "image"
    return "text"


def _read_sound(parts: Any, path: Path) -> Any:
    from indexer.audio import decode_audio
    from indexer.media import MediaError, read_file
    from indexer.stages import AUDIO_RATE

    try:
        return decode_audio(read_file(str(path), parts.limits()).data, parts.limits(),
                            AUDIO_RATE).samples  # fmt: skip
    except MediaError as exc:
        err.print(f"[red]error:[/red] cannot use {shown(str(path))} as a query: {exc}")
        raise typer.Exit(EXIT_USAGE) from exc


def _from_server(
    s: Any, params: dict[str, Any], image: Path | None, audio: Path | None, like: str | None,
    k: int,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """The rows from a running `everlook serve` on this data dir, if one answers (the
    same rows as in-process: the server runs the same engine and result_rows)."""
    from everlook import remote
    from everlook.lock import running_server

    url = running_server(s.home)
    if url is None:
        return None
    try:
        if like is not None:
            is_id = like.isdigit() and not os.path.exists(like)
            params["like"] = int(like) if is_id else resolve_item(_parts(), like)
        token = s.api_token.get_secret_value() if s.api_token else None
        upload = ("image", image) if image is not None else ("audio", audio) if audio else None
        rows = remote.search(url, token, {k: v for k, v in params.items() if v is not None},
                             k, upload)  # fmt: skip
    except (LookupError, remote.ServerSaid, OSError) as exc:
        raise _fail_config(exc) from exc
    return rows


def resolve_item(parts: Any, ref: str) -> int:
    if ref.isdigit() and not os.path.exists(ref):
        if parts.catalog.item_exists(int(ref)):
            return int(ref)
        raise LookupError(f"no item with id {ref}")
    item_id = parts.catalog.item_id_for_path(os.path.abspath(ref))
    if item_id is None:
        raise LookupError(f"{shown(ref)} is not in the catalog (index it first)")
    return int(item_id)


@app.command()
def show(
    item: Annotated[str, typer.Argument(help="Item id or indexed path.")],
    as_json: Annotated[bool, Opt("--json", help="Print as JSON.")] = False,
) -> None:
    """Everything Everlook knows of one item: metadata, paths, objects, tags, styles."""
    parts = _parts()
    try:
        detail = parts.catalog.item(resolve_item(parts, item))
    except LookupError as exc:
        raise _fail_config(exc) from exc
    assert detail is not None
    if as_json:
        emit_json(detail)
        return
    if detail["kind"] == "audio":
        shape = (
            f"{detail['duration_s']:.2f} s, {detail['sample_rate']} Hz, "
            f"{detail['channels']} channel{'s' if detail['channels'] != 1 else ''}"
        )
    else:
        shape = f"{detail['width']}x{detail['height']}"
    print(f"item {detail['id']} ({detail['kind']}, {detail['format']}, {shape}, "
          f"{detail['size_bytes']} bytes)")  # fmt: skip
    for p in detail["paths"]:
        print(f"  path     {shown(p)}")
    for key in ("taken_at", "camera_make", "camera_model", "gps"):
        if detail.get(key):
            print(f"  {key:<8} {detail[key]}")
    for d in detail["detections"]:
        box = ", ".join(f"{v:.3f}" for v in d["box"])
        print(f"  object   {d['label']} {d['confidence']:.0%} [{box}]")
    for g in detail["segments"]:
        print(f"  segment  {g['label']} ({'thing' if g['thing'] else 'stuff'}) {g['area']:.1%}")
    for kind_, rows in detail["labels"].items():
        print(f"  {kind_:<8} " + ", ".join(f"{r['label']} {r['score']:.1%}" for r in rows))
    for st in detail["stages"]:
        why = f": {st['error']}" if st["error"] else ""
        print(f"  stage    {st['stage']} {st['status']} ({st['model_id']}){why}")


@app.command()
def classify(
    target: Annotated[str, typer.Argument(help="Item id, indexed path, or an image file.")],
    labels: Annotated[
        str | None, Opt("--labels", help="Comma-separated labels, e.g. cat,dog,bird.")
    ] = None,
    imagenet: Annotated[bool, Opt("--imagenet", help="The ImageNet-1k labels.")] = False,
    k: Annotated[int, Opt("-k", "--top", min=1, max=1000, help="How many to print.")] = 5,
    as_json: Annotated[bool, Opt("--json", help="Print as JSON.")] = False,
) -> None:
    """Zero-shot classification of an item or a file against labels, ranked."""
    import numpy as np

    from enrich.zeroshot import parse_labels
    from indexer.media import MediaError, decode_image, read_file
    from search.embedders import ModelUnavailable

    if (labels is None) == (not imagenet):
        err.print("[red]error:[/red] give --labels a,b,c or --imagenet (one of them)")
        raise typer.Exit(EXIT_USAGE)
    parts = _parts()
    try:
        names = parse_labels(labels) if labels is not None else None
        vec = _vector_of(parts, target, np, (read_file, decode_image))
        clf = parts.classifier()
        ranked = clf.classify_imagenet(vec, k) if names is None else clf.classify(vec, names)
    except (ModelUnavailable, LookupError, ValueError, MediaError) as exc:
        raise _fail_config(exc) from exc
    rows = [{"label": n, "score": round(float(p), 6)} for n, p in ranked[0][:k]]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        print(f"{r['score']:>7.1%}  {r['label']}")


def _vector_of(parts: Any, target: str, np: Any, media: Any) -> Any:
    """The CLIP vector of an item (stored) or of an image file (embedded now)."""
    read_file, decode_image = media
    try:
        item_id: int | None = resolve_item(parts, target)
    except LookupError:
        item_id = None
    if item_id is not None:
        stored = parts.catalog.embedding(item_id, "clip", parts.embedder.model_id)
        if stored is not None:
            return np.frombuffer(stored[1], dtype=np.float32)[None, :]
    if not os.path.isfile(target):
        raise LookupError(f"{shown(target)} is neither an indexed item nor an image file")
    raw = read_file(target, parts.limits())
    return parts.embedder.embed_images([decode_image(raw.data, parts.limits()).image])
