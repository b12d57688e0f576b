"""The work queue kept in the catalog: enqueue (coalescing), claim, finish, release."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select, update

from catalog.db import make_sessionmaker
from catalog.models import FilePath, Job
from catalog.queries import move_prefix


@dataclass(frozen=True)
class Claimed:
    id: int
    path: str
    action: str
    size: int | None
    mtime_ns: int | None
    closed: bool
    due_at: float


class JobQueue:
    def __init__(self, engine: Engine) -> None:
        self.Session = make_sessionmaker(engine)

    def put(
        self,
        path: str,
        action: str,
        due_at: float,
        size: int | None = None,
        mtime_ns: int | None = None,
        closed: bool = False,
    ) -> None:
        """Queue work for a path; an existing job for it is updated, not duplicated."""
        with self.Session.begin() as s:
            job = s.scalar(select(Job).where(Job.path == path))
            if job is None:
                s.add(
                    Job(
                        path=path,
                        action=action,
                        due_at=due_at,
                        size=size,
                        mtime_ns=mtime_ns,
                        closed=closed,
                    )
                )
                return
            job.action, job.due_at, job.size, job.mtime_ns = action, due_at, size, mtime_ns
            job.closed = closed
            job.claimed = False  # new evidence: the claim's view of the file is stale

    def mark_closed(self, path: str, due_at: float) -> None:
        """The writer closed the file: it is due once quiet from now (its last write)."""
        with self.Session.begin() as s:
            s.execute(update(Job).where(Job.path == path).values(closed=True, due_at=due_at))

    def rename(self, src: str, dest: str) -> None:
        """Follow a move: queued work for src (or under src/) now belongs to dest."""
        with self.Session.begin() as s:
            move_prefix(s, Job, src, dest)

    def claim(self, now: float, limit: int) -> list[Claimed]:
        with self.Session.begin() as s:
            jobs = list(s.scalars(
                select(Job).where(Job.claimed.is_(False), Job.due_at <= now)
                .order_by(Job.due_at).limit(limit)
            ))  # fmt: skip
            for job in jobs:
                job.claimed, job.attempts = True, job.attempts + 1
            return [Claimed(j.id, j.path, j.action, j.size, j.mtime_ns, j.closed, j.due_at)
                    for j in jobs]  # fmt: skip

    def finish(self, ids: Sequence[int]) -> None:
        """Drop finished jobs, unless new events re-queued them meanwhile."""
        with self.Session.begin() as s:
            s.execute(delete(Job).where(Job.id.in_(list(ids)), Job.claimed.is_(True)))

    def reschedule(self, job_id: int, due_at: float, size: int | None, mtime_ns: int | None,
                   closed: bool | None = None) -> None:  # fmt: skip
        values: dict[str, object] = {"claimed": False, "due_at": due_at, "size": size,
                                     "mtime_ns": mtime_ns}  # fmt: skip
        if closed is not None:
            values["closed"] = closed
        with self.Session.begin() as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def release_claimed(self) -> int:
        """After a crash: claimed jobs nobody is working on go back to the queue."""
        with self.Session.begin() as s:
            res = s.execute(update(Job).where(Job.claimed.is_(True)).values(claimed=False))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def pending(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)

    def next_due(self) -> float | None:
        with self.Session() as s:
            return s.scalar(select(func.min(Job.due_at)).where(Job.claimed.is_(False)))


def rename_paths(engine: Engine, src: str, dest: str) -> int:
    """Move catalog paths from src (a file or folder) to dest without touching items."""
    with make_sessionmaker(engine).begin() as s:
        return move_prefix(s, FilePath, src, dest)
