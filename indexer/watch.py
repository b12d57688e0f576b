"""`everlook watch`: keep the catalog in step with folders as files come and go.

Events from watchdog become jobs in the catalog's queue (one row per path, so a burst
of events on one file coalesces into one job). The main thread claims due jobs, checks
that each file has settled, and indexes them in batches through the same pipeline as
`everlook index`. A crash leaves claimed jobs behind; the next start releases them and
reconciles the whole tree first, so nothing that happened meanwhile is missed.

A file is taken once its size and mtime have been unchanged for the quiet period and,
where inotify reports it, once its writer has closed it. Temporary names (``*.part``,
``*.crdownload``, ``*.tmp``, ``~$*``, dot-files) are ignored until renamed to a real name.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from catalog import Catalog
from catalog.jobs import JobQueue, rename_paths
from indexer.pipeline import Pipeline, Report
from indexer.scan import Found, ScanRules, scan
from indexer.stages import StageRunner

log = logging.getLogger("everlook.watch")

TEMP_NAMES = ("*.part", "*.partial", "*.crdownload", "*.download", "*.tmp", "*.temp",
              "*.swp", "~$*", ".*")  # fmt: skip
# A writer that never closes its file (or a platform without close events) still gets
# its file indexed once it has been quiet for this many quiet periods.
UNCLOSED_FACTOR = 10


@dataclass(frozen=True)
class WatchOptions:
    quiet_seconds: float = 1.0
    poll: bool = False
    poll_interval: float = 2.0
    batch_size: int = 32
    # Saving rewrites the whole index file (2 GB at 1M x 512, seconds to write): never
    # after a batch, so it is never on the way of a file to search. Done once no event
    # and no batch has come for this long (a lull), at stop, or, while files keep
    # coming without a lull, when the index has waited this long (between batches).
    # Nothing is lost in between: the catalog holds every vector and the index is
    # reconciled with it on open.
    save_idle_seconds: float = 30.0
    save_max_seconds: float = 600.0


def is_temporary(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in TEMP_NAMES)


class _Events(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.w.on_event(event)
        except Exception:  # an event we cannot queue must not kill the observer thread
            log.exception("could not queue %s", event)


class Watcher:
    def __init__(
        self,
        pipeline: Pipeline,
        catalog: Catalog,
        queue: JobQueue,
        roots: Sequence[str],
        rules: ScanRules,
        options: WatchOptions | None = None,
        stages: StageRunner | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.catalog = catalog
        self.queue = queue
        self.index = pipeline.index
        # Enrichment runs here, one batch at a time when no file is due, so a new file
        # is searchable within the quiet period however much enrichment is pending.
        self.stages = stages
        self.roots = [os.path.abspath(r) for r in roots]
        self.rules = rules
        self.opts = options or WatchOptions()
        self.stop_event = threading.Event()
        self.observer: BaseObserver | None = None
        self.mode = "inotify"
        self._dirty_since: float | None = None
        self._last_activity = time.monotonic()  # last event seen or batch done
        self.last_save_seconds: float | None = None  # how long the last save took
        self.totals = Report()

    # ---- events (observer thread) -------------------------------------------------------
    def wanted(self, path: str) -> bool:
        name = os.path.basename(path)
        if is_temporary(name) or self.rules.excluded(path, name):
            return False
        rel_parts = self._relative_parts(path)
        if not self.rules.include_hidden and any(p.startswith(".") for p in rel_parts[:-1]):
            return False
        return self.rules.wants_name(name)

    def _relative_parts(self, path: str) -> list[str]:
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return os.path.relpath(path, root).split(os.sep)
        return path.split(os.sep)

    def on_event(self, event: FileSystemEvent) -> None:
        self._last_activity = time.monotonic()
        now = time.time()
        src = os.fsdecode(event.src_path)
        if isinstance(event, FileClosedEvent):
            self.queue.mark_closed(src, now + self.opts.quiet_seconds)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            if self.wanted(src):
                self._queue_file(src, now, closed=False)
        elif isinstance(event, FileDeletedEvent):
            self.queue.put(src, "delete", now)
        elif isinstance(event, FileMovedEvent):
            dest = os.fsdecode(event.dest_path)
            self._moved_file(src, dest, now)
        elif isinstance(event, DirMovedEvent):
            dest = os.fsdecode(event.dest_path)
            moved = rename_paths(self.catalog.engine, src, dest)
            self.queue.rename(src, dest)
            self.queue.put(dest, "scan", now)  # files the catalog did not know yet
            log.info(
                "folder moved: %s -> %s (%d paths follow, nothing re-embedded)", src, dest, moved
            )
        elif isinstance(event, DirDeletedEvent):
            self.queue.put(src, "delete_dir", now)
        elif isinstance(event, DirCreatedEvent):
            # A folder moved in from outside arrives with its files and no events for them.
            self.queue.put(src, "scan", now + self.opts.quiet_seconds)

    def _queue_file(self, path: str, now: float, closed: bool) -> None:
        size: int | None = None
        mtime: int | None = None
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            pass
        self.queue.put(path, "index", now + self.opts.quiet_seconds, size, mtime, closed)

    def _moved_file(self, src: str, dest: str, now: float) -> None:
        if not self.wanted(dest):
            self.queue.put(src, "delete", now)  # renamed to a temporary or unwanted name
            return
        if rename_paths(self.catalog.engine, src, dest):
            self.queue.rename(src, dest)
            log.info("moved: %s -> %s (path updated, not re-embedded)", src, dest)
            return
        # A download or temp file renamed to its real name: complete by construction.
        self._queue_file(dest, now, closed=True)

    # ---- lifecycle (main thread) --------------------------------------------------------
    def start(self, enqueue_only: bool = False) -> Report:
        """Release jobs of this host's dead processes, follow the folders, and bring the
        catalog in step with them: here, or (enqueue_only) by queueing what changed for
        `everlook worker` processes, which may run on other machines."""
        released = self.queue.release_dead()
        if released:
            log.info("released %d jobs claimed by a process of this host that is gone", released)
        self.observer = self._start_observer()
        if enqueue_only:
            log.info("comparing %s with the catalog ...", ", ".join(self.roots))
            todo, gone, problems, report = self.pipeline.plan(self.roots)
            now = time.time()
            self.queue.put_many([(f.path, "index", now, f.size, f.mtime_ns) for f in todo]
                                + [(p, "index", now, None, None) for p in problems]
                                + [(p, "delete", now, None, None) for p in gone])  # fmt: skip
            log.info("queued for the workers: %d files to index, %d gone, %d to look at "
                     "again, %d unchanged", len(todo), len(gone), len(problems),
                     report.unchanged)  # fmt: skip
            return report
        log.info("reconciling %s with the catalog ...", ", ".join(self.roots))
        report = self.pipeline.run(self.roots, save=False)  # saved by _save, when idle
        if self.pipeline.changed:
            self._dirty_since = time.monotonic()
        log.info("reconciled: %s", summary(report))
        return report

    def _start_observer(self) -> BaseObserver:
        if self.opts.poll:
            self.mode = "polling"
            log.info("polling every %.1fs (--poll)", self.opts.poll_interval)
            return self._schedule(PollingObserver(timeout=self.opts.poll_interval))
        try:
            return self._schedule(Observer())
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
            self.mode = "polling"
            log.warning(
                "the OS refused more inotify watches (%s); falling back to polling every "
                "%.1fs. Raise fs.inotify.max_user_watches to use events again.",
                exc.strerror or exc, self.opts.poll_interval,
            )  # fmt: skip
            return self._schedule(PollingObserver(timeout=self.opts.poll_interval))

    def _schedule(self, observer: BaseObserver) -> BaseObserver:
        handler = _Events(self)
        for root in self.roots:
            observer.schedule(handler, root, recursive=True)
        observer.start()
        return observer

    def run_forever(self, work: bool = True) -> None:
        """Work the queue until stop() or a signal; then leave cleanly. work=False: only
        queue what the folders' events say (workers elsewhere do the work)."""
        try:
            while not self.stop_event.is_set():
                if not work or not self.step():
                    self.stop_event.wait(self._sleep_for() if work else 0.5)
        finally:
            self.close()

    def work_forever(self) -> None:
        """A worker: no folders of its own; jobs others queued (and enrichment when
        none is due) until stop(). Jobs of this host's dead processes are taken back."""
        released = self.queue.release_dead()
        if released:
            log.info("released %d jobs claimed by a process of this host that is gone", released)
        # A worker killed between forgetting a path and pruning the item it left with no
        # path (its in-memory list of them gone with it) leaves an orphan: one sweep here
        # (an indexed anti-join), as a full scan does, since no full scan runs in a worker.
        self.pipeline.prune_everywhere()
        self.run_forever()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None
        self._save(force=True)
        left = self.queue.pending()
        log.info("stopped; %d jobs left queued for the next start", left)

    def _sleep_for(self) -> float:
        nxt = self.queue.next_due()
        wait = 0.5 if nxt is None else max(0.02, min(0.5, nxt - time.time()))
        return wait

    # ---- the work ----------------------------------------------------------------------
    def step(self) -> bool:
        """Claim and do one batch of due jobs. False when there was nothing to do."""
        jobs = self.queue.claim(time.time(), self.opts.batch_size * 4)
        if not jobs:
            self._save()
            ran = self.stages is not None and self.stages.backfill_step()
            if ran:  # an embed stage may have added vectors to its space's index
                self._dirty_since = self._dirty_since or time.monotonic()
            return ran
        with self.queue.holding([j.id for j in jobs]):  # a long batch keeps its jobs
            self._work(jobs)
        self._last_activity = time.monotonic()
        return True

    def _work(self, jobs: list[Any]) -> None:
        now = time.time()
        index, dirs_gone, done = [], [], []
        for job in jobs:
            if job.action == "scan":
                self._expand(job.path, now)
                done.append(job.id)
            elif job.action == "delete_dir":
                dirs_gone.append(job.path)
                done.append(job.id)
            elif job.action == "delete" or self._settled(job, now):
                index.append(job.path)  # run_files removes paths that no longer exist
                done.append(job.id)
        if index or dirs_gone:
            report = self.pipeline.run_files(index, removed_dirs=dirs_gone)
            self._count(report)
            if self.pipeline.changed:
                self._dirty_since = self._dirty_since or time.monotonic()
            log.info("batch: %s", summary(report))
        self.queue.finish(done)

    def _settled(self, job: Any, now: float) -> bool:
        """Has the file kept its size and mtime for the quiet period (and been closed)?"""
        try:
            st = os.stat(job.path)
        except OSError:
            return True  # gone: run_files removes it
        if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
            # Changed since the last event we saw (or no event carried the change, as
            # with polling): start the quiet period again from now.
            self.queue.reschedule(job.id, now + self.opts.quiet_seconds, st.st_size,
                                  st.st_mtime_ns)  # fmt: skip
            return False
        if self.mode == "inotify" and not job.closed:
            # Stable but still open: wait for the close event, or failing that for the
            # longer quiet time counted from the last change (due_at - quiet). Marked
            # closed now so that, unchanged by then, it is taken; a new write re-queues
            # it as open, a close event brings it forward.
            last_change = job.due_at - self.opts.quiet_seconds
            self.queue.reschedule(job.id, last_change + self.opts.quiet_seconds * UNCLOSED_FACTOR,
                                  job.size, job.mtime_ns, closed=True)  # fmt: skip
            return False
        return True

    def _expand(self, folder: str, now: float) -> None:
        for got in scan([folder], self.rules):
            if isinstance(got, Found) and self.wanted(got.path):
                self.queue.put(got.path, "index", now, got.size, got.mtime_ns, closed=True)

    def _save(self, force: bool = False) -> None:
        """Save the vector indexes if changed and the time has come (see WatchOptions).
        Called between batches only, when no job was due."""
        if self._dirty_since is None:
            return
        now = time.monotonic()
        lull = now - self._last_activity >= self.opts.save_idle_seconds
        overdue = now - self._dirty_since >= self.opts.save_max_seconds
        if force or (lull and self.queue.next_due() is None) or overdue:
            # A crash before this loses nothing: the catalog committed every vector, and
            # opening the index reconciles it with the catalog (adds what it lacks).
            t0 = time.monotonic()
            self.pipeline.save_indexes()
            self.last_save_seconds = time.monotonic() - t0
            self._dirty_since = None
            log.info("vector indexes saved in %.1f s", self.last_save_seconds)

    def _count(self, r: Report) -> None:
        t = self.totals
        t.new, t.changed, t.moved = t.new + r.new, t.changed + r.changed, t.moved + r.moved
        t.removed, t.duplicates = t.removed + r.removed, t.duplicates + r.duplicates
        t.failed.extend(r.failed)


def summary(r: Report) -> str:
    return (
        f"{r.new} new, {r.changed} changed, {r.moved} moved, {r.duplicates} duplicate "
        f"paths, {r.removed} removed, {r.unchanged} unchanged, {len(r.failed)} failed"
    )
