"""The indexing pipeline: scan, sort out what changed, decode in a pool, embed in batches.

Decoding (read + SHA-256 + JPEG draft decode + model preprocessing) runs in a thread
pool ahead of the model, so while the model embeds batch N the pool prepares batch
N+1. Pillow, hashlib and torch release the GIL in their heavy loops, so threads suffice.

Each batch is stored in one catalog transaction; the vector index follows and is saved
now and then. A crash at any point loses nothing: unchanged files are skipped next run,
and the index is reconciled with the catalog when it is opened.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalog import Catalog, KnownPath, NewItem
from indexer.audio import decode_audio
from indexer.media import Limits, MediaError, RawFile, decode_image, read_file
from indexer.scan import Found, Problem, ScanRules, check_file, scan
from indexer.sniff import sniff_audio
from indexer.stages import AUDIO_RATE, StageRunner, Work, shrink
from search.embedders import Embedder, ModelUnavailable
from search.index_sync import VectorIndex

# Sounds up to this long wait for their batch's embedding stage as waveforms (3.8 MB at
# 16 kHz); longer ones are embedded by the stage's backfill right after the run, which
# keeps only the model's clips (an hour waiting in the decode window would be 230 MB).
INLINE_AUDIO_SECONDS = 60.0


@dataclass
class Report:
    scanned: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    duplicates: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned, "unchanged": self.unchanged, "new": self.new,
            "changed": self.changed, "moved": self.moved, "duplicates": self.duplicates,
            "removed": self.removed,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
        }  # fmt: skip


@dataclass(frozen=True)
class PipelineOptions:
    limits: Limits = field(default_factory=Limits)
    rules: ScanRules = field(default_factory=ScanRules)
    batch_size: int = 32
    workers: int = 0  # 0: one per CPU core
    draft: bool = True
    save_every: int = 2000
    gpu_decode: bool = True  # nvJPEG when the model runs on CUDA (indexer.gpu_decode.route)


@dataclass
class _Prepared:
    """What a worker hands back for one file."""

    found: Found
    sha256: str = ""
    size: int = 0
    tensor: Any = None  # a picture, prepared for the CLIP model
    image: Any = None  # the decoded picture, kept for enrichment stages of this batch
    audio: Any = None  # an audio item's waveform (AUDIO_RATE, mono), for its embed stage
    item: NewItem | None = None
    error: str | None = None
    attach: bool = False  # content already embedded: only record the path
    jpeg: bytes | None = None  # decoded on the GPU with its batch (indexer.gpu_decode)


ProgressFn = Callable[[int, int], None]  # (done, total)


class Pipeline:
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        catalog: Catalog,
        options: PipelineOptions | None = None,
        stages: StageRunner | None = None,
        inline_stages: bool = True,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.catalog = catalog
        self.opts = options or PipelineOptions()
        # Enrichment stages run on each batch right after its embeddings are stored (the
        # items are searchable first), reusing the pictures decoded for embedding. The
        # watcher turns inline off and backfills when idle, to keep new files quick.
        self.stages = stages
        self.inline_stages = inline_stages and stages is not None
        self.stage = f"embed/{embedder.space}"
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self._embedded: set[int] = set()
        self._changed = False  # this run added to or removed from a vector index
        self._gpu: Any = None  # gpu_decode.EvalTransform when nvJPEG decodes the batches

    # ---- workers -------------------------------------------------------------------
    def _prepare(self, found: Found, draft_side: int | None) -> _Prepared:
        out = _Prepared(found)
        try:
            raw = read_file(found.path, self.opts.limits)
            out.sha256, out.size = raw.sha256, raw.size
            with self._lock:
                first = raw.sha256 not in self._claimed
                self._claimed.add(raw.sha256)
            if not first:
                out.attach = True  # same bytes as a file earlier in this run
                return out
            known = self.catalog.item_ids_by_sha([raw.sha256]).get(raw.sha256)
            if known is not None and self._needs_nothing(known):
                out.attach = True
                return out
            if sniff_audio(raw.data[:64]):
                return self._prepare_audio(out, raw, found)
            if self._gpu is not None and self._take_jpeg(out, raw, found):
                return out
            decoded = decode_image(raw.data, self.opts.limits, draft_side)
            out.tensor = self.embedder.preprocess(decoded.image)
            if self.inline_stages and self.stages is not None and self.stages.image_side:
                out.image = shrink(decoded.image, self.stages.image_side)
            out.item = NewItem(
                sha256=raw.sha256, kind="image", size_bytes=raw.size, path=found.path,
                mtime_ns=raw.mtime_ns, format=decoded.format, width=decoded.width,
                height=decoded.height, meta=decoded.meta, space=self.embedder.space,
                model_id=self.embedder.model_id, dim=self.embedder.dim,
            )  # fmt: skip
        except MediaError as exc:
            out.error = str(exc)
        except ModelUnavailable:
            raise  # the model, not this file, is the problem: stop the run
        except Exception as exc:  # a decoder bug must not stop the run
            out.error = f"unexpected error: {type(exc).__name__}: {exc}"
        return out

    def _prepare_audio(self, out: _Prepared, raw: RawFile, found: Found) -> _Prepared:
        """A sound: catalogued now (kind audio: CLIP does not take it), embedded by the
        spaces that take audio in their stage (ImageBind)."""
        got = decode_audio(raw.data, self.opts.limits, AUDIO_RATE)
        if (self.inline_stages and self.stages is not None and self.stages.takes("audio")
                and got.duration_s <= INLINE_AUDIO_SECONDS):  # fmt: skip
            out.audio = got.samples
        out.item = NewItem(
            sha256=out.sha256, kind="audio", size_bytes=out.size, path=found.path,
            mtime_ns=raw.mtime_ns, format=got.format,
            meta={"duration_s": round(got.duration_s, 3), "sample_rate": got.sample_rate,
                  "channels": got.channels},
        )  # fmt: skip
        return out

    # ---- the runs --------------------------------------------------------------------
    def run(
        self, roots: Sequence[str], progress: ProgressFn | None = None, save: bool = True
    ) -> Report:
        """Bring the catalog in step with everything under roots (a full scan).

        What is unchanged costs a stat and a look-up in one indexed range read of the
        catalog's paths under roots: no read, no hash, no model, no vector index (those
        load when the first file needs them). save=False leaves saving the vector
        index to the caller (the watcher saves when idle); it is saved only if changed."""
        report = Report()
        roots = [os.path.abspath(r) for r in roots]
        known, todo, gone, problems, seen = self._plan(roots, report)
        self._work(todo, known, {known[p].item_id for p in gone}, report, progress)
        self._finish(problems, gone, report, everywhere=True)
        self.catalog.forget_failures_under(roots, keep=seen)
        if save and self._changed:
            self.save_indexes()
        return report

    def plan(self, roots: Sequence[str]) -> tuple[list[Found], list[str], list[str], Report]:
        """What a run over roots would do, without doing it (no read, no model, no
        write): the files to index (new or changed), the catalog paths gone from disk,
        and the paths that could not be looked at (a worker records why, and prunes
        what they leave behind, as for any file it is given). A watcher that leaves the
        work to `everlook worker` processes queues these."""
        report = Report()
        roots = [os.path.abspath(r) for r in roots]
        _known, todo, gone, problems, _seen = self._plan(roots, report)
        return todo, gone, [path for path, _why in problems], report

    def _plan(
        self, roots: list[str], report: Report
    ) -> tuple[dict[str, KnownPath], list[Found], list[str], list[tuple[str, str]], set[str]]:
        known = self._begin(roots)
        todo: list[Found] = []
        seen: set[str] = set()
        problems: list[tuple[str, str]] = []
        for got in scan(roots, self.opts.rules):
            seen.add(got.path)
            if isinstance(got, Problem):
                problems.append((got.path, got.reason))
            else:
                self._sort(got, known, todo, report)
        rules = self.opts.rules
        gone = [p for p in known if p not in seen and not rules.skipped(p)]
        return known, todo, gone, problems, seen

    @property
    def changed(self) -> bool:
        """Whether the last run changed a vector index (added or removed vectors)."""
        return self._changed

    def run_files(self, paths: Sequence[str], removed_dirs: Sequence[str] = ()) -> Report:
        """Index exactly these files (the watcher's batches): a path that no longer
        exists is removed; removed_dirs drop every catalog path under them. The index
        is not saved here; the caller decides when (saving is O(index size))."""
        report = Report()
        paths = [os.path.abspath(p) for p in paths]
        known = self._begin(paths)
        todo: list[Found] = []
        problems: list[tuple[str, str]] = []
        gone: list[str] = []
        for path in paths:
            got = check_file(path, self.opts.rules)
            if got is None:
                if path in known:
                    gone.append(path)
            elif isinstance(got, Problem):
                problems.append((got.path, got.reason))
            else:
                self._sort(got, known, todo, report)
        for folder in removed_dirs:
            gone.extend(self.catalog.known_paths([os.path.abspath(folder)]))
        gone_items = {known[p].item_id for p in gone if p in known}
        self._work(todo, known, gone_items, report, None)
        self._finish(problems, gone, report)
        return report

    def prune_everywhere(self) -> list[int]:
        """Items left with no path anywhere go, with their vectors (see _finish)."""
        removed = self.catalog.prune_orphans(True)
        if removed:
            self.index.remove(removed)
            if self.stages is not None:
                self.stages.remove_from_indexes(removed)
        return removed

    def save_indexes(self) -> None:
        """Save CLIP's index and those of the other spaces (kept by their stages)."""
        self.index.save()
        if self.stages is not None:
            self.stages.save_indexes()

    def _begin(self, roots: Sequence[str]) -> dict[str, KnownPath]:
        """Set up a run over roots (folders, or a watcher batch's files): the catalog's
        paths under them, each saying whether its item needs anything from us."""
        # Duplicate detection is per run: content seen in an earlier run may have been
        # deleted since, and a watcher's pipeline lives for weeks.
        self._claimed = set()
        self._changed = False
        # Items that need nothing from this pipeline: pictures with the CLIP vector of
        # the active model, and sounds (their vectors come from their spaces' stages).
        # Asked about the items under roots only, in the same read as their paths: a
        # run's cost must not grow with the catalog. Other items (content met under a
        # new path) are asked about one by one (_needs_nothing).
        known = self.catalog.known_paths(roots, (self.embedder.space, self.embedder.model_id))
        self._embedded = {kp.item_id for kp in known.values() if kp.ready}
        return known

    def _needs_nothing(self, item_id: int) -> bool:
        """Whether an existing item (the same bytes as a file met now) is embedded."""
        if item_id in self._embedded:
            return True
        got = self.catalog.embedded_among([item_id], self.embedder.space, self.embedder.model_id)
        with self._lock:
            self._embedded |= got
        return bool(got)

    def _sort(
        self, got: Found, known: dict[str, KnownPath], todo: list[Found], report: Report
    ) -> None:
        report.scanned += 1
        kp = known.get(got.path)
        if kp is not None and kp.ready and kp.size == got.size and kp.mtime_ns == got.mtime_ns:
            report.unchanged += 1
        else:
            todo.append(got)

    def _finish(
        self, problems: list[tuple[str, str]], gone: list[str], report: Report,
        everywhere: bool = False,
    ) -> None:  # fmt: skip
        if problems:
            report.failed.extend(problems)
            self.catalog.record_failures(problems)
        removed_items = self.catalog.remove_paths(gone)
        report.removed = len(gone)
        removed_items += self.catalog.prune_orphans(everywhere)
        if removed_items:
            self._changed = True
            self.index.remove(removed_items)
            if self.stages is not None:
                self.stages.remove_from_indexes(removed_items)

    def _work(
        self,
        todo: list[Found],
        known: dict[str, KnownPath],
        gone_items: set[int],
        report: Report,
        progress: ProgressFn | None,
    ) -> None:
        """Decode in the pool, embed in batches, store each batch in one transaction."""
        attached: list[tuple[_Prepared, bool]] = []  # (result, path was known before)
        batch: list[_Prepared] = []
        failures: list[tuple[str, str]] = []  # recorded with the batch: one transaction
        added_since_save = 0
        draft_side = None
        if self.opts.draft:  # never below 2x the model input, nor below what stages need
            keep = self.stages.image_side if self.inline_stages and self.stages else 0
            draft_side = max(2 * self.embedder.input_side, keep)
        workers = self.opts.workers or os.cpu_count() or 2
        window = 2 * self.opts.batch_size + workers

        def flush() -> None:
            nonlocal added_since_save
            if batch:
                self._embed_pictures(batch, failures, report)
                batch[:] = [p for p in batch if p.item is not None]
                ids = self._store(batch, failures, report)
                batch[:] = [p for p in batch if p.sha256 in ids]
                pictures = [p.item for p in batch if p.item is not None and p.item.vector]
                self._changed = True  # vectors, or the stages' vectors of sounds
                if pictures:
                    self.index.add(
                        np.array([ids[it.sha256] for it in pictures], dtype=np.int64),
                        np.stack([np.frombuffer(it.vector, np.float32) for it in pictures]),
                    )  # fmt: skip
                self._embedded.update(ids[p.sha256] for p in batch)
                if self.inline_stages and self.stages is not None and batch:
                    self.stages.run_batch([self._stage_work(ids[p.sha256], p) for p in batch])
                for p in batch:
                    if p.found.path in known:
                        report.changed += 1
                    else:
                        report.new += 1
                added_since_save += len(batch)
                batch.clear()
            self._flush_attached(attached, known, gone_items, report)
            if failures:
                self.catalog.record_failures(failures)
                failures.clear()
            if added_since_save >= self.opts.save_every:
                self.save_indexes()
                added_since_save = 0

        if not todo:
            return
        # The index opens (and is reconciled with the catalog) before this run writes to
        # the catalog; a run with nothing to embed never loads it.
        _ = self.index.store
        # The model opens on the other core while the rest of the first batch decodes, once
        # a picture needs it: a run of failures, sounds or known content never loads it.
        warm = getattr(self.embedder, "warm_images", None)
        if self.opts.gpu_decode:
            from indexer import gpu_decode

            needs = bool(self.inline_stages and self.stages is not None and self.stages.image_side)
            self._gpu = gpu_decode.route(self.embedder, needs)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending: deque[Future[_Prepared]] = deque()
            it = iter(todo)
            for found in it:
                pending.append(pool.submit(self._prepare, found, draft_side))
                if len(pending) >= window:
                    break
            done = 0
            while pending:
                res = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._prepare, nxt, draft_side))
                done += 1
                if res.error is not None:
                    report.failed.append((res.found.path, res.error))
                    failures.append((res.found.path, res.error))
                elif res.attach:
                    attached.append((res, res.found.path in known))
                else:
                    batch.append(res)
                    if warm is not None and res.tensor is not None:
                        threading.Thread(target=warm, name="model-open", daemon=True).start()
                        warm = None
                if len(batch) >= self.opts.batch_size or len(failures) >= 500:
                    flush()
                if progress:
                    progress(done, len(todo))
            flush()

    def _take_jpeg(self, out: _Prepared, raw: RawFile, found: Found) -> bool:
        from indexer.gpu_decode import take

        head = take(raw, self.opts.limits)
        if head is None:
            return False
        (fmt, (w, h), meta), out.jpeg = head, raw.data
        out.item = NewItem(
            sha256=raw.sha256, kind="image", size_bytes=raw.size, path=found.path,
            mtime_ns=raw.mtime_ns, format=fmt, width=w, height=h, meta=meta,
            space=self.embedder.space, model_id=self.embedder.model_id, dim=self.embedder.dim,
        )  # fmt: skip
        return True

    def _embed_pictures(
        self, batch: list[_Prepared], failures: list[tuple[str, str]], report: Report
    ) -> None:
        jpegs = [p for p in batch if p.jpeg is not None]
        if jpegs:  # nvJPEG, the whole batch at once; what it turns away, the CPU decoders
            from indexer.gpu_decode import pixels_for

            device = str(getattr(self.embedder, "device", "cpu"))

            def on_cpu(data: bytes) -> Any:
                try:
                    img = decode_image(data, self.opts.limits, None).image
                    return self.embedder.preprocess(img).to(device)
                except MediaError as exc:
                    return exc

            rows = pixels_for([p.jpeg for p in jpegs if p.jpeg], self._gpu, device,
                              self.opts.limits, on_cpu)  # fmt: skip
            for p, row in zip(jpegs, rows, strict=True):
                p.jpeg = None
                if isinstance(row, MediaError):
                    p.item = None
                    report.failed.append((p.found.path, str(row)))
                    failures.append((p.found.path, str(row)))
                else:
                    p.tensor = row
        pictures = [p for p in batch if p.tensor is not None and p.item is not None]
        if pictures:
            vecs = self.embedder.embed_preprocessed([p.tensor for p in pictures])
            for p, v in zip(pictures, vecs, strict=True):
                assert p.item is not None
                p.item.vector = np.asarray(v, dtype=np.float32).tobytes()

    @staticmethod
    def _stage_work(item_id: int, p: _Prepared) -> Work:
        assert p.item is not None
        if p.item.kind == "audio":
            return Work(item_id, "audio", audio=p.audio)
        vector = np.frombuffer(p.item.vector, dtype=np.float32)
        return Work(item_id, "image", image=p.image, vector=vector)

    def _store(
        self, batch: list[_Prepared], failures: list[tuple[str, str]], report: Report
    ) -> dict[str, int]:
        """Store a batch in one transaction; if the catalog refuses it, store item by item
        so that one file the database cannot take fails alone."""
        items = [p.item for p in batch if p.item is not None]
        try:
            return self.catalog.add_items(items, self.stage)
        except Exception:
            ids: dict[str, int] = {}
            for one in items:
                try:
                    ids.update(self.catalog.add_items([one], self.stage))
                except Exception as exc:
                    why = f"cannot be stored: {type(exc).__name__}: {exc}"
                    report.failed.append((one.path, why))
                    failures.append((one.path, why))
            return ids

    def _flush_attached(
        self,
        attached: list[tuple[_Prepared, bool]],
        known: dict[str, Any],
        gone_items: set[int],
        report: Report,
    ) -> None:
        if not attached:
            return
        ids = self.catalog.item_ids_by_sha([p.sha256 for p, _ in attached])
        rows, failures = [], []
        for p, was_known in attached:
            item_id = ids.get(p.sha256)
            if item_id is None:  # the first copy of these bytes failed to decode
                failures.append((p.found.path, "same content as another file that failed"))
                continue
            rows.append((p.found.path, item_id, p.found.size, p.found.mtime_ns))
            if was_known:
                report.changed += 1
            elif item_id in gone_items:
                report.moved += 1
            else:
                report.duplicates += 1
        for path in self.catalog.set_paths(rows):
            # Its content's item was pruned by another worker meanwhile: said, and
            # indexed again when the file is next seen (a scan, or a change).
            why = (
                "the item with the same content was removed while this file was read; "
                "it is indexed again at the next scan"
            )
            failures.append((path, why))
        if failures:
            report.failed.extend(failures)
            self.catalog.record_failures(failures)
        attached.clear()
