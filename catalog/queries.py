"""Catalog operations. Each public write is one transaction, so a crash leaves either
all of a batch or none of it."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from catalog.browse import Browse
from catalog.db import insert_for, make_sessionmaker
from catalog.filters import Filters, labelled_in, matching_ids
from catalog.models import (
    DetectionRow,
    Embedding,
    FileFailure,
    FilePath,
    Item,
    LabelRow,
    SegmentRow,
    StageState,
    StageStatus,
    utcnow,
)
from catalog.spaces import SpaceBook
from catalog.stages import StageBook


class KnownPath(NamedTuple):
    # A tuple, not a dataclass: a scan builds one per catalogued file under its roots
    # (100k+), and a frozen dataclass costs several times more to construct.
    path: str
    item_id: int
    size: int
    mtime_ns: int
    # The item needs nothing from the pipeline in the space asked about (known_paths'
    # ready_in): it has that model's vector, or it is a sound (embedded by its stages).
    ready: bool = False


def _utc(at: datetime) -> datetime:
    """Naive (SQLite's reading of the UTC times written) and aware (PostgreSQL's) alike."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


@dataclass
class NewItem:
    """A decoded and embedded file, ready to be stored in one go."""

    sha256: str
    kind: str
    size_bytes: int
    path: str
    mtime_ns: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    # taken_at, camera_*, gps_*; for audio: duration_s, sample_rate, channels
    meta: dict[str, Any] = field(default_factory=dict)
    space: str = "clip"
    model_id: str = ""
    vector: bytes = b""
    dim: int = 0


def at_or_under(column: Any, path: str) -> Any:
    """SQL test: column names path itself, or something inside the folder path.

    A byte range, not LIKE: paths are bytes (models.FsPath), and every byte string that
    starts with ``P/`` sorts in ``[P/, P0)`` ('0' follows '/' in ASCII) and nothing else
    does. Exact on every backend (no case folding, no wildcards) and it uses the index.
    """
    folder = path.rstrip("/")
    return (column == path) | ((column >= folder + "/") & (column < folder + "0"))


def move_prefix(s: Session, model: Any, src: str, dest: str) -> int:
    """Re-point rows of model (anything with a unique .path) from src, or from under the
    folder src, to the same place under dest; a row already at the target gives way."""
    n = 0
    for row in s.scalars(select(model).where(at_or_under(model.path, src))):
        new = dest + row.path[len(src) :]
        s.execute(delete(model).where(model.path == new))
        row.path = new
        n += 1
    return n


