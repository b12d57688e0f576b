"""Stages over items: the unit of enrichment work is (item, stage).

A stage says its name, its model id (provenance), which item kinds it takes and what
input it needs: the decoded picture (``image``) or the item's CLIP vector (``clip``).
The catalog tracks pending/done/failed per (item, stage); the :class:`StageRunner` runs
batches, isolates a failing item from its batch, records results in one transaction per
batch, and backfills whatever is pending (a stage enabled later, a model changed, a
failure with attempts left).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from catalog import Catalog
from catalog.results import StageOutput
from indexer.audio import decode_audio
from indexer.media import Limits, MediaError, decode_image, printable, read_file
from search.model_base import ModelUnavailable

log = logging.getLogger("everlook.stages")

PIXELS = ("image", "media")  # stages that look at the decoded picture
AUDIO_RATE = 16_000  # Hz: what ImageBind's audio tower takes (the only audio model)


@dataclass
class Work:
    """One item handed to a stage: its picture, its sound (mono float32 waveform at
    AUDIO_RATE) and/or its CLIP vector, as the stage needs."""

    item_id: int
    kind: str = "image"
    image: Image.Image | None = None
    vector: np.ndarray | None = None
    audio: Any = None  # the waveform, or (audio_ready) what the stage's prepare_audio made
    audio_ready: bool = False


@runtime_checkable
class Stage(Protocol):
    name: str  # "detect/yolo", "panoptic", "style", "labels"
    kinds: frozenset[str]  # item kinds it takes
    # "image" (decoded RGB picture), "clip" (the item's CLIP vector) or "media" (the
    # picture or the sound, by the item's kind)
    needs: str
    image_side: int  # long side the picture must keep for this stage (0: no pixels)

    @property
    def model_id(self) -> str: ...

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        """One output per input, same order. Raising fails the batch (then each item
        is retried alone, so one bad item fails alone)."""
        ...


_REGISTRY: dict[str, Callable[..., Stage]] = {}


def register(name: str) -> Callable[[Callable[..., Stage]], Callable[..., Stage]]:
    def deco(factory: Callable[..., Stage]) -> Callable[..., Stage]:
        _REGISTRY[name] = factory
        return factory

    return deco


def create(name: str, **kwargs: Any) -> Stage:
    if name not in _REGISTRY:
        import indexer.enrich_stages  # noqa: F401  (registers the built-in stages)
    try:
        return _REGISTRY[name](**kwargs)
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(available())}") from None


def available() -> list[str]:
    import indexer.enrich_stages  # noqa: F401

    return sorted(_REGISTRY)


@dataclass
class RunStats:
    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # stage -> why (config)

    def add(self, stage: str, done: int, failed: int) -> None:
        self.done[stage] = self.done.get(stage, 0) + done
        self.failed[stage] = self.failed.get(stage, 0) + failed


class StageRunner:
    """Runs enrichment stages on batches of items and records the outcome."""

    def __init__(
        self,
        stages: Sequence[Stage],
        catalog: Catalog,
        limits: Limits | None = None,
        max_attempts: int = 3,
        batch_size: int = 16,
        workers: int = 2,
        clip_model_id: str = "",
    ) -> None:
        self.stages = list(stages)
        self.catalog = catalog
        self.limits = limits or Limits()
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.workers = workers
        self.clip_model_id = clip_model_id  # which stored vectors "clip" stages read
        self.stats = RunStats()
        self._cursor: dict[str, int] = {}
        self._turn = 0  # which live stage backfill_step offers work to first

    @property
    def image_side(self) -> int:
        """Long side a decoded picture must keep for every enabled image stage."""
        return max((s.image_side for s in self.live() if s.needs in PIXELS), default=0)

    def takes(self, kind: str) -> bool:
        """Whether a live stage works on items of this kind."""
        return any(kind in s.kinds for s in self.live())

    def live(self, needs: str | None = None) -> list[Stage]:
        return [
            s for s in self.stages
            if s.name not in self.stats.unavailable and (needs is None or s.needs == needs)
        ]  # fmt: skip

    # ---- one batch -----------------------------------------------------------------------
    def run_batch(self, works: Sequence[Work]) -> None:
        """Every live stage on the works it takes; results stored per stage and batch."""
        for stage in self.live():
            todo = [w for w in works if w.kind in stage.kinds and _has_input(stage, w)]
            if todo:
                # Content re-embedded (a new CLIP model, changed bytes of a known item)
                # keeps the results of stages whose own model did not change.
                done = self.catalog.stages.settled(
                    stage.name, stage.model_id, [w.item_id for w in todo], self.max_attempts
                )
                todo = [w for w in todo if w.item_id not in done]
            if todo:
                self._run_stage(stage, todo)

    def _run_stage(self, stage: Stage, todo: Sequence[Work]) -> None:
        try:
            model_id = stage.model_id
            outputs = dict(zip([w.item_id for w in todo], stage.run(todo), strict=True))
            failures: dict[int, str] = {}
        except ModelUnavailable as exc:
            return self._unavailable(stage, exc)
        except Exception:
            try:
                outputs, failures = self._one_by_one(stage, todo)
            except ModelUnavailable as exc:
                return self._unavailable(stage, exc)
            model_id = stage.model_id
        written = self.catalog.stages.save(stage.name, model_id, outputs, failures)
        after_save = getattr(stage, "after_save", None)
        kept = {i: o for i, o in outputs.items() if i in written}
        if after_save is not None and kept:
            after_save(kept)  # e.g. vectors into the space's index, once stored
        self.stats.add(stage.name, len(outputs), len(failures))

    def remove_from_indexes(self, item_ids: Sequence[int]) -> None:
        for stage in self.stages:
            remove = getattr(stage, "remove", None)
            if remove is not None:
                remove(item_ids)

    def save_indexes(self) -> None:
        """Save the vector indexes stages keep (a space's index besides CLIP's)."""
        for stage in self.stages:
            save = getattr(stage, "save", None)
            if save is not None:
                save()

    def _unavailable(self, stage: Stage, exc: ModelUnavailable) -> None:
        # A configuration problem, not the items': this stage stops for the run, the
        # others go on, and its work stays pending.
        self.stats.unavailable[stage.name] = str(exc)
        log.error("stage %s is unavailable: %s", stage.name, exc)

    def _one_by_one(
        self, stage: Stage, todo: Sequence[Work]
    ) -> tuple[dict[int, StageOutput], dict[int, str]]:
        outputs: dict[int, StageOutput] = {}
        failures: dict[int, str] = {}
        for w in todo:
            try:
                outputs[w.item_id] = stage.run([w])[0]
            except ModelUnavailable:
                raise
            except Exception as exc:
                failures[w.item_id] = f"{type(exc).__name__}: {exc}"
                log.warning("stage %s failed on item %d: %s", stage.name, w.item_id, exc)
        return outputs, failures

    # ---- backfill ------------------------------------------------------------------------
    def pending(self, stage: Stage) -> dict[str, int]:
        return self.catalog.stages.progress(
            stage.name, stage.model_id, stage.kinds, self.max_attempts
        )

    def backfill(
        self, only: Sequence[str] | None = None, progress: Callable[[str, int], None] | None = None
    ) -> RunStats:
        """Do every pending (item, stage): stages enabled later, models changed, retries."""
        for stage in self.live():
            if only and stage.name not in only:
                continue
            for batch in self._pending_batches(stage):
                works = self._inputs(stage, batch)
                if works:
                    self._run_stage(stage, works)
                if stage.name in self.stats.unavailable:
                    break
                if progress:
                    progress(stage.name, len(batch))
        return self.stats

    def backfill_step(self) -> bool:
        """A little pending work (the watcher calls this when idle): one batch of a stage
        over CLIP vectors, or two pictures of a stage over pixels (a panoptic batch on a
        CPU takes minutes, and new files must not wait that long). True when something
        ran. Each stage keeps a cursor, so items it cannot take yet never spin the loop."""
        live = self.live()
        # Stages take turns (round robin): days of ImageBind backfill must not starve
        # detection or labels of the watcher's idle time, nor the other way round.
        start = self._turn % len(live) if live else 0
        for stage in live[start:] + live[:start]:
            after = self._cursor.get(stage.name, 0)
            limit = self.batch_size if stage.needs == "clip" else 2
            ids = self._pending(stage, limit, after)
            if not ids:
                self._cursor[stage.name] = 0  # next time, start over from the first item
                continue
            self._cursor[stage.name] = ids[-1]
            # Several workers see the same pending items: each takes those no other
            # holds, and drops what another stored while it looked.
            book = self.catalog.stages
            claimed = book.claim(stage.name, ids)
            try:
                done = book.settled(stage.name, stage.model_id, claimed, self.max_attempts)
                mine = [i for i in claimed if i not in done]
                works = self._inputs(stage, mine) if mine else []
                if works:
                    self._run_stage(stage, works)
                    self._turn = live.index(stage) + 1
                    return True
            finally:
                book.unclaim(stage.name, claimed)
        return False

    def _pending(self, stage: Stage, limit: int, after: int) -> list[int]:
        # A stage over CLIP vectors only sees items embedded by the current CLIP model.
        embedded = ("clip", self.clip_model_id) if stage.needs == "clip" else None
        return self.catalog.stages.pending(
            stage.name, stage.model_id, stage.kinds, self.max_attempts, limit, after,
            embedded=embedded,
        )  # fmt: skip

    def _pending_batches(self, stage: Stage) -> Iterator[list[int]]:
        after = 0
        while True:
            ids = self._pending(stage, self.batch_size, after)
            if not ids:
                return
            yield ids
            after = ids[-1]

    def _inputs(self, stage: Stage, ids: list[int]) -> list[Work]:
        kinds = self.catalog.items_of_kind(ids)
        if stage.needs == "clip":
            vecs = self._vectors(ids)
            # An item not embedded yet is not a failure: it comes back once it is.
            return [Work(i, kinds.get(i, "image"), vector=vecs[i]) for i in ids if i in vecs]
        paths = self.catalog.paths_for(ids)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            got = list(pool.map(
                lambda i: self._decode(i, kinds.get(i, "image"), paths.get(i, []), stage), ids
            ))  # fmt: skip
        works, failures = [], {}
        for item_id, res in zip(ids, got, strict=True):
            kind = kinds.get(item_id, "image")
            if isinstance(res, str):
                failures[item_id] = res
            elif isinstance(res, Image.Image):
                works.append(Work(item_id, kind, image=res))
            else:
                works.append(Work(item_id, kind, audio=res, audio_ready=prepares(stage)))
        if failures:
            self.catalog.stages.save(stage.name, stage.model_id, {}, failures)
            self.stats.add(stage.name, 0, len(failures))
        return works

    def _vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for rows in self.catalog.iter_embeddings("clip", self.clip_model_id, only=ids):
            for item_id, vec in rows:
                out[item_id] = np.frombuffer(vec, dtype=np.float32)
        return out

    def _decode(self, item_id: int, kind: str, paths: list[str], stage: Stage) -> Any:
        """The item's picture (or sound: prepared by the stage when it can, in this worker
        thread) from the first of its paths that decodes, or the reason (a str)."""
        why = "no path left for this item"
        for path in paths:
            # Escaped: a name that is not UTF-8 cannot go into a text column as is.
            where = printable(path)
            try:
                raw = read_file(path, self.limits)
                if kind == "audio":
                    samples = decode_audio(raw.data, self.limits, AUDIO_RATE).samples
                    prepare = getattr(stage, "prepare_audio", None)  # e.g. the model's clips
                    return prepare(samples) if prepare is not None else samples
                return shrink(decode_image(raw.data, self.limits, self.image_side).image,
                              self.image_side)  # fmt: skip
            except MediaError as exc:
                why = f"{where}: {exc}"
            except Exception as exc:  # a decoder bug is this item's failure, not the run's
                why = f"{where}: unexpected error: {type(exc).__name__}: {exc}"
        return why


def prepares(stage: Stage) -> bool:
    return callable(getattr(stage, "prepare_audio", None))


def _has_input(stage: Stage, w: Work) -> bool:
    if stage.needs == "media":
        return (w.audio if w.kind == "audio" else w.image) is not None
    return (w.image is not None) if stage.needs == "image" else (w.vector is not None)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """Bound the long side (keeps memory flat while a batch waits for its stages)."""
    if side and max(image.size) > side:
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.BICUBIC)
    return image
