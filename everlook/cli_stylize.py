"""`everlook stylize`, `everlook worker` and `everlook jobs`: style transfer as jobs.

The CLI writes jobs into the catalog it shares with every other process on this data
dir; a running `everlook serve` or `everlook worker` picks them up. `stylize --wait`
follows the job with a progress bar and, when nobody takes it within a moment, runs it
in this process (claiming is race-free, so it never runs twice)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from everlook.cli import EXIT_FAILED, EXIT_USAGE, _fail_config, _parts, app, emit_json, err, out
from everlook.cli_search import resolve_item

Opt = typer.Option
TAKEN_WITHIN_S = 2.0  # how long --wait lets a running worker claim the job first


def _style_source(parts: Any, style: str | None, artist: str | None) -> dict[str, Any]:
    """The job's style fields from --style ITEM|FILE or --artist NAME."""
    from catalog.stylejobs import StyleQueue
    from indexer.stylize_worker import style_source

    if (style is None) == (artist is None):
        raise LookupError("give exactly one of --style ITEM|FILE or --artist NAME")
    item_id, picture = None, None
    if style is not None:
        is_id = style.isdigit() and not os.path.exists(style)
        item_id = int(style) if is_id else parts.catalog.item_id_for_path(os.path.abspath(style))
        if item_id is None:  # a picture file outside the library: an uploaded style
            picture = _picture_file(parts, style)
    return style_source(parts.catalog, StyleQueue(parts.catalog.engine), parts.settings.home,
                        parts.settings.artwork_min_score, item_id=item_id, artist=artist,
                        picture=picture)  # fmt: skip


def _picture_file(parts: Any, path: str) -> Any:
    from indexer.media import MediaError, decode_image, read_file

    if not os.path.isfile(path):
        raise LookupError(f"--style {path}: neither an item id nor a picture file")
    try:
        return decode_image(read_file(path, parts.limits()).data, parts.limits()).image
    except MediaError as exc:
        raise LookupError(f"--style {path}: {exc}") from exc


def _job_settings(parts: Any, asked: dict[str, Any]) -> dict[str, Any]:
    from indexer.stylize_worker import job_settings

    s = parts.settings
    return job_settings(parts.style_defaults(), asked, s.stylize_max_side, s.stylize_max_steps)


def _local_index_back(parts: Any) -> Any:
    """Index a result here when this process can be the writer; else leave it on the
    queue for the running writer (`serve` or `watch`)."""
    from everlook.lock import Busy, WriterLock

    queued = parts.index_back_queue()

    def index_back(path: str) -> None:
        lock = WriterLock(parts.settings.home)
        try:
            lock.acquire("stylize", [])
        except Busy:
            queued(path)
            return
        try:
            pipeline = parts.pipeline()
            pipeline.run_files([path])
            pipeline.save_indexes()
        finally:
            lock.release()

    return index_back


