"""Style-transfer jobs kept in the catalog: create (with a queue cap), claim under a
lease, progress (which renews the lease and says whether to stop), finish, fail,
cancel, and which items are results added back to the library.

Claiming is race-free on every backend: a worker picks a candidate (``FOR UPDATE SKIP
LOCKED`` where the database has it) and takes it with a conditional UPDATE that only one
worker can win. A worker that dies stops renewing its lease; the job is then claimable
again (attempts + 1) or failed once it has used its attempts.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session

from catalog.db import make_sessionmaker
from catalog.models import Item, JobState, StyleJob

ACTIVE = (JobState.queued, JobState.running)
FINISHED = (JobState.done, JobState.failed, JobState.cancelled)


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(
            f"{waiting} style jobs are already waiting; try again in about {retry_after} s"
        )
        self.retry_after = retry_after


class JobStateError(Exception):
    """The job is not in a state that allows this (cancel a finished job...)."""


def new_owner() -> str:
    """host:pid:nonce. The pid lets a worker on the same host see that an owner's process
    is gone; the nonce tells two lives of one pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def as_dict(job: StyleJob, derived_item_id: int | None = None) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        if t is None:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()

    return {
        "id": job.id, "state": str(job.state), "item_id": job.item_id,
        "item_sha256": job.item_sha256,
        "style": {"kind": job.style_kind, "item_id": job.style_item_id,
                  "artist": job.style_artist, "sha256": job.style_sha256,
                  "file": job.style_file},
        "settings": json.loads(job.settings), "model_id": job.model_id,
        "step": job.step, "total": job.total, "preview_step": job.preview_step,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "error": job.error,
        "cancel_requested": job.cancel_requested, "add_to_library": job.add_to_library,
        "result_file": job.result_file, "result_sha256": job.result_sha256,
        "derived_item_id": derived_item_id, "owner": job.owner,
        "lease_until": job.lease_until,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "seconds": job.seconds,
    }  # fmt: skip


