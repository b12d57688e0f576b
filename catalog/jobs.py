"""The work queue kept in the catalog: enqueue (coalescing), claim, finish, release.

Any number of processes, on any number of machines, may work one queue: a claim takes
due jobs with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite has one writer
at a time and the claim's update re-checks the condition), names its owner and runs
under a lease that the owner renews while it works (:meth:`JobQueue.holding`). A job is
taken over when its lease has run out, or at once by a process on the same host that
sees its owner's pid is gone; never while its owner lives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update

from catalog.db import insert_for, make_sessionmaker
from catalog.models import FileFailure, FilePath, Job
from catalog.queries import move_prefix
from catalog.stylejobs import _pid_alive, new_owner

# Claims of one job before it is given up as a recorded failure. A job whose worker died
# holding it is claimed again in ever smaller batches (halved per attempt, down to one),
# so a file that crashes its workers ends up alone and the files that shared its batch
# go on; a worker killed from outside (an OOM kill, a deploy) costs its batch one attempt.
MAX_ATTEMPTS = 10


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
    def __init__(self, engine: Engine, owner: str | None = None, lease_s: float = 60.0) -> None:
        self.Session = make_sessionmaker(engine)
        self.owner = owner or new_owner()  # host:pid:nonce
        self.lease_s = lease_s

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
        self.put_many([(path, action, due_at, size, mtime_ns)], closed=closed)

    def put_many(self, jobs: Sequence[tuple[str, str, float, int | None, int | None]],
                 closed: bool = True, chunk: int = 500) -> None:  # fmt: skip
        """put() for many (path, action, due_at, size, mtime_ns), a transaction per chunk
        (a start that queues a whole tree: one commit per file would take minutes).

        One INSERT ... ON CONFLICT per chunk: the leader's events and a worker expanding
        a folder may queue the same new path at once. A job already there takes the new
        evidence and drops its claim (the claim's view of the file is stale; its holder's
        finish then leaves it queued) and its attempts."""
        last = {path: (path, action, due, size, mtime) for path, action, due, size, mtime in jobs}
        rows = [{"path": p, "action": a, "due_at": d, "size": sz, "mtime_ns": m,
                 "closed": closed, "claimed": False, "attempts": 0}
                for p, a, d, sz, m in last.values()]  # fmt: skip
        for s0 in range(0, len(rows), chunk):
            with self.Session.begin() as s:
                stmt = insert_for(s, Job).values(rows[s0 : s0 + chunk])
                ex = stmt.excluded
                s.execute(stmt.on_conflict_do_update(index_elements=["path"], set_={
                    "action": ex.action, "due_at": ex.due_at, "size": ex.size,
                    "mtime_ns": ex.mtime_ns, "closed": ex.closed, "claimed": False,
                    "owner": None, "lease_until": None, "attempts": 0,
                }))  # fmt: skip

    def mark_closed(self, path: str, due_at: float) -> None:
        """The writer closed the file: it is due once quiet from now (its last write)."""
        with self.Session.begin() as s:
            s.execute(update(Job).where(Job.path == path).values(closed=True, due_at=due_at))

    def rename(self, src: str, dest: str) -> None:
        """Follow a move: queued work for src (or under src/) now belongs to dest."""
        with self.Session.begin() as s:
            move_prefix(s, Job, src, dest)

    @staticmethod
    def _claimable(now: float) -> Any:
        """Due, and free: never claimed, released, or held under a lease that ran out;
        and not claimed MAX_ATTEMPTS times already (see _give_up)."""
        return and_(Job.due_at <= now, Job.attempts < MAX_ATTEMPTS,
                    or_(Job.claimed.is_(False), Job.lease_until.is_(None),
                        Job.lease_until < now))  # fmt: skip

    def _give_up(self, s: Any, now: float) -> None:
        """A job claimed MAX_ATTEMPTS times without being finished took its workers down
        each time (a file that crashes a decoder, say): it becomes a recorded failure
        instead of a crash loop. Seen again by the next scan, or when the file changes."""
        stuck = select(Job.id, Job.path).where(
            Job.attempts >= MAX_ATTEMPTS,
            or_(Job.claimed.is_(False), Job.lease_until.is_(None), Job.lease_until < now),
        )  # fmt: skip
        rows = list(s.execute(stuck))
        if not rows:
            return
        why = (f"its worker stopped (crashed or was killed) on each of {MAX_ATTEMPTS} "
               "attempts to index it")  # fmt: skip
        for _id, path in rows:
            s.execute(insert_for(s, FileFailure).values(path=path, reason=why, attempts=1)
                      .on_conflict_do_update(index_elements=["path"],
                                             set_={"reason": why}))  # fmt: skip
        s.execute(delete(Job).where(Job.id.in_([r[0] for r in rows])))

    def claim(self, now: float, limit: int) -> list[Claimed]:
        """Up to limit due jobs, oldest first, now held by this queue's owner."""
        lease = now + self.lease_s
        with self.Session.begin() as s:
            self._give_up(s, now)
            free = self._claimable(now)
            # Rows another claimer holds locked are skipped, not waited for (PostgreSQL).
            rows = list(s.execute(select(Job.id, Job.attempts).where(free)
                                  .order_by(Job.due_at, Job.id).limit(limit)
                                  .with_for_update(skip_locked=True)))  # fmt: skip
            ids: list[int] = []
            cap = limit
            for job_id, attempts in rows:  # a job tried before shrinks the batch it joins
                cap = min(cap, max(1, limit >> min(int(attempts or 0), 30)))
                if len(ids) >= cap:
                    break
                ids.append(job_id)
            if not ids:
                return []
            # The condition again: a claim that won since our select keeps its jobs.
            s.execute(update(Job).where(Job.id.in_(ids), free)
                      .values(claimed=True, owner=self.owner, lease_until=lease,
                              attempts=Job.attempts + 1))  # fmt: skip
            jobs = list(s.scalars(select(Job).where(Job.id.in_(ids), Job.owner == self.owner)
                                  .order_by(Job.due_at)))  # fmt: skip
            return [Claimed(j.id, j.path, j.action, j.size, j.mtime_ns, j.closed, j.due_at)
                    for j in jobs]  # fmt: skip

    def renew(self, ids: Sequence[int], now: float | None = None) -> int:
        """Extend the lease on these jobs while they are still this owner's."""
        until = (time.time() if now is None else now) + self.lease_s
        with self.Session.begin() as s:
            res = s.execute(update(Job).where(Job.id.in_(list(ids)), Job.owner == self.owner,
                                              Job.claimed.is_(True))
                            .values(lease_until=until))  # fmt: skip
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    @contextmanager
    def holding(self, ids: Sequence[int]) -> Iterator[None]:
        """Renew the lease on these jobs every third of it while the block works them."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_s / 3):
                # A missed beat (the database busy a moment): the next one, or the lease,
                # decides.
                with suppress(Exception):
                    self.renew(ids)

        thread = threading.Thread(target=beat, daemon=True, name="job-lease")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish(self, ids: Sequence[int]) -> None:
        """Drop finished jobs, unless new events re-queued them meanwhile or another
        process took them over (its lease, its finish)."""
        with self.Session.begin() as s:
            s.execute(delete(Job).where(Job.id.in_(list(ids)), Job.claimed.is_(True),
                                        Job.owner == self.owner))  # fmt: skip

    def reschedule(self, job_id: int, due_at: float, size: int | None, mtime_ns: int | None,
                   closed: bool | None = None) -> None:  # fmt: skip
        # Looked at and found unsettled: a claim that ended well, not one that crashed.
        values: dict[str, object] = {"claimed": False, "due_at": due_at, "size": size,
                                     "mtime_ns": mtime_ns, "owner": None,
                                     "lease_until": None, "attempts": 0}  # fmt: skip
        if closed is not None:
            values["closed"] = closed
        with self.Session.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.owner == self.owner).values(**values))

    def release_dead(self, alive: Any = _pid_alive) -> int:
        """Claimed jobs whose owner was a process of this host that no longer exists go
        back to the queue now (a restart after a crash), without waiting for the lease;
        those of live processes, and of other hosts, stay theirs until their lease ends."""
        import socket

        host = socket.gethostname()
        dead: list[tuple[int, str | None]] = []
        with self.Session.begin() as s:
            rows = s.execute(select(Job.id, Job.owner).where(Job.claimed.is_(True)))
            for job_id, owner in rows:
                parts = (owner or "").split(":")
                if owner is None or (len(parts) == 3 and parts[0] == host and parts[1].isdigit()
                                     and not alive(int(parts[1]))):  # fmt: skip
                    dead.append((job_id, owner))
            for job_id, owner in dead:  # only if still that owner's: not a fresh claim
                held_by = Job.owner.is_(None) if owner is None else Job.owner == owner
                s.execute(update(Job).where(Job.id == job_id, Job.claimed.is_(True), held_by)
                          .values(claimed=False, owner=None, lease_until=None))  # fmt: skip
        return len(dead)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """What to watch in a deployment: jobs waiting, held under a live lease, held
        past their lease (a worker died and none has taken them yet), and how long the
        oldest due job has waited."""
        now = time.time() if now is None else now
        with self.Session() as s:

            def count(*where: Any) -> int:
                return int(s.scalar(select(func.count()).select_from(Job).where(*where)) or 0)

            oldest = s.scalar(select(func.min(Job.due_at)).where(Job.claimed.is_(False)))
            return {
                "queued": count(Job.claimed.is_(False)),
                "held": count(Job.claimed.is_(True), Job.lease_until >= now),
                "lease_expired": count(Job.claimed.is_(True), or_(Job.lease_until.is_(None),
                                                                  Job.lease_until < now)),
                "oldest_wait_s": round(max(0.0, now - oldest), 1) if oldest is not None else 0.0,
            }  # fmt: skip

    def pending(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)

    def next_due(self) -> float | None:
        """When the next job falls due (or a held one's lease runs out)."""
        with self.Session() as s:
            free = s.scalar(select(func.min(Job.due_at)).where(Job.claimed.is_(False)))
            held = s.scalar(select(func.min(Job.lease_until)).where(Job.claimed.is_(True)))
            times = [t for t in (free, held) if t is not None]
            return min(times) if times else None


def rename_paths(engine: Engine, src: str, dest: str) -> int:
    """Move catalog paths from src (a file or folder) to dest without touching items."""
    with make_sessionmaker(engine).begin() as s:
        return move_prefix(s, FilePath, src, dest)