@app.command()
def stylize(
    item: Annotated[str, typer.Argument(help="The picture to render: item id or indexed path.")],
    style: Annotated[str | None, Opt("--style", help="Style: an item id, an indexed "
                                     "path, or any picture file.")] = None,
    artist: Annotated[str | None, Opt("--artist", help="Style: an artist; the library's "
                                      "strongest artwork of that style is used.")] = None,
    wait: Annotated[bool, Opt("--wait", help="Follow the job to its end (running it here "
                              "if no worker takes it).")] = False,
    add: Annotated[bool, Opt("--add", help="Add the result to the library (a derived "
                             "item).")] = False,
    side: Annotated[int | None, Opt("--side", min=32, help="Long side of the result.")] = None,
    steps: Annotated[int | None, Opt("--steps", min=1, help="Optimiser steps.")] = None,
    optimizer: Annotated[str | None, Opt("--optimizer", help="lbfgs or adam.")] = None,
    dest: Annotated[Path | None, Opt("--out", help="Copy the result here (with --wait).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the job as JSON.")] = False,
) -> None:  # fmt: skip
    """Render a picture in the style of another (item or file) or of an artist, as a
    background job (see `everlook jobs`)."""
    from catalog.stylejobs import QueueFull, StyleQueue
    from indexer.stylize_worker import check_picture

    parts = _parts()
    s = parts.settings
    try:
        item_id = resolve_item(parts, item)
        check_picture(parts.catalog, item_id, "content")
        source = _style_source(parts, style, artist)
        settings = _job_settings(parts, {"side": side, "steps": steps, "optimizer": optimizer})
        job = StyleQueue(parts.catalog.engine).create(
            item_id=item_id, settings=settings, total=settings["steps"], add_to_library=add,
            max_attempts=s.stylize_max_attempts, queue_max=s.stylize_queue_max, **source,
        )  # fmt: skip
    except (LookupError, ValueError, QueueFull) as exc:
        raise _fail_config(exc) from exc
    if not wait:
        if as_json:
            emit_json(job)
        else:
            out.print(f"queued style job {job['id']}: a running `everlook serve` or "
                      "`everlook worker` renders it; follow it with `everlook jobs`")  # fmt: skip
        return
    job = _follow(parts, job["id"], quiet=as_json)
    if job["state"] == "done" and dest is not None:
        shutil.copyfile(s.home / job["result_file"], dest)
    if as_json:
        emit_json(job)
    elif job["state"] == "done":
        where = dest or s.home / job["result_file"]
        derived = f"; in the library as item {job['derived_item_id']}" if job[
            "derived_item_id"] else ""  # fmt: skip
        out.print(f"style job {job['id']} done in {job['seconds']:.1f} s: "
                  f"{escape(str(where))}{derived}")  # fmt: skip
    else:
        err.print(f"style job {job['id']} {job['state']}" + (f": {job['error']}" if job["error"]
                                                             else ""))  # fmt: skip
    if job["state"] != "done":
        raise typer.Exit(EXIT_FAILED)


