"""The cold text query: `everlook search "words"` in a fresh process, in a fraction of a second.

A new process has ~0.6 s for the whole answer (issue [8]; rclip answers in 0.64 s here).
Measured on this project's 2-core machine, a plain import costs: SQLAlchemy ~0.45 s,
pydantic-settings ~0.2 s, torch ~1.6 s, open_clip ~2.3 s. So a plain text query with no
filters runs on what it needs and nothing else:

- the few settings it reads (:class:`QuickSettings`: the same names, defaults and `.env`
  as :class:`everlook.settings.Settings`, a test holds them equal), not pydantic;
- the catalog through :mod:`catalog.lite` (stdlib sqlite3, read-only), not SQLAlchemy;
- the text tower exported to ONNX and a tokenizer equal to open_clip's, not torch;
- the saved vector index, used only when it reflects the catalog exactly.

Whenever one of those is not so (a running server, PostgreSQL, a schema to migrate, an
index not saved since the last change, no exported text tower yet, a setting it cannot
read), it answers None and the command takes the full path, which handles every case.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PREFIX = "EVERLOOK_"


def _default_home(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "everlook"


def _raw(environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """EVERLOOK_* values as pydantic-settings sees them: names case-insensitive, the
    process environment over `.env` in the working directory (read by python-dotenv,
    the parser pydantic-settings itself uses)."""
    found: dict[str, str] = {}
    env_file = cwd / ".env"
    if env_file.is_file():
        from dotenv import dotenv_values

        for key, value in dotenv_values(env_file, encoding="utf-8").items():
            if value is not None and key.upper().startswith(PREFIX):
                found[key.upper()[len(PREFIX) :].lower()] = value
    for key, value in environ.items():
        if key.upper().startswith(PREFIX):
            found[key.upper()[len(PREFIX) :].lower()] = value
    return found


@dataclass(frozen=True)
class QuickSettings:
    """The settings a cold text query reads; see the module docstring for why."""

    home: Path
    database_url: str | None
    negative_weight: float
    artwork_min_score: float
    clip_backend: str
    spaces: tuple[str, ...]
    model_dir: Path | None
    device: str
    vector_backend: str = "faiss"

    @classmethod
    def read(
        cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> QuickSettings | None:
        """The settings, or None when one cannot be read here the way Settings would
        (the full path then reads them, and reports what is wrong with them)."""
        env = os.environ if environ is None else environ
        raw = _raw(env, Path.cwd() if cwd is None else cwd)
        try:
            # Set but empty is a value, as Settings reads it (Path("") is the folder here).
            home = Path(raw["home"]) if "home" in raw else _default_home(env)
            weight = float(raw.get("negative_weight", 0.5))
            artwork = float(raw.get("artwork_min_score", 0.5))
            spaces = tuple(json.loads(raw["spaces"])) if "spaces" in raw else ("clip",)
        except (ValueError, TypeError):
            return None
        if not set(spaces) <= {"clip", "imagebind"}:
            return None  # Settings refuses it: the full path reports that
        if raw.get("vector_backend", "faiss") not in ("faiss", "milvus"):
            return None
        if not (0.0 <= weight <= 2.0 and 0.0 <= artwork <= 1.0) or "clip" not in spaces:
            return None
        return cls(
            home=home.expanduser(),
            database_url=raw.get("database_url") or None,
            negative_weight=weight,
            artwork_min_score=artwork,
            clip_backend=raw.get("clip_backend", "auto"),
            spaces=spaces,
            model_dir=Path(raw["model_dir"]) if "model_dir" in raw else None,
            device=raw.get("device", "auto"),
            vector_backend=raw.get("vector_backend", "faiss"),
        )

    @property
    def sqlite_file(self) -> Path | None:
        """The catalog's SQLite file, or None when the catalog is elsewhere."""
        if self.database_url is None:
            return self.home / "catalog.db"
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url[len("sqlite:///") :])
        return None

    @property
    def models_cache(self) -> Path:
        return self.home / "models"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"


def text_search(text: str, k: int, min_score: float | None) -> list[dict[str, Any]] | None:
    """Result rows of a text query with no filters, as `everlook search --json` prints
    them; None when this path cannot answer exactly as the full one would."""
    qs = QuickSettings.read()
    db = qs.sqlite_file if qs is not None else None
    if qs is None or db is None or qs.clip_backend == "torch" or not db.is_file():
        return None
    if qs.vector_backend != "faiss":
        return None  # vectors on a server (Milvus): the full path connects to it
    from everlook.lock import running_server

    if running_server(qs.home) is not None:
        return None  # a server's warm models answer faster still (the full path asks it)
    from catalog.lite import LiteCatalog

    try:
        with LiteCatalog(db) as lite:
            return _answer(lite, qs, text, k, min_score)
    except sqlite3.Error:  # locked, unreadable, an older schema: the full path says what
        return None


