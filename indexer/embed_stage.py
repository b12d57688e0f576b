"""The embedding stage of a space: ``embed/<space>``.

CLIP vectors of pictures are made inline by the pipeline (an item is searchable the moment
it is indexed). Every other space (ImageBind), and a newly configured model of any space
while it backfills, embeds through this stage: over decoded pictures and audio waveforms,
storing vectors in the catalog with the stage's status in one transaction, then adding
the active model's vectors to the space's index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from catalog.results import StageOutput
from indexer.stages import Work
from search.embedders import Embedder
from search.index_sync import VectorIndex
from search.spaces import kinds_for

HasVectors = Callable[[str, str, Sequence[int]], set[int]]  # (space, model, ids) -> have


class EmbedStage:
    needs = "media"  # the decoded picture, or the audio waveform, by the item's kind

    def __init__(
        self,
        space: str,
        models: Sequence[tuple[Embedder, VectorIndex | None]],
        has_vectors: HasVectors | None = None,
    ) -> None:
        """models: (embedder, its index or None). The last one's id is the stage's model
        id (the target while switching); a model with an index is the active one."""
        if not models:
            raise ValueError("an embedding stage needs at least one model")
        self.space = space
        self.name = f"embed/{space}"
        self.models = list(models)
        self.has_vectors = has_vectors
        modalities: frozenset[str] = frozenset()
        for emb, _ in self.models:
            modalities |= frozenset(emb.modalities)
        self.kinds = kinds_for(modalities)
        # The pictures are resized to input_side on their short side: keep enough pixels.
        self.image_side = 2 * max(int(getattr(e, "input_side", 224)) for e, _ in self.models)

    @property
    def model_id(self) -> str:
        return str(self.models[-1][0].model_id)

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        outs = {w.item_id: StageOutput(space=self.space) for w in batch}
        for emb, index in self.models:
            todo = list(batch)
            if index is not None and len(self.models) > 1 and self.has_vectors is not None:
                # While switching, the active model has embedded most items already.
                have = self.has_vectors(self.space, emb.model_id, [w.item_id for w in batch])
                todo = [w for w in batch if w.item_id not in have]
            for w, vec in self._embed(emb, todo):
                outs[w.item_id].vectors[emb.model_id] = vec.astype(np.float32).tobytes()
        return [outs[w.item_id] for w in batch]

    @staticmethod
    def _embed(emb: Embedder, works: Sequence[Work]) -> list[tuple[Work, np.ndarray]]:
        pictures = [(w, w.image) for w in works if w.kind == "image" and w.image is not None]
        sounds = [w for w in works if w.kind == "audio" and w.audio is not None]
        got: list[tuple[Work, np.ndarray]] = []
        if pictures and "image" in emb.modalities:
            vecs = emb.embed_images([img for _, img in pictures])
            got += zip([w for w, _ in pictures], vecs, strict=True)
        if sounds and "audio" in emb.modalities:
            embed_audio = getattr(emb, "embed_audio")  # noqa: B009 (beyond the base protocol)
            got += zip(sounds, embed_audio([w.audio for w in sounds]), strict=True)
        return got

    def after_save(self, outputs: Mapping[int, StageOutput]) -> None:
        """Stored in the catalog: now searchable through the active model's index."""
        for emb, index in self.models:
            if index is None:
                continue
            rows = [(i, o.vectors[emb.model_id]) for i, o in outputs.items()
                    if emb.model_id in o.vectors]  # fmt: skip
            if rows:
                ids = np.array([i for i, _ in rows], dtype=np.int64)
                index.add(ids, np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows]))

    def remove(self, item_ids: Sequence[int]) -> None:
        for _, index in self.models:
            if index is not None:
                index.remove(list(item_ids))

    def save(self) -> None:
        for _, index in self.models:
            if index is not None:
                index.save()