def _follow(parts: Any, job_id: int, quiet: bool) -> dict[str, Any]:
    """Show the job's progress until it ends; run it here if no worker claims it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from catalog.stylejobs import FINISHED, JobStateError, StyleQueue

    queue = StyleQueue(parts.catalog.engine)
    started = time.monotonic()
    runner: threading.Thread | None = None
    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                        disable=quiet)  # fmt: skip
    try:
        with progress:
            task = progress.add_task(f"style job {job_id}: queued", total=None)
            while True:
                ours_done = runner is not None and not runner.is_alive()  # before reading
                job = queue.get(job_id)
                assert job is not None
                progress.update(task, completed=job["step"], total=job["total"],
                                description=f"style job {job_id}: {job['state']}")  # fmt: skip
                if job["state"] in FINISHED and (runner is None or ours_done):
                    return job
                # Nobody took it within a moment, or whoever had it is gone (its lease
                # ran out): run it here. Claiming is race-free: never twice at once.
                orphaned = job["state"] == "running" and (job["lease_until"] or 0) < time.time()
                waited = time.monotonic() - started > TAKEN_WITHIN_S
                if (runner is None or ours_done) and (
                    orphaned or (job["state"] == "queued" and waited)
                ):
                    here = parts.style_worker(_local_index_back(parts), concurrency=1)
                    runner = threading.Thread(target=here.run_one, args=(job_id,),
                                              name="everlook-stylize", daemon=True)  # fmt: skip
                    runner.start()
                time.sleep(0.2)
    except KeyboardInterrupt:
        with contextlib.suppress(JobStateError):  # it may have ended just now
            queue.cancel(job_id)  # the worker stops at its next step
        if runner is not None:
            runner.join(timeout=60)
        err.print(f"style job {job_id}: cancelled")
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[int | None, Opt("--concurrency", min=0, help="Style jobs at once "
                                           "(default EVERLOOK_STYLIZE_CONCURRENCY).")] = None,
    files: Annotated[bool, Opt("--files/--no-files", help="Also index and enrich the files "
                               "queued by `watch --enqueue-only`.")] = True,
) -> None:  # fmt: skip
    """Work the catalog's queues until stopped: files to index and enrich, and
    style-transfer jobs. Any number of workers may run, here or on other machines
    sharing the catalog; each job is claimed under a lease, taken over if its worker
    dies. With FAISS (index files in this home) one process writes the index: a worker
    works files only if it can take the writer lock; with Milvus any number may."""
    import signal

    from everlook.lock import Busy, WriterLock
    from indexer.watch import summary

    logging.getLogger("everlook").setLevel(logging.INFO)
    parts = _parts()
    s = parts.settings
    n_style = s.stylize_concurrency if concurrency is None else concurrency
    style = parts.style_worker(parts.index_back_queue(), n_style)
    watcher = None
    if files:
        if s.vector_backend == "faiss":
            lock = WriterLock(s.home)
            try:
                lock.acquire("worker")
                ctx.call_on_close(lock.release)
            except Busy as busy:
                err.print(f"files are left to the process writing {s.home} ({busy}); "
                          "this worker runs style jobs only", highlight=False)  # fmt: skip
                files = False
        if files:
            from everlook.cli_serve import watch_options

            try:
                watcher = parts.watcher([], parts.scan_rules(), watch_options(s))
            except (ValueError, ImportError) as exc:
                raise _fail_config(exc) from exc
    if watcher is None and style.opts.concurrency < 1:
        err.print("[red]error:[/red] nothing to do: EVERLOOK_STYLIZE_CONCURRENCY is 0 and "
                  "files are not worked here; give --concurrency")  # fmt: skip
        raise typer.Exit(EXIT_USAGE)

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("everlook.stylize").info(
            "%s: finishing the current batch, putting running style jobs back, stopping",
            signal.Signals(signum).name,
        )
        style.stop()
        if watcher is not None:
            watcher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kinds = ", ".join(k for k, on in (("files", watcher is not None),
                                       (f"style jobs ({style.opts.concurrency} at a time)",
                                        style.opts.concurrency > 0)) if on)  # fmt: skip
    err.print(f"worker {style.owner}: running {kinds}; Ctrl-C to stop", highlight=False)
    styling = None
    if style.opts.concurrency > 0:
        styling = threading.Thread(target=style.run_forever, name="everlook-style-jobs",
                                   daemon=True)  # fmt: skip
        styling.start()
    if watcher is not None:
        watcher.work_forever()
        err.print(f"worker ended: {summary(watcher.totals)}")
    if styling is not None:
        styling.join()


@app.command()
def jobs(
    state: Annotated[list[str] | None, Opt("--state", help="Only jobs in this state.")] = None,
    cancel: Annotated[int | None, Opt("--cancel", help="Cancel this job.")] = None,
    limit: Annotated[int, Opt("--limit", min=1, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, Opt("--json", help="Print as JSON.")] = False,
) -> None:  # fmt: skip
    """Style-transfer jobs, newest first (or cancel one)."""
    from catalog.stylejobs import JobStateError, StyleQueue

    parts = _parts()
    queue = StyleQueue(parts.catalog.engine)
    if cancel is not None:
        try:
            job = queue.cancel(cancel)
        except KeyError:
            raise _fail_config(LookupError(f"no style job {cancel}")) from None
        except JobStateError as exc:
            raise _fail_config(exc) from None
        out.print(f"style job {cancel}: {job['state']}"
                  + (" (stops at its next step)" if job["state"] == "running" else ""))  # fmt: skip
        return
    try:
        rows = queue.list(state or (), limit)
    except ValueError as exc:
        raise _fail_config(exc) from None
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out.print("no style jobs")
        return
    for j in rows:
        st = j["style"]
        what = st["artist"] or (f"item {st['item_id']}" if st["item_id"] else "an upload")
        done = f"{j['step']}/{j['total']}"
        tail = f"  {escape(j['error'])}" if j["error"] else ""
        out.print(f"{j['id']:>5}  {j['state']:<9}  {done:>9}  item {j['item_id']} in the "
                  f"style of {escape(what)}{tail}")  # fmt: skip
