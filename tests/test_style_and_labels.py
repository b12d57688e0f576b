"""Artist-style scores, the artwork score and zero-shot labels (enrich.style, .zeroshot).

Meaning is tested with the project's demo model on held-out synthetic pictures: its five
drawing styles stand in for artists, its shapes for user labels. The mechanics (prompt
cache, probabilities, provenance, label lists) use a fake embedder that counts calls.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enrich.prompts import PromptCache, as_percent
from enrich.style import (
    DEFAULT_ARTISTS,
    DEFAULT_ARTWORK_PROMPTS,
    DEFAULT_PHOTO_PROMPTS,
    ArtistStyleScorer,
    shown_styles,
)
from enrich.zeroshot import (
    ZeroShotClassifier,
    clean_labels,
    imagenet_labels,
    openai_imagenet_templates,
    parse_labels,
    simple_imagenet_templates,
)
from tools import synthworld

# --- a fake embedder: deterministic text vectors, and a count of what it was asked -----


class CountingEmbedder:
    """Counts embed_texts calls. Each text maps to a fixed random unit vector, or, given
    a real embedder to wrap, to that embedder's vector under its model id."""

    space = "clip"
    dim = 16
    input_side = 32

    def __init__(self, model_id: str = "fake/counting/v0", inner: Any = None) -> None:
        self.inner = inner
        self._model_id = model_id if inner is None else str(inner.model_id)
        self.calls = 0
        self.texts = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        if self.inner is not None:
            return np.asarray(self.inner.embed_texts(texts))
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)

    def preprocess(self, image: Any) -> Any:
        raise NotImplementedError

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError


