"""The worker that runs style-transfer jobs from the catalog's queue.

It runs inside `everlook serve` (a thread) and as `everlook worker` (a process), any
number at once: each job is claimed under a lease that every step renews, so cancel
takes effect within one step and a killed worker's job is taken over (DESIGN 3).

Files, all under the data dir: ``stylize/results/<job>.png`` (with its provenance in a
PNG text chunk and in ``<job>.json`` beside it), ``stylize/previews/<job>.jpg`` (the
picture so far, every few steps), ``stylize/uploads/<sha256>.png`` (uploaded styles).
A result added to the library is indexed from where it lies: an item of its own, marked
derived through its job, never picked up by a scan of the library folders.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from catalog import Catalog
from catalog.stylejobs import StyleQueue, new_owner
from indexer.media import Limits, MediaError, decode_image, read_file

log = logging.getLogger("everlook.stylize")
PROVENANCE_KEY = "everlook:provenance"


@dataclass(frozen=True)
class WorkerOptions:
    lease_seconds: float = 30.0
    concurrency: int = 1
    preview_every: int = 10  # steps between intermediate pictures
    poll_seconds: float = 1.0


def stylize_dir(home: Path) -> Path:
    return home / "stylize"


def result_path(home: Path, job_id: int) -> Path:
    return stylize_dir(home) / "results" / f"{job_id}.png"


def preview_path(home: Path, job_id: int) -> Path:
    return stylize_dir(home) / "previews" / f"{job_id}.jpg"


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def job_settings(
    defaults: dict[str, Any], asked: dict[str, Any], max_side: int, max_steps: int
) -> dict[str, Any]:
    """A job's settings: the defaults with what a request asked (None: not asked), held
    to the server's limits and validated. ValueError names the field."""
    from enrich.stylize import StyleSettings

    given = {k: v for k, v in asked.items() if v is not None}
    if given.get("side", 0) > max_side:
        raise ValueError(f"side: at most {max_side} px here (EVERLOOK_STYLIZE_MAX_SIDE)")
    if given.get("steps", 0) > max_steps:
        raise ValueError(f"steps: at most {max_steps} here (EVERLOOK_STYLIZE_MAX_STEPS)")
    return dict(StyleSettings.from_dict({**defaults, **given}).as_dict())


def check_picture(catalog: Catalog, item_id: int, what: str) -> None:
    """LookupError if item_id is not in the library; ValueError if it is not a picture."""
    kind = catalog.items_of_kind([item_id]).get(item_id)
    if kind is None:
        raise LookupError(f"no item with id {item_id}")
    if kind != "image":
        raise ValueError(f"the {what} item {item_id} is {kind}, not a picture")