def _answer(
    lite: Any, qs: QuickSettings, text: str, k: int, min_score: float | None
) -> list[dict[str, Any]] | None:
    import migrations

    if lite.revision() != migrations.head():
        return None  # the full path migrates first
    active = lite.active_model("clip")
    if active is None:
        return None
    embedder = _text_embedder(qs, *active)
    if embedder is None:
        return None
    # The text tower's session is built in a thread while this one opens the index:
    # ONNX Runtime releases the GIL while it loads, so the two overlap on 2 cores.
    # The engine then finds the same texts' vectors in the embedder's recent queries.
    from search.query import parse

    q = parse(text)
    if not q.positive:
        return None  # negatives alone: the full path says why it can't search that
    texts = [q.positive, *q.negatives]
    early: list[BaseException] = []
    thread = threading.Thread(target=_embed_into, args=(embedder, texts, early), daemon=True)
    thread.start()
    store = _current_index(lite, qs.index_dir / "clip.faiss", active[0], embedder.dim)
    thread.join()
    if store is None or early:
        return None
    from search.engine import SearchEngine
    from search.present import result_rows

    engine = SearchEngine(embedder, store, lite)  # a store and a LiteCatalog: see its doc
    hits = engine.by_text(text, k, min_score, None, qs.negative_weight)
    return result_rows(lite, hits, qs.artwork_min_score)


def _embed_into(embedder: Any, texts: list[str], errors: list[BaseException]) -> None:
    try:
        if texts:
            embedder.embed_texts(texts)
    except BaseException as exc:  # the full path will say what is wrong
        errors.append(exc)


def _text_embedder(qs: QuickSettings, model_id: str, args: dict[str, Any]) -> Any:
    """The space's active CLIP model, if its text tower answers without torch now."""
    from search import embedders

    try:
        emb: Any = embedders.create(
            "clip", **args, model_dir=qs.model_dir, device=qs.device,
            backend=qs.clip_backend, cache_dir=qs.models_cache,
            prepack_text=False,  # one query: a faster session open beats a faster run
        )  # fmt: skip
        ready = emb.model_id == model_id and emb.text_ready()
    except Exception:  # an argument this version doesn't know, a model config missing
        return None
    return emb if ready else None


def _current_index(lite: Any, path: Path, model_id: str, dim: int) -> Any:
    """The saved index, memory-mapped, when it holds exactly what the catalog holds: the
    catalog's mark (rows, last row id, its time) equals the one the file recorded at
    save (search.vectors.catalog_sync, whose Mark this compares in its JSON form:
    importing it would import the catalog). Otherwise None: the full path catches up."""
    from search import vectors
    from search.vectors import IndexInfo, IndexUnusable

    if not path.is_file():
        return None
    try:
        store = vectors.load("faiss", path, IndexInfo(model_id=model_id, dim=dim))
    except IndexUnusable:
        return None
    saved: Any = getattr(store, "meta", {}).get("mark") or {}
    rows, last_id, last_at = lite.embeddings_table_mark()
    try:
        same = (saved["rows"], saved["last_id"]) == (rows, last_id) and _utc(
            None if saved["last_at"] is None else datetime.fromisoformat(saved["last_at"])
        ) == _utc(last_at)  # fmt: skip
    except (TypeError, KeyError, ValueError):  # no mark, or not one this reads
        return None
    return store if same else None


def _utc(at: datetime | None) -> datetime | None:
    """As catalog_sync.utc: the catalog's UTC times, naive from SQLite, made aware."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


DECLINED = False  # this process's cold path said no: the full path need not ask again


def main() -> None:
    """The `everlook` command. A plain text search (`search WORDS [-k N] [--min-score X]
    [--json]`) takes the cold path here, before typer, rich and pydantic are imported
    (~0.2 s of the 0.6 s budget); anything else, and any query the cold path declines,
    goes to the full CLI (everlook.cli), which parses and checks every option itself."""
    global DECLINED
    plain = plain_search(sys.argv[1:])
    if plain is not None:
        text, k, min_score, as_json = plain
        rows = text_search(text, k, min_score)
        if rows is not None:
            from everlook.rows import print_rows

            print_rows(rows, as_json)
            return
        DECLINED = True
    from everlook.cli import main as full

    full()


def plain_search(args: list[str]) -> tuple[str, int, float | None, bool] | None:
    """(text, k, min score, --json) when args are a plain text search, else None."""
    if not args or args[0] != "search":
        return None
    text, k, min_score, as_json = None, 10, None, False
    rest = iter(args[1:])
    try:
        for arg in rest:
            name, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if arg == "--json":
                as_json = True
            elif name in ("-k", "--top"):
                k = int(inline or next(rest))
            elif name == "--min-score":
                min_score = float(inline or next(rest))
            elif arg.startswith("-") or text is not None:
                return None  # another option, or a second word: the full CLI says what
            else:
                text = arg
    except (StopIteration, ValueError):
        return None
    if text is None or not 1 <= k <= 10000:
        return None
    return text, k, min_score, as_json