class StyleQueue:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.Session = make_sessionmaker(engine)

    # ---- reading ----------------------------------------------------------------------
    def _rows(self, s: Session, query: Any) -> list[dict[str, Any]]:
        derived = select(Item.id).where(Item.sha256 == StyleJob.result_sha256).scalar_subquery()
        out = []
        for job, item_id in s.execute(query.add_columns(derived)):
            out.append(as_dict(job, item_id if job.add_to_library else None))
        return out

    def get(self, job_id: int) -> dict[str, Any] | None:
        with self.Session() as s:
            rows = self._rows(s, select(StyleJob).where(StyleJob.id == job_id))
            return rows[0] if rows else None

    def list(
        self, states: Sequence[str] = (), limit: int = 50, item_id: int | None = None
    ) -> list[dict[str, Any]]:
        q = select(StyleJob).order_by(StyleJob.id.desc()).limit(limit)
        if states:
            q = q.where(StyleJob.state.in_([JobState(x) for x in states]))
        if item_id is not None:
            q = q.where(StyleJob.item_id == item_id)
        with self.Session() as s:
            return self._rows(s, q)

    def counts(self) -> dict[str, int]:
        with self.Session() as s:
            rows = s.execute(select(StyleJob.state, func.count()).group_by(StyleJob.state))
            return {str(JobState(st)): int(n) for st, n in rows}

    def typical_seconds(self, default: float = 60.0) -> float:
        """The median running time of the last finished jobs (how soon a slot frees)."""
        with self.Session() as s:
            got = s.scalars(
                select(StyleJob.seconds)
                .where(StyleJob.state == JobState.done, StyleJob.seconds.is_not(None))
                .order_by(StyleJob.id.desc()).limit(9)
            )  # fmt: skip
            xs = sorted(float(x) for x in got if x is not None)
        return xs[len(xs) // 2] if xs else default

    def derived_items(self, item_ids: Sequence[int]) -> dict[int, int]:
        """item id -> the job it is the result of, for those of item_ids that are."""
        if not item_ids:
            return {}
        with self.Session() as s:
            rows = s.execute(
                select(Item.id, func.min(StyleJob.id))
                .join(StyleJob, StyleJob.result_sha256 == Item.sha256)
                .where(Item.id.in_(list(item_ids)), StyleJob.add_to_library.is_(True))
                .group_by(Item.id)
            )
            return {int(i): int(j) for i, j in rows}

    # ---- creating -----------------------------------------------------------------------
    def create(
        self, *, item_id: int, style_kind: str, settings: dict[str, Any], total: int,
        style_item_id: int | None = None, style_artist: str | None = None,
        style_file: str | None = None, style_sha256: str | None = None,
        add_to_library: bool = False, max_attempts: int = 3,
        queue_max: int | None = None, retry_after: int = 30,
    ) -> dict[str, Any]:  # fmt: skip
        """Queue a job. LookupError when the item (or style item) is not in the catalog;
        QueueFull when queue_max jobs already wait."""
        with self.Session.begin() as s:
            if queue_max is not None:
                waiting = int(s.scalar(select(func.count()).select_from(StyleJob)
                                       .where(StyleJob.state == JobState.queued)) or 0)  # fmt: skip
                if waiting >= queue_max:
                    raise QueueFull(waiting, retry_after)
            sha = s.scalar(select(Item.sha256).where(Item.id == item_id))
            if sha is None:
                raise LookupError(f"item {item_id} is not in the library")
            if style_item_id is not None:
                style_sha256 = s.scalar(select(Item.sha256).where(Item.id == style_item_id))
                if style_sha256 is None:
                    raise LookupError(f"style item {style_item_id} is not in the library")
            job = StyleJob(
                state=JobState.queued, item_id=item_id, item_sha256=sha,
                style_kind=style_kind, style_item_id=style_item_id,
                style_artist=style_artist, style_file=style_file, style_sha256=style_sha256,
                settings=json.dumps(settings, sort_keys=True), total=total, step=0,
                preview_step=0, attempts=0, max_attempts=max_attempts,
                cancel_requested=False, add_to_library=add_to_library,
            )  # fmt: skip
            s.add(job)
            s.flush()
            job_id = job.id
        got = self.get(job_id)
        assert got is not None
        return got

    # ---- working ------------------------------------------------------------------------
    def claim(
        self, owner: str, lease_s: float, now: float | None = None, job_id: int | None = None
    ) -> dict[str, Any] | None:
        """Take the oldest queued job (or job_id), or one whose worker's lease ran out."""
        now = time.time() if now is None else now
        with self.Session.begin() as s:
            self._fail_exhausted(s, now)
            claimable = or_(
                StyleJob.state == JobState.queued,
                and_(StyleJob.state == JobState.running, StyleJob.lease_until < now),
            )
            q = select(StyleJob.id, StyleJob.state, StyleJob.owner).where(claimable)
            if job_id is not None:
                q = q.where(StyleJob.id == job_id)
            q = q.order_by(StyleJob.id).limit(1).with_for_update(skip_locked=True)
            row = s.execute(q).first()
            if row is None:
                return None
            # The whole claimable condition again, not only the row's state and owner: a
            # worker that renewed its lease since our select keeps its job.
            taken = s.execute(
                update(StyleJob)
                .where(StyleJob.id == row.id, claimable,
                       StyleJob.owner.is_(None) if row.owner is None
                       else StyleJob.owner == row.owner)
                .values(state=JobState.running, owner=owner, lease_until=now + lease_s,
                        attempts=StyleJob.attempts + 1, started_at=datetime.now(UTC),
                        step=0, preview_step=0)
            )  # fmt: skip
            if not taken.rowcount:  # type: ignore[attr-defined]
                return None  # another worker won it between our select and update
        return self.get(row.id)

    @staticmethod
    def _fail_exhausted(s: Session, now: float) -> None:
        """Jobs whose workers died on every attempt are failed, not tried forever; a job
        whose worker died after it was asked to stop is cancelled, not taken over."""
        dead = and_(StyleJob.state == JobState.running, StyleJob.lease_until < now)
        s.execute(
            update(StyleJob).where(dead, StyleJob.cancel_requested.is_(True))
            .values(state=JobState.cancelled, finished_at=datetime.now(UTC), owner=None)
        )  # fmt: skip
        s.execute(
            update(StyleJob)
            .where(StyleJob.state == JobState.running, StyleJob.lease_until < now,
                   StyleJob.attempts >= StyleJob.max_attempts)
            .values(state=JobState.failed, finished_at=datetime.now(UTC), owner=None,
                    error=func.coalesce(StyleJob.error + "; ", "")
                    + "the worker running it stopped (crashed or was killed) on every "
                    "attempt")
        )  # fmt: skip

    def release_dead(self, alive: Callable[[int], bool] = _pid_alive) -> int:
        """Running jobs owned by a process of this host that no longer exists are
        claimable now, without waiting for their lease (a restart takes them over)."""
        host = socket.gethostname()
        released = 0
        with self.Session.begin() as s:
            rows = s.execute(select(StyleJob.id, StyleJob.owner)
                             .where(StyleJob.state == JobState.running))  # fmt: skip
            for job_id, owner in rows:
                h, _, rest = (owner or "").partition(":")
                pid = rest.partition(":")[0]
                if h == host and pid.isdigit() and not alive(int(pid)):
                    s.execute(update(StyleJob).where(StyleJob.id == job_id,
                                                     StyleJob.owner == owner)
                              .values(lease_until=0.0))  # fmt: skip
                    released += 1
        return released

    def renew(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend the lease while a step, a model load or a download takes long."""
        with self.Session.begin() as s:
            res = s.execute(
                update(StyleJob)
                .where(StyleJob.id == job_id, StyleJob.owner == owner,
                       StyleJob.state == JobState.running)
                .values(lease_until=time.time() + lease_s)
            )  # fmt: skip
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def progress(
        self, job_id: int, owner: str, step: int, lease_s: float, preview_step: int | None = None
    ) -> bool:
        """Record a step and renew the lease. False: stop (cancel asked, or the job is no
        longer this worker's: its lease ran out and another took it)."""
        values: dict[str, Any] = {"step": step, "lease_until": time.time() + lease_s}
        if preview_step is not None:
            values["preview_step"] = preview_step
        with self.Session.begin() as s:
            res = s.execute(
                update(StyleJob)
                .where(StyleJob.id == job_id, StyleJob.owner == owner,
                       StyleJob.state == JobState.running)
                .values(**values)
            )  # fmt: skip
            if not res.rowcount:  # type: ignore[attr-defined]
                return False
            return not s.scalar(select(StyleJob.cancel_requested).where(StyleJob.id == job_id))

    def _end(self, job_id: int, by: str, **values: Any) -> bool:
        """End this worker's attempt (nothing happens if the job is no longer its own)."""
        with self.Session.begin() as s:
            res = s.execute(
                update(StyleJob)
                .where(StyleJob.id == job_id, StyleJob.owner == by,
                       StyleJob.state == JobState.running)
                .values(**{"finished_at": datetime.now(UTC), "lease_until": None, **values})
            )  # fmt: skip
            return bool(res.rowcount)  # type: ignore[attr-defined]

    def finish(self, job_id: int, owner: str, *, result_file: str, result_sha256: str,
               model_id: str, seconds: float) -> bool:  # fmt: skip
        return self._end(job_id, owner, state=JobState.done, result_file=result_file,
                         result_sha256=result_sha256, model_id=model_id, seconds=seconds,
                         error=None)  # fmt: skip

    def fail(self, job_id: int, owner: str, error: str, *, retry: bool = False,
             seconds: float | None = None) -> bool:  # fmt: skip
        """A failed attempt: queued again when retry and attempts are left, else failed."""
        job = self.get(job_id)
        if job is None:
            return False
        again = retry and job["attempts"] < job["max_attempts"]
        if again:
            return self._end(job_id, owner, state=JobState.queued, error=error, owner=None,
                             seconds=seconds, finished_at=None)  # fmt: skip
        return self._end(job_id, owner, state=JobState.failed, error=error, seconds=seconds)

    def release(self, job_id: int, owner: str) -> bool:
        """Give a job back untried (its worker is shutting down): queued again, and the
        attempt does not count; cancelled instead if a cancel was asked meanwhile."""
        job = self.get(job_id)
        if job is not None and job["cancel_requested"]:
            return self.cancelled(job_id, owner)
        return self._end(job_id, owner, state=JobState.queued, owner=None, finished_at=None,
                         step=0, attempts=StyleJob.attempts - 1)  # fmt: skip

    def cancelled(self, job_id: int, owner: str, seconds: float | None = None) -> bool:
        return self._end(job_id, owner, state=JobState.cancelled, seconds=seconds)

    # ---- asked by users -------------------------------------------------------------------
    def cancel(self, job_id: int) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one is asked to stop (its worker
        sees it at its next step). KeyError: no such job; JobStateError: finished.
        Conditional updates, so a cancel racing the job's end never marks a done job."""
        with self.Session.begin() as s:
            mine = (StyleJob.id == job_id,)
            queued = s.execute(
                update(StyleJob).where(*mine, StyleJob.state == JobState.queued)
                .values(state=JobState.cancelled, finished_at=datetime.now(UTC),
                        cancel_requested=True)
            )  # fmt: skip
            if not queued.rowcount:  # type: ignore[attr-defined]
                running = s.execute(
                    update(StyleJob).where(*mine, StyleJob.state == JobState.running)
                    .values(cancel_requested=True)
                )  # fmt: skip
                if not running.rowcount:  # type: ignore[attr-defined]
                    state = s.scalar(select(StyleJob.state).where(*mine))
                    if state is None:
                        raise KeyError(job_id)
                    raise JobStateError(f"job {job_id} is already {state}")
        got = self.get(job_id)
        assert got is not None
        return got

    def add_to_library(self, job_id: int) -> dict[str, Any]:
        """Mark a job's result to be indexed into the library (a finished job: its
        worker has gone; the caller hands the file to the indexer)."""
        with self.Session.begin() as s:
            job = s.get(StyleJob, job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state in (JobState.failed, JobState.cancelled):
                raise JobStateError(f"job {job_id} is {job.state}: it has no result")
            job.add_to_library = True
        got = self.get(job_id)
        assert got is not None
        return got

    def exemplar(self, artist: str, min_artwork: float) -> int | None:
        """The library's strongest picture of an artist's style: the highest style score
        among items that look like artworks, never a style-transfer result (a rendering
        "after Monet" must not become Monet's exemplar: that way lie loops)."""
        from catalog.models import LabelRow

        art = (select(LabelRow.item_id)
               .where(LabelRow.kind == "artwork", LabelRow.score >= min_artwork))  # fmt: skip
        results = (select(StyleJob.result_sha256)
                   .where(StyleJob.result_sha256.is_not(None)))  # fmt: skip
        with self.Session() as s:
            return s.scalar(
                select(LabelRow.item_id)
                .join(Item, Item.id == LabelRow.item_id)
                .where(LabelRow.kind == "style", LabelRow.label == artist,
                       LabelRow.item_id.in_(art), Item.kind == "image",
                       Item.sha256.not_in(results))
                .order_by(LabelRow.score.desc(), LabelRow.item_id).limit(1)
            )  # fmt: skip
