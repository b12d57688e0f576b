"""The embedding stages of a space: ``embed/<space>`` and ``embed/<space>:next``.

CLIP vectors of pictures are made inline by the pipeline (an item is searchable the moment
it is indexed). Every other space's active model (ImageBind) embeds through
``embed/<space>``: over decoded pictures and audio waveforms, storing vectors in the
catalog with the stage's status in one transaction, then adding them to the space's
index. A newly configured model of any space backfills through ``embed/<space>:next``,
a stage of its own: its failures (missing weights, an item it cannot take) never hold
back the active model, and its vectors are stored, not indexed, until the switch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from catalog.results import StageOutput
from indexer.stages import Work
from search.embedders import Embedder
from search.index_sync import VectorIndex
from search.spaces import kinds_for

HasVectors = Callable[[str, str, Sequence[int]], set[int]]  # (space, model, ids) -> have


class EmbedStage:
    needs = "media"  # the decoded picture, or the sound, by the item's kind

    def __init__(
        self,
        space: str,
        embedder: Embedder,
        index: VectorIndex | None,
        has_vectors: HasVectors | None = None,
    ) -> None:
        """index: the space's index when this is its active model; None for a model
        that backfills (stage ``embed/<space>:next``)."""
        self.space = space
        self.embedder = embedder
        self.index = index
        self.name = f"embed/{space}" if index is not None else f"embed/{space}:next"
        self.has_vectors = has_vectors
        self.kinds = kinds_for(frozenset(embedder.modalities))
        # Pictures keep a long side of 4x the model's input: the model resizes the short
        # side to its input, so even a 4:1 panorama keeps enough pixels.
        self.image_side = 4 * int(getattr(embedder, "input_side", 224))

    @property
    def model_id(self) -> str:
        return str(self.embedder.model_id)

    def prepare_audio(self, waveform: np.ndarray) -> Any:
        """Done where the sound is decoded (a worker thread): the model's clips instead of
        the whole waveform, so an hour-long recording waiting for its batch holds a few
        hundred kilobytes, not 230 MB."""
        prepare = getattr(self.embedder, "preprocess_audio")  # noqa: B009 (audio models)
        return prepare(waveform)

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        outs = {w.item_id: StageOutput(space=self.space) for w in batch}
        todo = list(batch)
        if self.has_vectors is not None:
            # Content is keyed by its hash: a vector this model made once (before a
            # switch back, a prune of stage rows, a crash after commit) is still right.
            have = self.has_vectors(self.space, self.model_id, [w.item_id for w in batch])
            todo = [w for w in batch if w.item_id not in have]
        for w, vec in self._embed(todo):
            outs[w.item_id].vectors[self.model_id] = vec.astype(np.float32).tobytes()
        return [outs[w.item_id] for w in batch]

    def _embed(self, works: Sequence[Work]) -> list[tuple[Work, np.ndarray]]:
        emb: Any = self.embedder
        pictures = [(w, w.image) for w in works if w.kind == "image" and w.image is not None]
        sounds = [w for w in works if w.kind == "audio" and w.audio is not None]
        got: list[tuple[Work, np.ndarray]] = []
        if pictures and "image" in emb.modalities:
            vecs = emb.embed_images([img for _, img in pictures])
            got += zip([w for w, _ in pictures], vecs, strict=True)
        if sounds and "audio" in emb.modalities:
            ready = [w for w in sounds if w.audio_ready]
            raw = [w for w in sounds if not w.audio_ready]
            if ready:
                vecs = emb.embed_audio_preprocessed([w.audio for w in ready])
                got += zip(ready, vecs, strict=True)
            if raw:
                got += zip(raw, emb.embed_audio([w.audio for w in raw]), strict=True)
        return got

    def after_save(self, outputs: Mapping[int, StageOutput]) -> None:
        """Stored in the catalog: now searchable through the space's index."""
        if self.index is None:
            return
        rows = [(i, o.vectors[self.model_id]) for i, o in outputs.items()
                if self.model_id in o.vectors]  # fmt: skip
        if rows:
            ids = np.array([i for i, _ in rows], dtype=np.int64)
            self.index.add(ids, np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows]))

    def remove(self, item_ids: Sequence[int]) -> None:
        if self.index is not None:
            self.index.remove(list(item_ids))

    def save(self) -> None:
        if self.index is not None:
            self.index.save()