def _chunks(seq: Sequence[Any], n: int = 500) -> Iterator[Sequence[Any]]:
    # SQLite caps bound parameters per statement; keep IN lists well under the cap.
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.Session = make_sessionmaker(engine)
        self.stages = StageBook(self.Session)
        self.browse = Browse(self.Session)
        self.spaces = SpaceBook(self.Session)
        # Items whose path was pointed at other content: orphan candidates for the next
        # prune_orphans(), so a watcher batch checks those, not the whole catalog.
        self._detached: set[int] = set()
        self._detached_lock = threading.Lock()

    # ---- reads -------------------------------------------------------------------
    def known_paths(
        self, roots: Iterable[str], ready_in: tuple[str, str] | None = None
    ) -> dict[str, KnownPath]:
        """Catalogued paths at or under roots: one indexed range read per root, so a
        scan costs what its tree holds, not what the catalog holds. With ready_in
        (space, model id), each also says whether its item needs nothing from the
        pipeline (KnownPath.ready), probed by the unique embedding index in that read."""
        cols: list[Any] = [FilePath.path, FilePath.item_id, FilePath.size, FilePath.mtime_ns]
        if ready_in is not None:
            space, model_id = ready_in
            has_vector = exists().where(
                Embedding.item_id == FilePath.item_id, Embedding.space == space,
                Embedding.model_id == model_id,
            )  # fmt: skip
            is_sound = exists().where(Item.id == FilePath.item_id, Item.kind == "audio")
            cols.append(or_(has_vector, is_sound))
        out: dict[str, KnownPath] = {}
        with self.engine.connect() as conn:
            for root in roots:
                stmt = select(*cols).where(at_or_under(FilePath.path, root))
                for p, item_id, size, mtime, *ready in conn.execute(stmt).all():
                    out[p] = KnownPath(p, item_id, size, mtime, bool(ready and ready[0]))
        return out

    def item_ids_by_sha(self, shas: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.Session() as s:
            for chunk in _chunks(list(shas)):
                for sha, item_id in s.execute(
                    select(Item.sha256, Item.id).where(Item.sha256.in_(chunk))
                ):
                    out[sha] = item_id
        return out

    def paths_for(self, item_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {i: [] for i in item_ids}
        with self.Session() as s:
            for chunk in _chunks(list(item_ids)):
                stmt = select(FilePath.item_id, FilePath.path).where(FilePath.item_id.in_(chunk))
                for item_id, p in s.execute(stmt.order_by(FilePath.path)):
                    out[item_id].append(p)
        return out

    def item_id_for_path(self, path: str) -> int | None:
        with self.Session() as s:
            return s.scalar(select(FilePath.item_id).where(FilePath.path == path))

    def filter_ids(self, filters: Filters) -> list[int]:
        """The item ids a search filter admits (ascending)."""
        with self.Session() as s:
            return matching_ids(s, filters)

    def item(self, item_id: int) -> dict[str, Any] | None:
        """Metadata, paths, stage statuses and enrichment of one item, for display."""
        with self.Session() as s:
            it = s.get(Item, item_id)
            if it is None:
                return None
            meta = {
                "id": it.id, "kind": it.kind, "sha256": it.sha256, "format": it.format,
                "width": it.width, "height": it.height, "size_bytes": it.size_bytes,
                "taken_at": _iso(it.taken_at), "camera_make": it.camera_make,
                "camera_model": it.camera_model, "gps": [it.gps_lat, it.gps_lon]
                if it.gps_lat is not None else None, "created_at": _iso(_utc(it.created_at)),
                "duration_s": it.duration_s, "sample_rate": it.sample_rate,
                "channels": it.channels,
            }  # fmt: skip
        meta["paths"] = self.paths_for([item_id])[item_id]
        meta["stages"] = self.stages.statuses(item_id)
        meta.update(self.stages.enrichment([item_id])[item_id])
        return meta

    def items_labelled_in(self, text: str, kind: str = "imagenet") -> dict[int, float]:
        """Items carrying a stored label the text names: item id -> best label score."""
        with self.Session() as s:
            return labelled_in(s, text, kind)

    def items_of_kind(self, item_ids: Sequence[int]) -> dict[int, str]:
        with self.Session() as s:
            out: dict[int, str] = {}
            for chunk in _chunks(list(item_ids)):
                out.update(s.execute(select(Item.id, Item.kind).where(Item.id.in_(chunk))).all())
            return out

    def item_ids_of_kind(self, kind: str) -> list[int]:
        with self.Session() as s:
            return list(s.scalars(select(Item.id).where(Item.kind == kind)))

    def item_exists(self, item_id: int) -> bool:
        with self.Session() as s:
            return s.get(Item, item_id) is not None

    def embedding(
        self, item_id: int, space: str, model_id: str | None = None
    ) -> tuple[str, bytes] | None:
        """(model id, vector bytes) of the item in this space: the given model's, or
        the newest when no model is named."""
        with self.Session() as s:
            stmt = select(Embedding.model_id, Embedding.vector).where(
                Embedding.item_id == item_id, Embedding.space == space
            )
            if model_id is not None:
                stmt = stmt.where(Embedding.model_id == model_id)
            row = s.execute(stmt.order_by(Embedding.created_at.desc())).first()
            return (row[0], row[1]) if row else None

    def embeddings_table_mark(self) -> tuple[int, int, datetime | None]:
        """(rows, highest row id, that row's created_at) over the whole embeddings table:
        moves whenever any vector is added or removed, or re-added under a reused row id.
        Cheap at any size: SQLite counts a table from its smallest index (~25 ms at a
        million rows) and the highest id is one primary-key step; a max(created_at),
        which no index covers, would read every row (4-6 s at a million)."""
        with self.Session() as s:
            rows = s.scalar(select(func.count()).select_from(Embedding)) or 0
            last = s.execute(
                select(Embedding.id, Embedding.created_at).order_by(Embedding.id.desc()).limit(1)
            ).first()
            return int(rows), int(last[0]) if last else 0, last[1] if last else None

    def embedding_rows_since(
        self, row_id: int, since: datetime | None
    ) -> list[tuple[int, str, str, int]]:
        """(row id, space, model id, item id) of the rows written after a table mark
        (row_id, since): those above row_id, and those at or below it written after
        `since` (row ids SQLite reused after the newest rows were deleted: always the
        top of the id range, so the walk down stops at the first older row). Primary-key
        reads only: O(rows written since)."""
        with self.Session() as s:
            cols = (Embedding.id, Embedding.space, Embedding.model_id, Embedding.item_id)
            out = [tuple(r) for r in s.execute(select(*cols).where(Embedding.id > row_id))]
            below = row_id + 1
            while since is not None:
                batch = s.execute(
                    select(*cols, Embedding.created_at).where(Embedding.id < below)
                    .order_by(Embedding.id.desc()).limit(64)
                ).all()  # fmt: skip
                newer = [tuple(r[:4]) for r in batch if _utc(r[4]) > _utc(since)]
                out.extend(newer)
                if not batch or len(newer) < len(batch):
                    break
                below = batch[-1][0]
            return out  # type: ignore[return-value]

    def embedding_count(self, space: str, model_id: str) -> int:
        """A model's vectors, counted over the (space, model, item) index: O(its rows),
        about 0.45 s at a million; asked only when rows were deleted somewhere."""
        with self.Session() as s:
            stmt = select(func.count()).where(
                Embedding.space == space, Embedding.model_id == model_id
            )
            return int(s.scalar(stmt) or 0)

    def embedding_ids_since(self, space: str, model_id: str, since: datetime) -> list[int]:
        """Items whose embedding was written at or after `since`."""
        with self.Session() as s:
            stmt = select(Embedding.item_id).where(
                Embedding.space == space, Embedding.model_id == model_id,
                Embedding.created_at >= since,
            )  # fmt: skip
            return list(s.scalars(stmt))

    def embedded_among(self, item_ids: Iterable[int], space: str, model_id: str) -> set[int]:
        """Those of item_ids that need nothing from the pipeline: they have this model's
        vector, or are sounds (embedded by their spaces' stages). Indexed lookups only."""
        out: set[int] = set()
        with self.Session() as s:
            for chunk in _chunks(sorted(set(item_ids))):
                out.update(s.scalars(select(Embedding.item_id).where(
                    Embedding.space == space, Embedding.model_id == model_id,
                    Embedding.item_id.in_(chunk))))  # fmt: skip
                out.update(s.scalars(select(Item.id).where(Item.id.in_(chunk),
                                                           Item.kind == "audio")))  # fmt: skip
        return out

    def embedding_ids(self, space: str, model_id: str) -> list[int]:
        with self.Session() as s:
            stmt = select(Embedding.item_id).where(
                Embedding.space == space, Embedding.model_id == model_id
            )
            return list(s.scalars(stmt))

    def embedding_ids_page(
        self, space: str, model_id: str, after: int | None, limit: int | None,
        upto: int | None = None,
    ) -> list[int]:  # fmt: skip
        """Item ids of a model's vectors in (after, upto], in order, at most limit: a
        seek on the (space, model, item) index per page."""
        with self.Session() as s:
            stmt = select(Embedding.item_id).where(
                Embedding.space == space, Embedding.model_id == model_id
            )
            if after is not None:
                stmt = stmt.where(Embedding.item_id > after)
            if upto is not None:
                stmt = stmt.where(Embedding.item_id <= upto)
            stmt = stmt.order_by(Embedding.item_id)
            return list(s.scalars(stmt.limit(limit) if limit is not None else stmt))

    def iter_embeddings(
        self, space: str, model_id: str, batch: int = 4096, only: Sequence[int] | None = None
    ) -> Iterator[list[tuple[int, bytes]]]:
        """Yield (item_id, vector bytes) in batches, by item id, without loading all at once."""
        last = 0
        wanted = None if only is None else sorted(only)
        with self.Session() as s:
            if wanted is not None:
                for chunk in _chunks(wanted, batch):
                    stmt = select(Embedding.item_id, Embedding.vector).where(
                        Embedding.space == space,
                        Embedding.model_id == model_id,
                        Embedding.item_id.in_(chunk),
                    )
                    yield [(i, v) for i, v in s.execute(stmt)]
                return
            while True:
                stmt = (
                    select(Embedding.item_id, Embedding.vector)
                    .where(Embedding.space == space, Embedding.model_id == model_id)
                    .where(Embedding.item_id > last)
                    .order_by(Embedding.item_id)
                    .limit(batch)
                )
                rows = [(i, v) for i, v in s.execute(stmt)]
                if not rows:
                    return
                yield rows
                last = rows[-1][0]

    # ---- writes ------------------------------------------------------------------
    def add_items(self, items: Sequence[NewItem], stage: str) -> dict[str, int]:
        """Store new items with their first path, embedding and a done stage row.

        Content already present (a race, or a duplicate inside the batch) only gains
        the path. Returns sha256 -> item id.
        """
        ids: dict[str, int] = {}
        undated: dict[str, bool] = {}  # the item has no capture time (see FilePath)
        with self.Session.begin() as s:
            for new in items:
                item_id = ids.get(new.sha256)
                if item_id is None:
                    # One statement, race-free: another process storing the same content
                    # at the same moment makes one item, and both get its id.
                    # (No RETURNING: SQLite has it only from 3.35.)
                    s.execute(
                        insert_for(s, Item).values(
                            sha256=new.sha256, kind=new.kind, format=new.format,
                            width=new.width, height=new.height, size_bytes=new.size_bytes,
                            **new.meta,
                        ).on_conflict_do_nothing(index_elements=["sha256"])
                    )  # fmt: skip
                    # Held FOR SHARE to the commit: a worker pruning this item as an
                    # orphan (it locks FOR UPDATE, then looks for paths again) waits and
                    # then sees the path this adds; or it went first, and the insert
                    # above, having waited for it, made the item anew.
                    row = s.execute(select(Item.id, Item.taken_at.is_(None))
                                    .where(Item.sha256 == new.sha256)
                                    .with_for_update(read=True)).first()  # fmt: skip
                    assert row is not None
                    item_id, undated[new.sha256] = row
                if new.sha256 not in ids and new.vector:  # audio: embedded by a stage
                    self._put_embedding(s, item_id, new, stage)
                ids[new.sha256] = item_id
                self._detach(self._set_path(s, new.path, item_id, new.size_bytes,
                                            new.mtime_ns, undated[new.sha256]))  # fmt: skip
        self.stages.note_items(ids.values())
        return ids

    @staticmethod
    def _put_embedding(s: Session, item_id: int, new: NewItem, stage: str) -> None:
        """Insert or replace the item's vector in this space, with its stage row."""
        now = utcnow()
        s.execute(
            insert_for(s, Embedding).values(
                item_id=item_id, space=new.space, model_id=new.model_id, dim=new.dim,
                vector=new.vector, created_at=now,
            ).on_conflict_do_update(
                index_elements=["item_id", "space", "model_id"],
                set_={"dim": new.dim, "vector": new.vector, "created_at": now},
            )
        )  # fmt: skip
        s.execute(
            insert_for(s, StageStatus).values(
                item_id=item_id, stage=stage, status=StageState.done, attempts=1,
                model_id=new.model_id, updated_at=now,
            ).on_conflict_do_update(
                index_elements=["item_id", "stage"],
                set_={"status": StageState.done, "model_id": new.model_id, "error": None,
                      "attempts": StageStatus.attempts + 1, "updated_at": now},
            )
        )  # fmt: skip

    def set_paths(self, rows: Sequence[tuple[str, int, int, int]]) -> list[str]:
        """(path, item_id, size, mtime_ns): point paths at existing items. Returns the
        paths not pointed, because their item was deleted meanwhile (another worker
        pruned it as an orphan before this committed): index those files again."""
        gone: list[str] = []
        with self.Session.begin() as s:
            for path, item_id, size, mtime in rows:
                # FOR SHARE: see add_items. None: it went before we could hold it.
                held = s.execute(select(Item.taken_at.is_(None)).where(Item.id == item_id)
                                 .with_for_update(read=True)).first()  # fmt: skip
                if held is None:
                    gone.append(path)
                    continue
                self._detach(self._set_path(s, path, item_id, size, mtime, bool(held[0])))
        return gone

    def _detach(self, item_id: int | None) -> None:
        if item_id is not None:
            with self._detached_lock:
                self._detached.add(item_id)

    @staticmethod
    def _set_path(
        s: Session, path: str, item_id: int, size: int, mtime_ns: int, undated: bool
    ) -> int | None:
        """Point path at item_id (undated: it has no capture time); the item it pointed
        at before, if that was another."""
        before = s.scalar(select(FilePath.item_id).where(FilePath.path == path))
        now = {"item_id": item_id, "size": size, "mtime_ns": mtime_ns, "undated": undated}
        s.execute(
            insert_for(s, FilePath).values(path=path, **now)
            .on_conflict_do_update(index_elements=["path"], set_=now)
        )  # fmt: skip
        s.execute(delete(FileFailure).where(FileFailure.path == path))
        return before if before is not None and before != item_id else None

    def remove_paths(self, paths: Sequence[str]) -> list[int]:
        """Forget paths; delete items left with no path. Returns the deleted item ids."""
        with self.Session.begin() as s:
            touched: set[int] = set()
            for chunk in _chunks(list(paths)):
                touched.update(s.scalars(select(FilePath.item_id).where(FilePath.path.in_(chunk))))
                s.execute(delete(FilePath).where(FilePath.path.in_(chunk)))
                s.execute(delete(FileFailure).where(FileFailure.path.in_(chunk)))
            return self._delete_orphans(s, touched)

    @staticmethod
    def _delete_orphans(s: Session, candidates: set[int]) -> list[int]:
        if not candidates:
            return []
        # Lock the candidates first (FOR UPDATE; in id order), then look for their paths
        # in a new statement, which on PostgreSQL sees what committed while we waited: a
        # worker attaching a path to one of them holds it FOR SHARE until its commit
        # (add_items, set_paths), so an item never goes while a path to it is added.
        locked: list[int] = []
        for chunk in _chunks(sorted(candidates)):
            locked += s.scalars(select(Item.id).where(Item.id.in_(chunk)).order_by(Item.id)
                                .with_for_update())  # fmt: skip
        still: set[int] = set()
        for chunk in _chunks(locked):
            still |= set(s.scalars(select(FilePath.item_id).where(FilePath.item_id.in_(chunk))))
        orphans = sorted(set(locked) - still)
        for chunk in _chunks(orphans):
            # Explicit deletes rather than relying on ON DELETE CASCADE alone, so a
            # backend with foreign keys off still ends consistent.
            for table in (Embedding, StageStatus, DetectionRow, SegmentRow, LabelRow):
                s.execute(delete(table).where(table.item_id.in_(chunk)))
            s.execute(delete(Item).where(Item.id.in_(chunk)))
        return orphans

    def prune_orphans(self, everywhere: bool = False) -> list[int]:
        """Delete items that lost all their paths (a path re-pointed to new content).
        By default only the items this catalog object detached since the last call
        (O(batch)); everywhere=True also sweeps the whole catalog (a full scan does, so
        candidates lost to a crash between a batch and its prune are caught there)."""
        with self._detached_lock:
            candidates, self._detached = self._detached, set()
        with self.Session.begin() as s:
            if everywhere:
                with_path = select(FilePath.item_id)
                candidates |= set(s.scalars(select(Item.id).where(Item.id.not_in(with_path))))
            return self._delete_orphans(s, candidates)

    def record_failures(self, rows: Sequence[tuple[str, str]]) -> None:
        with self.Session.begin() as s:
            now = utcnow()
            for path, reason in rows:  # one statement each: workers may record at once
                s.execute(
                    insert_for(s, FileFailure).values(path=path, reason=reason, attempts=1,
                                                      updated_at=now)
                    .on_conflict_do_update(index_elements=["path"], set_={
                        "reason": reason, "attempts": FileFailure.attempts + 1,
                        "updated_at": now})
                )  # fmt: skip
            # A file that now fails no longer holds the content its old path row named;
            # the item it leaves without a path goes at the next prune.
            for chunk in _chunks([p for p, _ in rows]):
                for item_id in s.scalars(select(FilePath.item_id).where(FilePath.path.in_(chunk))):
                    self._detach(item_id)
                s.execute(delete(FilePath).where(FilePath.path.in_(chunk)))

    def forget_failures_under(self, roots: Iterable[str], keep: set[str]) -> None:
        """Drop failure rows under roots whose file is gone (not in keep)."""
        with self.Session.begin() as s:
            for root in roots:
                stmt = select(FileFailure.path).where(at_or_under(FileFailure.path, root))
                gone = [p for p in s.scalars(stmt) if p not in keep]
                for chunk in _chunks(gone):
                    s.execute(delete(FileFailure).where(FileFailure.path.in_(chunk)))

    # ---- reporting ---------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.Session() as s:
            kinds: dict[str, int] = {
                k: n for k, n in s.execute(select(Item.kind, func.count()).group_by(Item.kind))
            }
            # Grouped in the order of the covering index ix_stage_status_progress
            # (stage, model, status, ...): read straight through, no sort of every row.
            by = (StageStatus.stage, StageStatus.model_id, StageStatus.status)
            stages: dict[str, dict[str, int]] = {}
            for stage, _model, status, n in s.execute(select(*by, func.count()).group_by(*by)):
                counts = stages.setdefault(stage, {})
                key = StageState(status).value
                counts[key] = counts.get(key, 0) + n
            failures = [
                {"path": p, "reason": r, "attempts": a, "updated_at": _iso(t and _utc(t))}
                for p, r, a, t in s.execute(
                    select(
                        FileFailure.path,
                        FileFailure.reason,
                        FileFailure.attempts,
                        FileFailure.updated_at,
                    ).order_by(FileFailure.path)
                )
            ]
            stage_failures = [
                {"item_id": i, "stage": st, "error": e}
                for i, st, e in s.execute(
                    select(StageStatus.item_id, StageStatus.stage, StageStatus.error).where(
                        StageStatus.status == StageState.failed
                    )
                )
            ]
            # Counted from the covering index (space, model, item); the dimension, which
            # a model fixes, from one row each (grouping by it read every vector's row).
            models = [
                {"space": sp, "model_id": m, "dim": s.scalar(
                    select(Embedding.dim).where(Embedding.space == sp,
                                                Embedding.model_id == m).limit(1)),
                 "count": n}
                for sp, m, n in s.execute(
                    select(Embedding.space, Embedding.model_id, func.count())
                    .group_by(Embedding.space, Embedding.model_id)
                ).all()
            ]  # fmt: skip
            n_paths = s.scalar(select(func.count()).select_from(FilePath)) or 0
        return {
            "items": {"total": sum(kinds.values()), "by_kind": kinds},
            "paths": n_paths,
            "stages": stages,
            "failures": failures + stage_failures,
            "models": models,
        }


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None