def random_items(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- the demo world's test configuration ------------------------------------------------

# The demo model learned "a stippled artwork of two red stars", "line art of a moon",
# "a photo of a blue square", "a green circle" (tools/synthworld.py captions), so the
# artwork side names styled subjects and the photo side plain ones; words it never saw
# ("painting of a landscape") would mean nothing to it.
_COLOURS = list(synthworld.COLOURS)
DEMO_ARTWORK_PROMPTS = [
    f"a {style} artwork of a {colour} {shape}" if style != "line art"
    else f"line art of a {colour} {shape}"
    for style in synthworld.STYLES for colour in _COLOURS for shape in synthworld.SHAPES
]  # fmt: skip
DEMO_PHOTO_PROMPTS = [
    text for colour in _COLOURS for shape in synthworld.SHAPES
    for text in (f"a photo of a {colour} {shape}", f"a {colour} {shape}")
]  # fmt: skip
DEMO_SHAPE_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a {}")
# Temperature: the library's 0.01 although the demo model learned a scale of 20.6, not
# CLIP's 100, as a deployment would run it.


def demo_scorer(embedder: Any, cache_dir: Path | None = None) -> ArtistStyleScorer:
    return ArtistStyleScorer(
        embedder,
        list(synthworld.STYLES),
        templates=("a {} artwork",),
        top_k=3,
        cache_dir=cache_dir,
        artwork_prompts=DEMO_ARTWORK_PROMPTS,
        photo_prompts=DEMO_PHOTO_PROMPTS,
    )


@dataclass
class DemoWorld:
    embedder: Any
    cache_dir: Path  # prompt embeddings shared by the tests, as a deployment's would be
    artworks: np.ndarray  # held-out artworks' image embeddings
    art_styles: list[str]
    pictures: np.ndarray  # held-out plain shape pictures' image embeddings
    picture_shapes: list[str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    """The demo model and embeddings of held-out pictures (seeds training never used)."""
    import search.embedders as embedders
    from tools.eval_demo_model import embed, held_out_artworks, held_out_pictures

    emb = embedders.create("clip", model_name="everlook-demo", pretrained="v1", device="cpu")
    arts = held_out_artworks(per_style=24)  # 120 artworks, 24 of each style
    pics = held_out_pictures(144)  # every colour-shape pair three times
    return DemoWorld(
        emb,
        tmp_path_factory.mktemp("prompt-cache"),
        embed(emb, [a for a, _ in arts]),
        [s.style for _, s in arts],
        embed(emb, [p for p, _ in pics]),
        [s.shape for _, s in pics],
    )


# --- meaning, with the demo model ------------------------------------------------------


@pytest.mark.slow
def test_drawing_styles_standing_in_for_artists_are_told_apart_on_held_out_artworks(
    demo: DemoWorld,
) -> None:
    results = demo_scorer(demo.embedder, demo.cache_dir).score(demo.artworks)
    top1 = [next(lb.label for lb in labels if lb.kind == "style") for labels in results]
    accuracy = np.mean([p == t for p, t in zip(top1, demo.art_styles, strict=True)])
    assert len(results) >= 100
    assert accuracy >= 0.9, f"style accuracy {accuracy:.3f}"


@pytest.mark.slow
def test_plain_shape_pictures_get_a_low_artwork_score_and_artworks_a_high_one(
    demo: DemoWorld,
) -> None:
    scorer = demo_scorer(demo.embedder, demo.cache_dir)
    _, p_art_artworks = scorer.probabilities(demo.artworks)
    _, p_art_plain = scorer.probabilities(demo.pictures)
    assert p_art_plain.mean() < 0.3, f"plain pictures' mean P(artwork) {p_art_plain.mean():.3f}"
    assert p_art_artworks.mean() > 0.7, f"artworks' mean P(artwork) {p_art_artworks.mean():.3f}"
    assert p_art_artworks.mean() - p_art_plain.mean() > 0.5
    # ...so the intended filter keeps the style labels of artworks and drops the plain ones'.
    shown = [bool(shown_styles(labels)) for labels in scorer.score(demo.pictures)]
    assert np.mean(shown) < 0.2


@pytest.mark.slow
def test_zero_shot_with_user_labels_ranks_the_right_shape_first(demo: DemoWorld) -> None:
    classifier = ZeroShotClassifier(
        demo.embedder, templates=DEMO_SHAPE_TEMPLATES, cache_dir=demo.cache_dir
    )
    ranked = classifier.classify(demo.pictures, list(synthworld.SHAPES))
    accuracy = np.mean([r[0][0] == s for r, s in zip(ranked, demo.picture_shapes, strict=True)])
    assert accuracy >= 0.9, f"shape accuracy {accuracy:.3f}"


@pytest.mark.slow
def test_demo_style_scores_come_from_the_disk_cache_in_a_later_process(
    demo: DemoWorld, tmp_path: Path
) -> None:
    first = demo_scorer(demo.embedder, tmp_path).score(demo.artworks[:5])
    # A new scorer over a fresh embedder object stands in for the next process.
    counting = CountingEmbedder(inner=demo.embedder)
    again = demo_scorer(counting, tmp_path).score(demo.artworks[:5])
    assert counting.calls == 0
    assert again == first


# --- the prompt cache --------------------------------------------------------------------


def test_a_second_cache_over_the_same_folder_reads_the_prompt_embeddings_from_disk(
    tmp_path: Path,
) -> None:
    first = CountingEmbedder()
    a = PromptCache(first, tmp_path).for_labels(["a photo of a {}", "a {}"], ["cat", "dog"])
    assert first.calls >= 1 and first.texts == 4
    second = CountingEmbedder()
    b = PromptCache(second, tmp_path).for_labels(["a photo of a {}", "a {}"], ["cat", "dog"])
    assert second.calls == 0
    np.testing.assert_array_equal(a, b)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temporary file left


def test_one_cache_embeds_each_prompt_set_only_once_in_a_process() -> None:
    emb = CountingEmbedder()
    cache = PromptCache(emb)  # memory only
    cache.for_labels(["a {}"], ["cat", "dog"])
    cache.for_labels(["a {}"], ["cat", "dog"])
    assert emb.calls == 1


def test_class_embeddings_are_normalised_means_of_their_prompts() -> None:
    emb = CountingEmbedder()
    got = PromptCache(emb).for_labels(["a photo of a {}", "art of a {}"], ["cat"])
    want = emb.embed_texts(["a photo of a cat", "art of a cat"]).mean(axis=0)
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)


def test_a_corrupt_cache_file_is_recomputed_and_rewritten(tmp_path: Path) -> None:
    good = PromptCache(CountingEmbedder(), tmp_path).for_labels(["a {}"], ["cat", "dog"])
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not a numpy file")
    emb = CountingEmbedder()
    again = PromptCache(emb, tmp_path).for_labels(["a {}"], ["cat", "dog"])
    assert emb.calls == 1
    np.testing.assert_array_equal(good, again)
    with np.load(path) as data:  # rewritten whole
        assert data["embeddings"].shape == (2, 16)


def test_a_cache_file_made_for_other_prompts_is_not_trusted(tmp_path: Path) -> None:
    PromptCache(CountingEmbedder(), tmp_path).for_labels(["a {}"], ["cat", "dog"])
    (path,) = tmp_path.iterdir()
    # Another model's file under this name (as if copied between machines): its stored
    # key no longer matches, so it is recomputed.
    other = tmp_path / "other"
    PromptCache(CountingEmbedder("fake/other/v1"), other).for_labels(["a {}"], ["cat", "dog"])
    os.replace(next(other.iterdir()), path)
    emb = CountingEmbedder()
    PromptCache(emb, tmp_path).for_labels(["a {}"], ["cat", "dog"])
    assert emb.calls == 1


def test_another_model_or_label_list_gets_its_own_cache_file(tmp_path: Path) -> None:
    PromptCache(CountingEmbedder(), tmp_path).for_labels(["a {}"], ["cat", "dog"])
    emb = CountingEmbedder("fake/other/v1")
    PromptCache(emb, tmp_path).for_labels(["a {}"], ["cat", "dog"])
    PromptCache(emb, tmp_path).for_labels(["a {}"], ["cat", "bird"])
    assert emb.calls == 2
    assert len(list(tmp_path.iterdir())) == 3


def test_an_unwritable_cache_folder_only_costs_recomputing(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    got = PromptCache(CountingEmbedder(), blocker / "cache").for_labels(["a {}"], ["a", "b"])
    assert got.shape == (2, 16)


# --- scores as probabilities -------------------------------------------------------------


def test_style_scores_are_top_k_probabilities_in_descending_order_then_the_artwork_score() -> None:
    scorer = ArtistStyleScorer(CountingEmbedder(), top_k=4)
    results = scorer.score(random_items(20))
    assert len(results) == 20
    for labels in results:
        styles = [lb for lb in labels if lb.kind == "style"]
        assert [lb.kind for lb in labels] == ["style"] * 4 + ["artwork"]
        assert labels[-1].label == "artwork" and 0.0 <= labels[-1].score <= 1.0
        scores = [lb.score for lb in styles]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-9
        assert {lb.label for lb in styles} <= set(DEFAULT_ARTISTS)
    p_style, p_art = scorer.probabilities(random_items(20))
    np.testing.assert_allclose(p_style.sum(axis=1), 1.0, rtol=1e-9)
    assert p_art.shape == (20,)


def test_one_vector_is_scored_as_one_item_and_a_wrong_dimension_is_refused() -> None:
    scorer = ArtistStyleScorer(CountingEmbedder())
    assert len(scorer.score(random_items(1)[0])) == 1
    with pytest.raises(ValueError, match="dimension 16"):
        scorer.score(random_items(3, dim=8))


def test_zero_shot_ranks_every_label_with_probabilities_summing_to_one() -> None:
    ranked = ZeroShotClassifier(CountingEmbedder(), templates=["a {}"]).classify(
        random_items(5), ["cat", "dog", "bird"]
    )
    for row in ranked:
        assert sorted(name for name, _ in row) == ["bird", "cat", "dog"]
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1.0) < 1e-9


def test_style_labels_are_shown_only_for_likely_artworks() -> None:
    from catalog.results import Label

    styles = [Label("style", "Claude Monet", 0.7), Label("style", "Edgar Degas", 0.2)]
    assert shown_styles([*styles, Label("artwork", "artwork", 0.9)]) == styles
    assert shown_styles([*styles, Label("artwork", "artwork", 0.1)]) == []


def test_scores_print_as_percentages() -> None:
    assert as_percent(0.8734) == "87.3%"
    assert as_percent(1.0, digits=0) == "100%"
    assert as_percent(0.0004) == "0.0%"


# --- provenance --------------------------------------------------------------------------


def test_changing_the_artist_list_changes_the_style_model_id_without_loading_a_model() -> None:
    emb = CountingEmbedder()
    base = ArtistStyleScorer(emb).model_id
    assert base.startswith("fake/counting/v0+style:")
    assert ArtistStyleScorer(emb).model_id == base
    assert ArtistStyleScorer(emb, [*DEFAULT_ARTISTS, "Hilma af Klint"]).model_id != base
    assert ArtistStyleScorer(emb, temperature=0.02).model_id != base
    assert ArtistStyleScorer(emb, templates=["art by {}"]).model_id != base
    assert emb.calls == 0  # lazy: prompts are embedded on first score, not before


def test_the_imagenet_model_id_names_the_embedder_and_its_prompts() -> None:
    emb = CountingEmbedder()
    base = ZeroShotClassifier(emb).model_id
    assert base.startswith("fake/counting/v0+imagenet:")
    assert ZeroShotClassifier(emb, templates=simple_imagenet_templates()).model_id != base
    assert ZeroShotClassifier(emb, top_k=3).model_id != base
    assert emb.calls == 0


def test_top_imagenet_labels_are_stored_as_imagenet_labels(tmp_path: Path) -> None:
    classifier = ZeroShotClassifier(
        CountingEmbedder(), templates=["a photo of a {}."], cache_dir=tmp_path
    )
    results = classifier.top_imagenet(random_items(3))
    for labels in results:
        assert len(labels) == 5 and {lb.kind for lb in labels} == {"imagenet"}
        assert {lb.label for lb in labels} <= set(imagenet_labels())
        assert [lb.score for lb in labels] == sorted((lb.score for lb in labels), reverse=True)
    assert len(classifier.top_imagenet(random_items(2), k=2)[0]) == 2


# --- label lists -------------------------------------------------------------------------


def test_the_default_artist_list_names_at_least_25_painters_across_movements() -> None:
    assert len(set(DEFAULT_ARTISTS)) == len(DEFAULT_ARTISTS) >= 25
    for name in ("Claude Monet", "Vincent van Gogh", "Henri Matisse", "Pablo Picasso",
                 "Katsushika Hokusai", "Johannes Vermeer", "Frida Kahlo", "Jackson Pollock",
                 "Edvard Munch", "J. M. W. Turner"):  # fmt: skip
        assert name in DEFAULT_ARTISTS
    assert len(DEFAULT_ARTWORK_PROMPTS) > 1 and len(DEFAULT_PHOTO_PROMPTS) > 1


def test_imagenet_labels_and_templates_are_the_ones_open_clip_ships() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench"
    assert len(openai_imagenet_templates()) == 80
    assert len(simple_imagenet_templates()) == 7
    assert all(t.count("{}") == 1 for t in openai_imagenet_templates())
    assert "a bad photo of a {}." in openai_imagenet_templates()


def test_user_labels_are_stripped_deduplicated_and_empties_dropped() -> None:
    assert parse_labels(" cat, dog,,Cat , bird ,") == ["cat", "dog", "bird"]
    assert clean_labels(["a red car", "a red car ", "a bicycle"]) == ["a red car", "a bicycle"]


@pytest.mark.parametrize("labels", ["", "cat", "cat, cat", " , ,"])
def test_fewer_than_two_labels_is_a_clear_error(labels: str) -> None:
    with pytest.raises(ValueError, match="at least two different labels"):
        parse_labels(labels)
    with pytest.raises(ValueError, match="at least two"):
        ZeroShotClassifier(CountingEmbedder(), templates=["a {}"]).classify(
            random_items(1), labels.split(",")
        )


def test_a_scorer_needs_two_artists_and_templates_with_a_place_for_the_name() -> None:
    with pytest.raises(ValueError, match="two distinct artists"):
        ArtistStyleScorer(CountingEmbedder(), ["Claude Monet", " Claude Monet "])
    with pytest.raises(ValueError, match="'\\{\\}'"):
        ArtistStyleScorer(CountingEmbedder(), templates=["a painting"])
