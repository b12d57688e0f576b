"""Per (item, stage) bookkeeping and the results enrichment stages store.

A stage's work for an item is *done* when a status row says done with the stage's
current model id. Anything else (no row, another model's row, failed with attempts left)
is pending. So enabling a stage backfills every item, changing its model re-queues
exactly its work, and a failure is retried until ``max_attempts``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

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


class StageBook:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.Session = session_factory

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
        (space, model id), only items that have that embedding."""
        with self.Session() as s:
            stmt = (
                select(Item.id)
                .where(Item.kind.in_(list(kinds)), Item.id > after)
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
            return list(s.scalars(stmt))

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
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def progress(
        self, stage: str, model_id: str, kinds: Iterable[str], max_attempts: int
    ) -> dict[str, int]:
        """done / failed (given up) / retrying / pending counts for the current model."""
        kinds = list(kinds)
        with self.Session() as s:
            total = s.scalar(select(func.count()).where(Item.kind.in_(kinds))) or 0
            # Grouped by plain columns and folded here: an expression in both SELECT and
            # GROUP BY binds its parameter twice, which PostgreSQL refuses.
            rows = s.execute(
                select(StageStatus.status, StageStatus.attempts, func.count())
                .join(Item, Item.id == StageStatus.item_id)
                .where(StageStatus.stage == stage, StageStatus.model_id == model_id)
                .where(Item.kind.in_(kinds))
                .group_by(StageStatus.status, StageStatus.attempts)
            )
            done = failed = retrying = 0
            for status, attempts, n in rows:
                if StageState(status) == StageState.done:
                    done += n
                elif attempts >= max_attempts:
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
    ) -> None:
        """Store one batch of a stage in one transaction: results replace what this stage
        stored for those items before; statuses say done or failed (attempts counted)."""
        with self.Session.begin() as s:
            ids = [*outputs, *failures]
            alive = set(s.scalars(select(Item.id).where(Item.id.in_(ids))))  # deleted meanwhile
            for table in (DetectionRow, SegmentRow, LabelRow):
                s.execute(
                    delete(table).where(table.item_id.in_(list(outputs)), table.stage == stage)
                )
            for item_id, out in outputs.items():
                if item_id not in alive:
                    continue
                s.add_all(_rows(item_id, stage, model_id, out))
                for vec_model, vector in out.vectors.items():
                    assert out.space, "an output with vectors names its space"
                    self._put_vector(s, item_id, out.space, vec_model, vector)
                self._status(s, item_id, stage, model_id, None)
            for item_id, error in failures.items():
                if item_id in alive:
                    self._status(s, item_id, stage, model_id, error)

    @staticmethod
    def _put_vector(s: Session, item_id: int, space: str, model_id: str, vector: bytes) -> None:
        emb = s.scalar(
            select(Embedding).where(
                Embedding.item_id == item_id, Embedding.space == space,
                Embedding.model_id == model_id,
            )
        )  # fmt: skip
        if emb is None:
            s.add(Embedding(item_id=item_id, space=space, model_id=model_id,
                            dim=len(vector) // 4, vector=vector))  # fmt: skip
        else:
            emb.vector, emb.dim, emb.created_at = vector, len(vector) // 4, utcnow()

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
