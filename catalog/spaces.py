"""Embedding spaces in the catalog: which model answers each space's queries, how far a
model has come, and pruning what is no longer wanted.

A space (``clip``, ``imagebind``) holds one vector per (item, model). Its *active* model
answers queries; a model configured later backfills beside it and takes over only when
switched to explicitly, so search never degrades while a new model catches up.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from catalog.models import Embedding, Item, SpaceRow, StageStatus, utcnow


@dataclass(frozen=True)
class ActiveModel:
    model_id: str
    args: dict[str, Any]  # the embedder's constructor arguments (JSON), to build it again


def embed_stages(space: str) -> list[str]:
    """The stage names a space's vectors come from: its active model's, a new model's."""
    return [f"embed/{space}", f"embed/{space}:next"]


class SpaceBook:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.Session = session_factory

    def active(self, space: str) -> ActiveModel | None:
        with self.Session() as s:
            row = s.get(SpaceRow, space)
            if row is None:
                return None
            return ActiveModel(row.active_model_id, json.loads(row.active_args))

    def set_active(self, space: str, model_id: str, args: Mapping[str, Any]) -> None:
        """Make model_id the space's active model. Its backfill stage's rows go: that
        model is no longer backfilling, and its vectors stay."""
        with self.Session.begin() as s:
            s.execute(delete(StageStatus).where(StageStatus.stage == f"embed/{space}:next"))
            row = s.get(SpaceRow, space)
            if row is None:
                row = SpaceRow(name=space)
                s.add(row)
            row.active_model_id, row.active_args = model_id, json.dumps(dict(args), sort_keys=True)
            row.updated_at = utcnow()

    def activate_if_new(self, space: str, model_id: str, args: Mapping[str, Any]) -> ActiveModel:
        """The space's active model; the given one becomes it when the space is new."""
        got = self.active(space)
        if got is not None:
            return got
        try:
            with self.Session.begin() as s:
                s.add(SpaceRow(name=space, active_model_id=model_id,
                               active_args=json.dumps(dict(args), sort_keys=True)))  # fmt: skip
        except IntegrityError:
            pass  # another process (a replica, a CLI) started at the same moment: its row
        got = self.active(space)
        assert got is not None
        return got

    def coverage(self, space: str, model_id: str, kinds: Iterable[str]) -> tuple[int, int]:
        """(items of these kinds with this model's vector, items of these kinds)."""
        kinds = list(kinds)
        with self.Session() as s:
            total = s.scalar(select(func.count()).where(Item.kind.in_(kinds))) or 0
            have = s.scalar(
                select(func.count())
                .select_from(Embedding)
                .join(Item, Item.id == Embedding.item_id)
                .where(Embedding.space == space, Embedding.model_id == model_id)
                .where(Item.kind.in_(kinds))
            ) or 0  # fmt: skip
        return int(have), int(total)

    def have(self, space: str, model_id: str, item_ids: Sequence[int]) -> set[int]:
        """Which of these items have this model's vector."""
        if not item_ids:
            return set()
        with self.Session() as s:
            return set(s.scalars(
                select(Embedding.item_id).where(
                    Embedding.space == space, Embedding.model_id == model_id,
                    Embedding.item_id.in_(list(item_ids)),
                )
            ))  # fmt: skip

    def models(self) -> list[tuple[str, str, int]]:
        """(space, model id, vectors) for every model with stored vectors."""
        with self.Session() as s:
            rows = s.execute(
                select(Embedding.space, Embedding.model_id, func.count())
                .group_by(Embedding.space, Embedding.model_id)
                .order_by(Embedding.space, Embedding.model_id)
            )
            return [(sp, m, int(n)) for sp, m, n in rows]

    def prune(self, keep: Mapping[str, Iterable[str]]) -> dict[str, int]:
        """Delete vectors of spaces not in keep, and of models keep does not name for
        their space, with their embed stage rows. Returns "space/model" -> rows deleted."""
        keep = {sp: set(models) for sp, models in keep.items()}
        gone: dict[str, int] = {}
        with self.Session.begin() as s:
            for space, model_id, _ in self._models(s):
                if model_id in keep.get(space, set()):
                    continue
                n = s.execute(
                    delete(Embedding).where(
                        Embedding.space == space, Embedding.model_id == model_id
                    )
                ).rowcount  # type: ignore[attr-defined]
                s.execute(
                    delete(StageStatus).where(
                        StageStatus.stage.in_(embed_stages(space)),
                        StageStatus.model_id == model_id,
                    )
                )
                gone[f"{space}/{model_id}"] = int(n or 0)
            dropped = [sp for sp in self._spaces(s) if sp not in keep]
            if dropped:
                s.execute(delete(SpaceRow).where(SpaceRow.name.in_(dropped)))
                s.execute(
                    delete(StageStatus).where(
                        StageStatus.stage.in_([n for sp in dropped for n in embed_stages(sp)])
                    )
                )
        return gone

    @staticmethod
    def _models(s: Session) -> list[tuple[str, str, int]]:
        rows = s.execute(
            select(Embedding.space, Embedding.model_id, func.count()).group_by(
                Embedding.space, Embedding.model_id
            )
        )
        return [(sp, m, int(n)) for sp, m, n in rows]

    @staticmethod
    def _spaces(s: Session) -> list[str]:
        return list(s.scalars(select(SpaceRow.name)))


__all__ = ["ActiveModel", "SpaceBook"]