def style_source(
    catalog: Catalog, queue: StyleQueue, home: Path, min_artwork: float, *,
    item_id: int | None = None, artist: str | None = None, picture: Image.Image | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A job's style fields from its one source (the API and the CLI both ask here):
    a library picture, an artist (the library's strongest artwork of that style), or a
    picture given now (kept under the data dir). LookupError / ValueError say why not."""
    if item_id is not None:
        check_picture(catalog, item_id, "style")
        return {"style_kind": "item", "style_item_id": item_id}
    if artist is not None:
        exemplar = queue.exemplar(artist, min_artwork)
        if exemplar is None:
            raise LookupError(f"no artwork in the library is scored as {artist}'s style")
        return {"style_kind": "artist", "style_artist": artist, "style_item_id": exemplar}
    if picture is None:
        raise ValueError("give exactly one style: an item, an artist or a picture")
    rel, sha = save_upload(home, picture)
    return {"style_kind": "upload", "style_file": rel, "style_sha256": sha}


def save_upload(home: Path, image: Image.Image) -> tuple[str, str]:
    """Keep an uploaded style picture (re-encoded as PNG: only pixels are kept, nothing
    of the uploaded file's own bytes). Returns (path relative to home, sha256)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    rel = Path("stylize") / "uploads" / f"{sha}.png"
    if not (home / rel).exists():
        _write_atomic(home / rel, data)
    return str(rel), sha


class StyleWorker:
    """Claims and runs jobs. ``transfer`` is an enrich.stylize.StyleTransfer (its model
    loads on the first job); ``index_back`` hands a result file to whoever indexes the
    library (the watcher's queue, or a pipeline this process owns)."""

    def __init__(
        self, catalog: Catalog, queue: StyleQueue, transfer: Any, home: Path, limits: Limits,
        options: WorkerOptions | None = None,
        index_back: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.catalog = catalog
        self.queue = queue
        self.transfer = transfer
        self.home = home
        self.limits = limits
        self.opts = options or WorkerOptions()
        self.index_back = index_back
        self.owner = new_owner()
        self.stop_event = threading.Event()

    # ---- loops ------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Work jobs with opts.concurrency threads until stop()."""
        try:
            released = self.queue.release_dead()
            if released:
                log.info("took back %d style job(s) of a worker that is gone", released)
        except Exception:  # the catalog busy a moment: the leases still run out
            log.exception("could not look for style jobs of workers that are gone")
        threads = [threading.Thread(target=self._loop, name=f"everlook-stylize-{i}",
                                    daemon=True) for i in range(self.opts.concurrency)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _loop(self) -> None:
        # Each thread is an owner of its own: two threads of one worker must not take
        # each other's job when a lease runs out (a claim checks the owner it saw).
        owner = self.owner if self.opts.concurrency == 1 else new_owner()
        while not self.stop_event.is_set():
            try:
                ran = self.run_one(owner=owner)
            except Exception:  # the catalog unreachable a moment: keep the worker alive
                log.exception("the style worker met an error; going on")
                ran = False
            if not ran:
                self.stop_event.wait(self.opts.poll_seconds)

    def stop(self) -> None:
        self.stop_event.set()

    def run_one(self, job_id: int | None = None, owner: str | None = None) -> bool:
        """Claim one job (or job_id) and run it to its end. False if none was claimable."""
        owner = owner or self.owner
        job = self.queue.claim(owner, self.opts.lease_seconds, job_id=job_id)
        if job is None:
            return False
        held = threading.Event()
        # The lease is renewed beside the work too, not only at steps: the first job
        # loads (or downloads) VGG-19, and one step of a big picture on a CPU can take
        # longer than a lease; neither may let another worker take a live job.
        beat = threading.Thread(target=self._heartbeat, args=(job["id"], owner, held),
                                name=f"everlook-lease-{job['id']}", daemon=True)  # fmt: skip
        beat.start()
        try:
            self._run(job, owner)
        finally:
            held.set()
            beat.join()
            preview_path(self.home, job["id"]).unlink(missing_ok=True)
        return True

    def _heartbeat(self, job_id: int, owner: str, held: threading.Event) -> None:
        every = self.opts.lease_seconds / 3
        while not held.wait(every):
            try:
                self.queue.renew(job_id, owner, self.opts.lease_seconds)
            except Exception:
                log.exception("renewing the lease of style job %d failed", job_id)

    # ---- one job ----------------------------------------------------------------------
    def _run(self, job: dict[str, Any], owner: str) -> None:
        from enrich.stylize import Cancelled, StyleSettings
        from search.model_base import ModelUnavailable

        jid, t0 = job["id"], time.monotonic()
        log.info("style job %d: item %s, attempt %d", jid, job["item_id"], job["attempts"])
        try:
            settings = StyleSettings.from_dict(job["settings"])
            content = self._content(job)
            style = self._style(job)
            result = self.transfer.run(content, style, settings, self._on_step(job, owner))
            rel, sha = self._save_result(job, result)
        except Cancelled:
            if self.stop_event.is_set():  # shutting down: back to the queue for the next
                self.queue.release(jid, owner)
                log.info("style job %d put back in the queue (stopping)", jid)
            else:
                self.queue.cancelled(jid, owner, seconds=time.monotonic() - t0)
                log.info("style job %d cancelled", jid)
            return
        except (MediaError, LookupError, ValueError) as exc:  # the job's own inputs: final
            self.queue.fail(jid, owner, str(exc), seconds=time.monotonic() - t0)
            log.warning("style job %d failed: %s", jid, exc)
            return
        except ModelUnavailable as exc:  # no weights: every job would fail alike
            self.queue.fail(jid, owner, str(exc), seconds=time.monotonic() - t0)
            log.error("style job %d: %s", jid, exc)
            return
        except Exception as exc:  # out of memory, a full disk...: worth another attempt
            log.exception("style job %d failed", jid)
            self.queue.fail(jid, owner, f"{type(exc).__name__}: {exc}", retry=True,
                            seconds=time.monotonic() - t0)  # fmt: skip
            return
        seconds = time.monotonic() - t0
        if self.queue.finish(jid, owner, result_file=rel, result_sha256=sha,
                             model_id=result.model_id, seconds=seconds):  # fmt: skip
            log.info("style job %d done in %.1f s: %s", jid, seconds, rel)
            now = self.queue.get(jid)  # "add to library" may have been asked while it ran
            if now is not None and now["add_to_library"]:
                self.add_to_library(rel)

    def add_to_library(self, rel: str) -> None:
        if self.index_back is not None:
            self.index_back(str(self.home / rel))

    def _on_step(self, job: dict[str, Any], owner: str) -> Callable[[Any], bool]:
        jid, every = job["id"], max(1, self.opts.preview_every)

        def on_step(info: Any) -> bool:
            if self.stop_event.is_set():
                return False
            shown = None
            if info.step % every == 0 and info.step < info.total:
                buf = io.BytesIO()
                info.image().save(buf, "JPEG", quality=85)
                _write_atomic(preview_path(self.home, jid), buf.getvalue())
                shown = info.step
            return self.queue.progress(jid, owner, info.step, self.opts.lease_seconds,
                                       preview_step=shown)  # fmt: skip

        return on_step

    def _picture(self, item_id: int | None, what: str) -> Image.Image:
        paths = self.catalog.paths_for([item_id]).get(item_id, []) if item_id else []
        if not paths:
            raise LookupError(f"the {what} picture (item {item_id or 'since deleted'}) is no "
                              "longer in the library")  # fmt: skip
        problems = []
        for p in paths:
            try:
                return decode_image(read_file(p, self.limits).data, self.limits).image
            except MediaError as exc:
                problems.append(str(exc))
        raise MediaError(f"the {what} item {item_id} cannot be read: {'; '.join(problems)}")

    def _content(self, job: dict[str, Any]) -> Image.Image:
        return self._picture(job["item_id"], "content")

    def _style(self, job: dict[str, Any]) -> Image.Image:
        style = job["style"]
        if style["file"]:
            raw = read_file(str(self.home / style["file"]), self.limits)
            return decode_image(raw.data, self.limits).image
        return self._picture(style["item_id"], "style")

    def _save_result(self, job: dict[str, Any], result: Any) -> tuple[str, str]:
        """The picture with its provenance inside (PNG text) and beside it (JSON)."""
        prov = provenance(job, result, self.catalog.paths_for([job["item_id"]]))
        text = json.dumps(prov, sort_keys=True)
        info = PngImagePlugin.PngInfo()
        info.add_itxt(PROVENANCE_KEY, text)
        buf = io.BytesIO()
        result.image.save(buf, "PNG", pnginfo=info)
        data = buf.getvalue()
        dest = result_path(self.home, job["id"])
        _write_atomic(dest, data)
        _write_atomic(dest.with_suffix(".json"), (text + "\n").encode())
        return str(dest.relative_to(self.home)), hashlib.sha256(data).hexdigest()


def provenance(job: dict[str, Any], result: Any, paths: dict[int, list[str]]) -> dict[str, Any]:
    style = job["style"]
    return {
        "job": job["id"],
        "content": {"item_id": job["item_id"], "sha256": job["item_sha256"],
                    "paths": [os.fsencode(p).decode("utf-8", "backslashreplace")
                              for p in paths.get(job["item_id"], [])]},
        "style": {"kind": style["kind"], "item_id": style["item_id"],
                  "artist": style["artist"], "sha256": style["sha256"]},
        "settings": job["settings"], "model_id": result.model_id, "device": result.device,
        "steps": result.steps, "seconds": round(result.seconds, 3),
        "style_loss": [result.first_style_loss, result.last_style_loss],
        "content_loss": [result.first_content_loss, result.last_content_loss],
    }  # fmt: skip
