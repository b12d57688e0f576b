"""The query engine: text, image or catalog item in; ranked items with their paths out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from catalog import Catalog
from catalog.filters import Filters
from search.embedders import Embedder
from search.index_sync import VectorIndex

# How much a stored label named by a text query adds to an item's score, times the
# label's probability: enough to lift a confidently labelled item past near-ties
# (cosine similarities of CLIP text-image pairs sit around 0.2-0.35), never enough to
# put an unrelated picture above a clearly better match.
LABEL_BOOST = 0.05


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
        filters: Filters | None = None,
    ) -> list[Hit]:
        """The k best items for vector. With filters, the store searches only the items
        they admit (an exact allow-list), so the top k are exactly the best matching k."""
        skip = set(exclude)
        allow: list[int] | None = None
        if filters is not None and filters.active():
            allow = [i for i in self.catalog.filter_ids(filters) if i not in skip]
            if not allow:
                return []
            raw = self.index.store.search(vector.reshape(1, -1), k, allow=allow)[0]
            pairs = raw[:k]
        else:
            raw = self.index.store.search(vector.reshape(1, -1), k + len(skip))[0]
            pairs = [(i, s) for i, s in raw if i not in skip][:k]
        if min_score is not None:
            pairs = [(i, s) for i, s in pairs if s >= min_score]
        return self._hits(pairs)

    def by_text(
        self, text: str, k: int = 10, min_score: float | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:  # fmt: skip
        """Nearest items to the text; items whose stored labels (ImageNet classes from
        the labels stage) the text names are also found, and gain LABEL_BOOST x the
        label's probability on top of their cosine similarity."""
        vec = self.embedder.embed_texts([text])[0]
        hits = self.by_vector(vec, k, None, (), filters)
        named = self.catalog.items_labelled_in(text)
        if not named:
            return [h for h in hits if min_score is None or h.score >= min_score]
        allow = set(named)
        if filters is not None and filters.active():
            allow &= set(self.catalog.filter_ids(filters))
        raw = self.index.store.search(vec.reshape(1, -1), k, allow=sorted(allow))[0]
        scores = {h.item_id: h.score for h in hits}
        scores.update({i: s for i, s in raw})
        boosted = sorted(
            ((i, s + LABEL_BOOST * named.get(i, 0.0)) for i, s in scores.items()),
            key=lambda p: -p[1],
        )[:k]
        if min_score is not None:
            boosted = [(i, s) for i, s in boosted if s >= min_score]
        return self._hits(boosted)

    def by_image(
        self, image: Image.Image, k: int = 10, min_score: float | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:  # fmt: skip
        return self.by_vector(self.embedder.embed_images([image])[0], k, min_score, (), filters)

    def by_item(
        self, item_id: int, k: int = 10, min_score: float | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:  # fmt: skip
        """More like this item (the item itself left out)."""
        stored = self.catalog.embedding(item_id, self.embedder.space)
        if stored is None or stored[0] != self.embedder.model_id:
            raise LookupError(f"item {item_id} has no {self.embedder.model_id} embedding")
        vec = np.frombuffer(stored[1], dtype=np.float32)
        return self.by_vector(vec, k, min_score, exclude=[item_id], filters=filters)

    def by_filters(self, filters: Filters, k: int = 10) -> list[Hit]:
        """No query, only filters: the matching items, newest first (highest id)."""
        ids = self.catalog.filter_ids(filters)[::-1][:k]
        return self._hits([(i, float("nan")) for i in ids])

    def _hits(self, pairs: Sequence[tuple[int, float]]) -> list[Hit]:
        paths = self.catalog.paths_for([i for i, _ in pairs])
        return [Hit(i, s, paths.get(i, [])) for i, s in pairs]
