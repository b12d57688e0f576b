"""The query engine: text, image or catalog item in; ranked items with their paths out."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from search.embedders import Embedder
from search.present import Hit
from search.query import MAX_DEPTH, Cursor, compose, parse
from search.spaces import Modal

if TYPE_CHECKING:  # a cold query runs the engine over catalog.lite, without SQLAlchemy
    from catalog import Catalog
    from catalog.filters import Filters
    from search.index_sync import VectorIndex

# How much a stored label named by a text query adds to an item's score, times the
# label's probability: enough to lift a confidently labelled item past near-ties
# (cosine similarities of CLIP text-image pairs sit around 0.2-0.35), never enough to
# put an unrelated picture above a clearly better match.
LABEL_BOOST = 0.05


class SearchEngine(Modal):
    def __init__(self, embedder: Embedder, index: VectorIndex, catalog: Catalog) -> None:
        """For text queries without filters (everlook.quick), the index may be a bare
        VectorStore and the catalog a LiteCatalog: both answer what such a query asks
        (search; paths_for and items_labelled_in) alike."""
        self.embedder = embedder
        self.index = index
        self.catalog = catalog

    # What search.spaces.pick reads to choose an engine for a query.
    @property
    def name(self) -> str:
        return str(getattr(self.embedder, "space", "clip"))  # tests may pass no embedder

    def ranked(
        self, vector: np.ndarray, n: int, filters: Filters | None = None,
        exclude: Sequence[int] = (), label_text: str | None = None,
        allow: set[int] | None = None,
    ) -> list[tuple[int, float]]:  # fmt: skip
        """The n best (item id, score) pairs for vector, best first, ties by id.

        With filters, the store searches only the items they admit (an exact
        allow-list, or `allow` when the caller computed it), so the top n are exactly
        the best matching n. With label_text, items whose stored labels (ImageNet
        classes from the labels stage) the text names are also found, and gain
        LABEL_BOOST x the label's probability."""
        skip = set(exclude)
        if allow is None and filters is not None and filters.active():
            allow = self.allowed(filters, skip)
        if allow is not None and not allow:
            return []
        q = vector.reshape(1, -1)
        scores = dict(self._top(q, n + (0 if allow is not None else len(skip)), allow))
        for i in skip:
            scores.pop(i, None)
        # Stored labels are CLIP's (zero-shot ImageNet): they boost CLIP's scores only.
        named = (
            self.catalog.items_labelled_in(label_text) if label_text and self.name == "clip" else {}
        )
        boost = (set(named) - skip if allow is None else set(named) & allow) if named else set()
        if boost:
            self._boost(q, n, scores, named, boost)
        return sorted(scores.items(), key=lambda p: (-p[1], p[0]))[:n]

    def allowed(self, filters: Filters, skip: Collection[int] = ()) -> set[int]:
        return set(self.catalog.filter_ids(filters)).difference(skip)

    def _top(self, q: np.ndarray, n: int, allow: set[int] | None) -> list[tuple[int, float]]:
        """At least the n best, and every item tied with the n-th: FAISS keeps an
        arbitrary one of equal scores at its cutoff (identical pictures are common:
        re-saves, edited metadata), so the search widens until the item after the
        cutoff scores strictly less, and ties are then ordered by id."""
        order = sorted(allow) if allow is not None else None
        m = n + 1
        while True:
            raw = self.index.search(q, m, allow=order)[0]
            if len(raw) < m or n == 0 or raw[-1][1] < raw[n - 1][1]:
                return raw
            m *= 2

    def _boost(
        self, q: np.ndarray, n: int, scores: dict[int, float], named: dict[int, float],
        boost: set[int],
    ) -> None:  # fmt: skip
        """Add the labelled items that can reach the top n once boosted. A labelled item
        below the fetched ones scores at most (last raw score + the largest boost), so
        the search among them widens until that bound falls below the n-th score."""
        most = LABEL_BOOST * max(named[i] for i in boost)
        base = dict(scores)
        m = n
        while True:
            raw = self._top(q, m, boost)
            merged = {**base, **dict(raw)}
            for i in boost & merged.keys():
                merged[i] += LABEL_BOOST * named[i]
            finals = sorted(merged.values(), reverse=True)
            nth = finals[n - 1] if len(finals) >= n else float("-inf")
            if len(raw) < m or raw[-1][1] + most < nth:
                scores.clear()
                scores.update(merged)
                return
            m *= 2

    def page(
        self, vector: np.ndarray, k: int, after: Cursor | None = None,
        min_score: float | None = None, filters: Filters | None = None,
        exclude: Sequence[int] = (), label_text: str | None = None,
    ) -> tuple[list[Hit], Cursor | None]:  # fmt: skip
        """A page of k hits ranking after the cursor, and the cursor of the next page
        (None at the end). The search fetches as deep as the cursor says pages went,
        plus this page, and goes deeper only if items were removed meanwhile."""
        n = (after.seen if after else 0) + k + 1
        allow = None
        if filters is not None and filters.active():
            allow = self.allowed(filters, exclude)  # once per page, not per widening
        while True:
            pairs = self.ranked(vector, n, filters, exclude, label_text, allow)
            rest = [(i, s) for i, s in pairs if after is None or after.admits(i, s)]
            if min_score is not None:
                rest = [(i, s) for i, s in rest if s >= min_score]
            exhausted = len(pairs) < n or (min_score is not None and pairs[-1][1] < min_score)
            # A cursor deeper than any page could go (a forged one) stops here.
            if len(rest) > k or exhausted or n > MAX_DEPTH + k + 1:
                break
            n *= 2
        shown = rest[:k]
        nxt = None
        depth = (after.seen if after else 0) + len(shown)
        if len(rest) > k and shown and depth < MAX_DEPTH:
            last_id, last_score = shown[-1]
            nxt = Cursor(last_score, last_id, (after.seen if after else 0) + len(shown))
        return self._hits(shown), nxt

    def newest(
        self, filters: Filters, k: int, after: Cursor | None = None
    ) -> tuple[list[Hit], Cursor | None]:
        """A page of the items the filters admit, newest first, with no score."""
        ids = self.catalog.browse.newest_ids(filters, after.item_id if after else None, k + 1)
        shown = ids[:k]
        nxt = None
        if len(ids) > k:
            nxt = Cursor(None, shown[-1], (after.seen if after else 0) + len(shown))
        return self._hits([(i, float("nan")) for i in shown]), nxt

    def text_vector(
        self, text: str, negative_weight: float, image: np.ndarray | None = None,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, str]:  # fmt: skip
        """The query vector of text (with its -negatives, see search.query) and of an
        image vector when given; and the positive words, for the label boost. `embed`
        stands in for the embedder's embed_texts (the API batches waiting queries)."""
        q = parse(text)
        texts = ([q.positive] if q.positive else []) + q.negatives
        run = embed or self.embedder.embed_texts
        vecs = list(run(texts)) if texts else []
        positives = vecs[:1] if q.positive else []
        if image is not None:
            positives.append(image)
        negatives = vecs[1:] if q.positive else vecs
        return compose(positives, negatives, negative_weight), q.positive

    def by_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        exclude: Sequence[int] = (),
        filters: Filters | None = None,
    ) -> list[Hit]:
        return self.page(vector, k, None, min_score, filters, exclude)[0]

    def by_text(
        self, text: str, k: int = 10, min_score: float | None = None,
        filters: Filters | None = None, negative_weight: float = 0.5,
    ) -> list[Hit]:  # fmt: skip
        """Nearest items to the text (with its -negatives); items whose stored labels
        the positive words name gain LABEL_BOOST x the label's probability."""
        vec, words = self.text_vector(text, negative_weight)
        return self.page(vec, k, None, min_score, filters, (), words or None)[0]

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
        vec = self.item_vector(item_id)
        return self.by_vector(vec, k, min_score, exclude=[item_id], filters=filters)

    def by_audio(
        self, waveform: np.ndarray, k: int = 10, min_score: float | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:  # fmt: skip
        """Items that go with a sound (mono float32 at the embedder's audio rate)."""
        return self.by_vector(self.audio_vector(waveform), k, min_score, (), filters)

    def audio_vector(self, waveform: np.ndarray) -> np.ndarray:
        if "audio" not in self.embedder.modalities:
            raise ValueError(f"the {self.name} space does not embed sound")
        emb: Any = self.embedder
        return np.asarray(emb.embed_audio([waveform])[0], dtype=np.float32)

    def item_vector(self, item_id: int) -> np.ndarray:
        stored = self.catalog.embedding(item_id, self.embedder.space, self.embedder.model_id)
        if stored is None:
            raise LookupError(f"item {item_id} has no {self.embedder.model_id} embedding")
        return np.frombuffer(stored[1], dtype=np.float32)

    def by_filters(self, filters: Filters, k: int = 10) -> list[Hit]:
        """No query, only filters: the matching items, newest first (highest id)."""
        return self.newest(filters, k)[0]

    def _hits(self, pairs: Sequence[tuple[int, float]]) -> list[Hit]:
        paths = self.catalog.paths_for([i for i, _ in pairs])
        return [Hit(i, s, paths.get(i, [])) for i, s in pairs]
