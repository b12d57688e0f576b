"""The query engine: text, image or catalog item in; ranked items with their paths out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from catalog import Catalog
from search.embedders import Embedder
from search.index_sync import VectorIndex


@dataclass(frozen=True)
class Hit:
    item_id: int
    score: float
    paths: list[str]


class SearchEngine:
    def __init__(self, embedder: Embedder, index: VectorIndex, catalog: Catalog) -> None:
        self.embedder = embedder
        self.index = index
        self.catalog = catalog

    def by_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        exclude: Sequence[int] = (),
    ) -> list[Hit]:
        skip = set(exclude)
        raw = self.index.store.search(vector.reshape(1, -1), k + len(skip))[0]
        pairs = [(i, s) for i, s in raw if i not in skip][:k]
        if min_score is not None:
            pairs = [(i, s) for i, s in pairs if s >= min_score]
        paths = self.catalog.paths_for([i for i, _ in pairs])
        return [Hit(i, s, paths.get(i, [])) for i, s in pairs]

    def by_text(self, text: str, k: int = 10, min_score: float | None = None) -> list[Hit]:
        return self.by_vector(self.embedder.embed_texts([text])[0], k, min_score)

    def by_image(
        self, image: Image.Image, k: int = 10, min_score: float | None = None
    ) -> list[Hit]:
        return self.by_vector(self.embedder.embed_images([image])[0], k, min_score)

    def by_item(self, item_id: int, k: int = 10, min_score: float | None = None) -> list[Hit]:
        """More like this item (the item itself left out)."""
        stored = self.catalog.embedding(item_id, self.embedder.space)
        if stored is None or stored[0] != self.embedder.model_id:
            raise LookupError(f"item {item_id} has no {self.embedder.model_id} embedding")
        vec = np.frombuffer(stored[1], dtype=np.float32)
        return self.by_vector(vec, k, min_score, exclude=[item_id])
