"""Per (item, stage) bookkeeping and the results enrichment stages store.

A stage's work for an item is *done* when a status row says done with the stage's
current model id. Anything else (no row, another model's row, failed with attempts left)
is pending. So enabling a stage backfills every item, changing its model re-queues
exactly its work, and a failure is retried until ``max_attempts``.

Nothing here may cost what the catalog holds on every call: a watcher asks what is
pending whenever it is idle, so once a look found nothing pending up to the highest
item id, later looks start above it (see :meth:`StageBook.pending`); counts are read
from covering indexes (migration 0007).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from catalog.db import insert_for
from catalog.models import (
    DetectionRow,
    Embedding,
    Item,
    LabelRow,
    SegmentRow,
    StageState,
    StageStatus,
    utcnow,
)
from catalog.results import StageOutput


def _settled(stage: str, model_id: str, max_attempts: int) -> Any:
    """SQL: this item needs no more work from stage with this model."""
    return exists().where(
        StageStatus.item_id == Item.id,
        StageStatus.stage == stage,
        StageStatus.model_id == model_id,
        or_(
            StageStatus.status == StageState.done,
            and_(StageStatus.status == StageState.failed, StageStatus.attempts >= max_attempts),
        ),
    )


_Question = tuple[str, str, tuple[str, ...], int, tuple[str, str] | None]


def _claim_key(stage: str, item_id: int) -> int:
    """A 64-bit advisory-lock key for (stage, item)."""
    digest = hashlib.blake2b(f"everlook-stage:{stage}:{item_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def item_kinds(s: Session) -> list[str]:
    """The item kinds present, skipping through the kind index: a few seeks, where
    SELECT DISTINCT would read an entry per item."""
    kinds: list[str] = []
    kind = s.scalar(select(func.min(Item.kind)))
    while kind is not None:
        kinds.append(kind)
        kind = s.scalar(select(func.min(Item.kind)).where(Item.kind > kind))
    return kinds


class StageBook:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.Session = session_factory
        # Per question asked of pending(): every item with an id up to this was found
        # settled by a look that came up empty, and nothing written through this book
        # since can have unsettled one. Writes that can (a failure with attempts left,
        # retry_failed, content stored for an existing item or under a reused id) lower
        # or drop it; see note_items. Another process's writes are not seen: the writer
        # lock keeps one writer per catalog, and items another worker adds get higher
        # ids. Lost with the process: a new one looks through everything once.
        self._settled_to: dict[_Question, int] = {}
        self._generation = 0
        self._memo_lock = threading.Lock()
        self._claims: Any = None  # a connection of its own holding work claims (PostgreSQL)
        self._claims_lock = threading.Lock()

    # ---- claims: workers share a stage's pending work ----------------------------------
    def claim(self, stage: str, item_ids: Sequence[int]) -> list[int]:
        """Those of item_ids this process may work for stage now. On PostgreSQL, each
        (stage, item) is a session advisory lock tried on a connection of this book's
        own: items another worker holds are left to it, and a worker that dies lets go
        with its connection (no lease to wait out). On SQLite, all (one machine, and the
        results are written once whoever ran them: see save)."""
        engine = self.Session.kw["bind"]
        if engine.dialect.name != "postgresql":
            return list(item_ids)
        with self._claims_lock:
            if self._claims is None:
                self._claims = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try_lock = text("SELECT pg_try_advisory_lock(:k)")
            held = self._claims
            return [i for i in item_ids
                    if held.execute(try_lock, {"k": _claim_key(stage, i)}).scalar()]  # fmt: skip

    def unclaim(self, stage: str, item_ids: Sequence[int]) -> None:
        if self._claims is None or not item_ids:
            return
        with self._claims_lock:
            unlock = text("SELECT pg_advisory_unlock(:k)")
            for i in item_ids:
                self._claims.execute(unlock, {"k": _claim_key(stage, i)})

    def note_items(self, item_ids: Iterable[int], space: str | None = None) -> None:
        """Content was stored for these items (new items, or, with space, that space's
        vectors): stages may have work for them, even under an id a look already found
        settled (SQLite gives a new row the id of a deleted newest one)."""
        low = min(item_ids, default=None)
        if low is None:
            return
        with self._memo_lock:
            self._generation += 1
            for q, top in self._settled_to.items():
                wants = space is None or (q[4] is not None and q[4][0] == space)
                if wants and top >= low:
                    self._settled_to[q] = low - 1

    def _forget(self, stage: str) -> None:
        with self._memo_lock:
            self._generation += 1
            for q in [q for q in self._settled_to if q[0] == stage]:
                del self._settled_to[q]

    # ---- what is left to do -----------------------------------------------------------
    def pending(
        self,
        stage: str,
        model_id: str,
        kinds: Iterable[str],
        max_attempts: int,
        limit: int,
        after: int = 0,
        embedded: tuple[str, str] | None = None,
    ) -> list[int]:
        """Item ids (ascending, > after) this stage still has to do; with ``embedded``
        (space, model id), only items that have that embedding.

        Looks only above the mark earlier looks left: the id before the first pending
        item they found, or the highest id when they found none (O(new items) once
        caught up, where each look would otherwise probe every item)."""
        kinds = sorted(set(kinds))
        question: _Question = (stage, model_id, tuple(kinds), max_attempts, embedded)
        with self._memo_lock:
            settled_to, generation = self._settled_to.get(question, 0), self._generation
        with self.Session() as s:
            # Read before the look: an item stored meanwhile has a higher id, so it is
            # either seen by the look or above the mark set from this.
            top = s.scalar(select(func.max(Item.id))) or 0
            stmt = (
                select(Item.id)
                .where(Item.kind.in_(kinds), Item.id > max(after, settled_to))
                .where(not_(_settled(stage, model_id, max_attempts)))
                .order_by(Item.id)
                .limit(limit)
            )
            if embedded is not None:
                stmt = stmt.where(
                    exists().where(
                        Embedding.item_id == Item.id, Embedding.space == embedded[0],
                        Embedding.model_id == embedded[1],
                    )
                )  # fmt: skip
            ids = list(s.scalars(stmt))
        if after <= settled_to:  # the look started at the mark: all before its first find
            mark = ids[0] - 1 if ids else top  # is settled (everything, when it found none)
            with self._memo_lock:
                if generation == self._generation and mark > settled_to:
                    self._settled_to[question] = mark
        return ids

    def settled(
        self, stage: str, model_id: str, item_ids: Sequence[int], max_attempts: int
    ) -> set[int]:
        """Which of these items need no more work from this stage and model."""
        if not item_ids:
            return set()
        with self.Session() as s:
            stmt = select(Item.id).where(
                Item.id.in_(list(item_ids)), _settled(stage, model_id, max_attempts)
            )
            return set(s.scalars(stmt))

    def retry_failed(self, stage: str) -> int:
        """Give items that failed this stage for good their attempts back (after the
        cause is mended: a file readable again, a model fixed)."""
        with self.Session.begin() as s:
            res = s.execute(
                update(StageStatus)
                .where(StageStatus.stage == stage, StageStatus.status == StageState.failed)
                .values(attempts=0)
            )
            n = int(res.rowcount or 0)  # type: ignore[attr-defined]
        self._forget(stage)
        return n

    def progress(
        self, stage: str, model_id: str, kinds: Iterable[str], max_attempts: int
    ) -> dict[str, int]:
        """done / failed (given up) / retrying / pending counts for the current model.

        Counted from covering indexes (items by kind; the stage's rows by stage, model,
        status and attempts), without joining each row to its item: a stage's rows are
        of items of its kinds, except where the catalog holds other kinds too, and
        those rows are counted apart and taken off (a join over their items only)."""
        kinds = list(kinds)
        with self.Session() as s:
            total = s.scalar(select(func.count()).where(Item.kind.in_(kinds))) or 0
            mine = (StageStatus.stage == stage, StageStatus.model_id == model_id)
            # Grouped by plain columns and folded here: an expression in both SELECT and
            # GROUP BY binds its parameter twice, which PostgreSQL refuses.
            counts: dict[tuple[Any, int], int] = {}
            by = (StageStatus.status, StageStatus.attempts)
            for status, attempts, n in s.execute(
                select(*by, func.count()).where(*mine).group_by(*by)
            ):
                counts[(status, attempts)] = counts.get((status, attempts), 0) + n
            others = [k for k in item_kinds(s) if k not in kinds]
            if others:
                # Driven from the items of those kinds (their index), each probing its
                # own rows: `|| ''` keeps the planner from walking every row of the
                # stage through ix_stage_status_progress instead (portable: PostgreSQL
                # concatenates text the same way).
                unindexed = (StageStatus.stage.concat("") == stage,
                             StageStatus.model_id.concat("") == model_id)  # fmt: skip
                for status, attempts, n in s.execute(
                    select(*by, func.count())
                    .join(Item, Item.id == StageStatus.item_id)
                    .where(*unindexed, Item.kind.in_(others))
                    .group_by(*by)
                ):
                    counts[(status, attempts)] -= n
            done = failed = retrying = 0
            for (state, tries), n in counts.items():
                if StageState(state) == StageState.done:
                    done += n
                elif tries >= max_attempts:
                    failed += n
                else:
                    retrying += n
        return {
            "done": done,
            "failed": failed,
            "retrying": retrying,
            "pending": total - done - failed,
            "total": total,
        }

    # ---- results ----------------------------------------------------------------------
    def save(
        self,
        stage: str,
        model_id: str,
        outputs: Mapping[int, StageOutput],
        failures: Mapping[int, str],
    ) -> set[int]:
        """Store one batch of a stage in one transaction: results replace what this stage
        stored for those items before; statuses say done or failed (attempts counted).
        Returns the items whose outputs were written (not those deleted meanwhile, nor
        those another worker had stored first): only they go on to the vector indexes.

        Written at most once when several workers ran the same stage on an item: the
        items' status rows are created if missing (ON CONFLICT DO NOTHING) and locked
        first (FOR UPDATE on PostgreSQL; SQLite has one writer), so a second writer waits
        for the first to commit, then finds the item done with this model and leaves it."""
        with self.Session.begin() as s:
            ids = [*outputs, *failures]
            alive = set(s.scalars(select(Item.id).where(Item.id.in_(ids))))  # deleted meanwhile
            now = utcnow()
            if alive:
                s.execute(
                    insert_for(s, StageStatus).values([
                        {"item_id": i, "stage": stage, "status": StageState.pending,
                         "attempts": 0, "model_id": model_id, "updated_at": now}
                        for i in sorted(alive)
                    ]).on_conflict_do_nothing(index_elements=["item_id", "stage"])
                )  # fmt: skip
                held = s.execute(
                    select(StageStatus.item_id, StageStatus.status, StageStatus.model_id)
                    .where(StageStatus.item_id.in_(sorted(alive)), StageStatus.stage == stage)
                    .order_by(StageStatus.item_id).with_for_update()
                )  # fmt: skip
                done = {i for i, st, m in held if st == StageState.done and m == model_id}
                alive -= done  # another worker stored these first: theirs stand
            written = [i for i in outputs if i in alive]
            for table in (DetectionRow, SegmentRow, LabelRow):
                s.execute(delete(table).where(table.item_id.in_(written), table.stage == stage))
            for item_id in written:
                out = outputs[item_id]
                s.add_all(_rows(item_id, stage, model_id, out))
                for vec_model, vector in out.vectors.items():
                    assert out.space, "an output with vectors names its space"
                    self._put_vector(s, item_id, out.space, vec_model, vector)
                self._status(s, item_id, stage, model_id, None)
            for item_id, error in failures.items():
                if item_id in alive:
                    self._status(s, item_id, stage, model_id, error)
        if failures:  # retried while attempts are left: pending again, under the mark
            self._forget(stage)
        for space in {out.space for out in outputs.values() if out.vectors}:
            # Stages that take items having this space's vectors may take these now.
            self.note_items([i for i, o in outputs.items() if o.vectors and o.space == space],
                            space)  # fmt: skip
        return set(written)

    @staticmethod
    def _put_vector(s: Session, item_id: int, space: str, model_id: str, vector: bytes) -> None:
        now = utcnow()
        s.execute(
            insert_for(s, Embedding).values(item_id=item_id, space=space, model_id=model_id,
                                            dim=len(vector) // 4, vector=vector, created_at=now)
            .on_conflict_do_update(index_elements=["item_id", "space", "model_id"],
                                   set_={"vector": vector, "dim": len(vector) // 4,
                                         "created_at": now})
        )  # fmt: skip

    @staticmethod
    def _status(s: Session, item_id: int, stage: str, model_id: str, error: str | None) -> None:
        st = s.get(StageStatus, (item_id, stage))
        if st is None:
            st = StageStatus(item_id=item_id, stage=stage, attempts=0, model_id=model_id)
            s.add(st)
        if st.model_id != model_id:  # a new model starts with a clean slate of attempts
            st.model_id, st.attempts = model_id, 0
        st.attempts = (st.attempts or 0) + 1
        st.status = StageState.failed if error else StageState.done
        st.error = error

    # ---- reading results ----------------------------------------------------------------
    def enrichment(self, item_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Detections, segments, tags and labels of items, for display."""
        out: dict[int, dict[str, Any]] = {
            i: {"detections": [], "segments": [], "tags": [], "labels": {}} for i in item_ids
        }
        if not item_ids:
            return out
        ids = list(item_ids)
        with self.Session() as s:
            for d in s.scalars(
                select(DetectionRow)
                .where(DetectionRow.item_id.in_(ids))
                .order_by(DetectionRow.confidence.desc())
            ):
                out[d.item_id]["detections"].append(
                    {"label": d.label, "confidence": round(d.confidence, 4),
                     "box": [round(v, 4) for v in (d.x0, d.y0, d.x1, d.y1)],
                     "model_id": d.model_id}
                )  # fmt: skip
            for g in s.scalars(
                select(SegmentRow)
                .where(SegmentRow.item_id.in_(ids))
                .order_by(SegmentRow.area.desc())
            ):
                out[g.item_id]["segments"].append(
                    {"label": g.label, "thing": g.is_thing, "area": round(g.area, 4),
                     "score": round(g.score, 4), "model_id": g.model_id}
                )  # fmt: skip
            for lb in s.scalars(
                select(LabelRow).where(LabelRow.item_id.in_(ids)).order_by(LabelRow.rank)
            ):
                out[lb.item_id]["labels"].setdefault(lb.kind, []).append(
                    {"label": lb.label, "score": round(lb.score, 4), "model_id": lb.model_id}
                )
        for detail in out.values():
            detail["tags"] = sorted({g["label"] for g in detail["segments"]})
        return out

    def statuses(self, item_id: int) -> list[dict[str, Any]]:
        with self.Session() as s:
            return [
                {"stage": st.stage, "status": StageState(st.status).value,
                 "attempts": st.attempts, "model_id": st.model_id, "error": st.error}
                for st in s.scalars(
                    select(StageStatus).where(StageStatus.item_id == item_id)
                    .order_by(StageStatus.stage)
                )
            ]  # fmt: skip


def _rows(item_id: int, stage: str, model_id: str, out: StageOutput) -> list[Any]:
    common = {"item_id": item_id, "stage": stage, "model_id": model_id}
    rows: list[Any] = []
    for d in out.detections:
        x0, y0, x1, y1 = (min(1.0, max(0.0, float(v))) for v in d.box)
        rows.append(DetectionRow(**common, label=d.label, confidence=float(d.confidence),
                                 x0=x0, y0=y0, x1=x1, y1=y1))  # fmt: skip
    for g in out.segments:
        rows.append(SegmentRow(**common, label=g.label, is_thing=bool(g.is_thing),
                               area=float(g.area), score=float(g.score)))  # fmt: skip
    ranks: dict[str, int] = {}
    for lb in out.labels:
        ranks[lb.kind] = ranks.get(lb.kind, 0) + 1
        rows.append(LabelRow(**common, kind=lb.kind, label=lb.label, score=float(lb.score),
                             rank=ranks[lb.kind]))  # fmt: skip
    return rows
