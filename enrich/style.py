"""Artist-style scores and an "is this an artwork" score, zero-shot in CLIP's space.

Both work on an item's stored CLIP image embedding: one matrix product with cached
prompt-ensemble embeddings, then a softmax. Nothing is decoded.

Intended use: every item gets its top-k artist scores *and* P(artwork). Artist scores
are a softmax over painters only, so a holiday photo still gets a "most likely painter";
that number means something only when the item is an artwork. Anything that shows or
filters by style (a style filter, a label in the UI) should therefore require the
artwork score to be at least ``ARTWORK_THRESHOLD`` first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from catalog.results import Label
from enrich.prompts import PromptCache, as_rows, digest, softmax
from search.embedders import Embedder

# Painters across movements, by the full names under which their work is captioned on
# the web (what CLIP learned from). Configurable: the scorer takes any list.
DEFAULT_ARTISTS: tuple[str, ...] = (
    # Early Netherlandish, Renaissance, Northern Renaissance
    "Jan van Eyck", "Hieronymus Bosch", "Sandro Botticelli", "Leonardo da Vinci",
    "Albrecht Dürer", "Pieter Bruegel the Elder",
    # Baroque and Dutch Golden Age
    "Caravaggio", "Diego Velázquez", "Rembrandt van Rijn", "Johannes Vermeer",
    # Romanticism
    "Francisco Goya", "J. M. W. Turner", "Caspar David Friedrich",
    # Japanese woodblock prints (ukiyo-e)
    "Katsushika Hokusai", "Utagawa Hiroshige",
    # Impressionism and Post-Impressionism
    "Claude Monet", "Pierre-Auguste Renoir", "Edgar Degas", "Georges Seurat",
    "Paul Cézanne", "Paul Gauguin", "Vincent van Gogh", "Henri de Toulouse-Lautrec",
    # Art Nouveau, Symbolism, Expressionism
    "Gustav Klimt", "Egon Schiele", "Edvard Munch",
    # Fauvism, Cubism, abstraction
    "Henri Matisse", "Pablo Picasso", "Wassily Kandinsky", "Piet Mondrian",
    "Kazimir Malevich", "Amedeo Modigliani",
    # Surrealism and its neighbours
    "Salvador Dalí", "René Magritte", "Joan Miró", "Marc Chagall", "Frida Kahlo",
    # American modernism, Abstract Expressionism, Pop, Neo-expressionism
    "Georgia O'Keeffe", "Edward Hopper", "Jackson Pollock", "Mark Rothko",
    "Andy Warhol", "Roy Lichtenstein", "Jean-Michel Basquiat",
)  # fmt: skip

# Ways the web captions a painter's work; each artist is the mean of all of them.
DEFAULT_STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting by {}.",
    "an artwork by {}.",
    "a painting in the style of {}.",
    "an artwork in the style of {}.",
    "art by {}.",
    "a famous painting by {}.",
    "a reproduction of a painting by {}.",
    "a detail of a painting by {}.",
)

# Artwork vs photograph: the same subjects as a painting, drawing, print... and as a
# photo. Each prompt stays a separate direction (see ArtistStyleScorer.probabilities), so
# an item is compared with the prompts nearest its own subject on both sides and the
# contrast left is the medium, not what is shown.
ARTWORK_SUBJECTS: tuple[str, ...] = (
    "a person", "a woman", "a man", "a group of people", "a child", "a landscape",
    "a city street", "a building", "the sea", "mountains", "trees", "flowers", "a dog",
    "a cat", "a bird", "a horse", "a room", "a table with food", "a boat", "the night sky",
)  # fmt: skip
_ARTWORK_TEMPLATES = (
    "a painting of {}.", "an oil painting of {}.", "a watercolor painting of {}.",
    "a drawing of {}.", "a pencil sketch of {}.", "an illustration of {}.",
    "a woodblock print of {}.", "an abstract painting of {}.",
)  # fmt: skip
_PHOTO_TEMPLATES = (
    "a photo of {}.", "a photograph of {}.", "a snapshot of {}.", "a phone photo of {}.",
)  # fmt: skip
DEFAULT_ARTWORK_PROMPTS: tuple[str, ...] = (
    *(t.format(s) for t in _ARTWORK_TEMPLATES for s in ARTWORK_SUBJECTS),
    *("a painting.", "a drawing.", "an artwork.", "fine art."),
)
DEFAULT_PHOTO_PROMPTS: tuple[str, ...] = (
    *(t.format(s) for t in _PHOTO_TEMPLATES for s in ARTWORK_SUBJECTS),
    *("a photo.", "a photograph.", "a snapshot.", "a selfie."),
)

# 1/100: CLIP learns a logit scale that training clamps at 100 (OpenAI's and LAION's
# checkpoints sit there), so dividing cosine similarities by 0.01 gives the
# probabilities the model itself was trained to produce. A higher temperature would
# flatten every score towards 1/len(artists); a lower one would make them all 0 or 1.
DEFAULT_TEMPERATURE = 0.01
# A style label is worth showing or filtering on only for items at least this likely to
# be artworks (P(artwork) from the 2-way softmax).
ARTWORK_THRESHOLD = 0.5


class ArtistStyleScorer:
    """Top-k artist styles and P(artwork) for items, from their CLIP image embeddings.

    ``score`` returns, per item, ``top_k`` labels of kind ``style`` (softmax probability
    over ``artists``, most likely first) followed by one label of kind ``artwork``
    (label ``"artwork"``, P(artwork) against photograph). ``artwork_prompts`` and
    ``photo_prompts`` are full sentences; a deployment whose model knows other words (the
    demo model, a domain-tuned CLIP) passes its own. Prompt embeddings are made on first
    use (the model loads then, not here) and cached per model in ``cache_dir``.
    """

    def __init__(
        self,
        embedder: Embedder,
        artists: Sequence[str] | None = None,
        *,
        templates: Sequence[str] = DEFAULT_STYLE_TEMPLATES,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = 3,
        cache_dir: Path | None = None,
        artwork_prompts: Sequence[str] = DEFAULT_ARTWORK_PROMPTS,
        photo_prompts: Sequence[str] = DEFAULT_PHOTO_PROMPTS,
    ) -> None:
        names = [a.strip() for a in (DEFAULT_ARTISTS if artists is None else artists)]
        names = list(dict.fromkeys(a for a in names if a))
        if len(names) < 2:
            raise ValueError("artist styles need at least two distinct artists to compare")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("style templates must be non-empty and each hold '{}'")
        if not artwork_prompts or not photo_prompts:
            raise ValueError("the artwork score needs both artwork and photo prompts")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.embedder = embedder
        self.artists: tuple[str, ...] = tuple(names)
        self.templates = tuple(templates)
        self.temperature = float(temperature)
        self.top_k = min(top_k, len(names))
        self.artwork_prompts = tuple(artwork_prompts)
        self.photo_prompts = tuple(photo_prompts)
        self.prompts = PromptCache(embedder, cache_dir)
        self._lock = threading.Lock()
        self._classes: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def model_id(self) -> str:
        # Provenance: anything that changes the stored scores changes the id, so editing
        # the artist list re-queues the style stage, and only it.
        h = digest(
            self.artists, self.templates, self.temperature, self.top_k,
            self.artwork_prompts, self.photo_prompts,
        )  # fmt: skip
        return f"{self.embedder.model_id}+style:{h[:12]}"

    def _class_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self._classes is None:
            with self._lock:
                if self._classes is None:
                    styles = self.prompts.for_labels(self.templates, self.artists)
                    # One row per prompt (a set of one): the medium is pooled over
                    # logits in probabilities(), not averaged into one direction.
                    media = self.prompts.classes(
                        [[p] for p in (*self.artwork_prompts, *self.photo_prompts)]
                    )
                    self._classes = (styles, media)
        return self._classes

    def probabilities(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, len(artists)) artist probabilities and (n,) P(artwork) for n embeddings.

        Artists are prompt ensembles (mean direction per artist), softmaxed. P(artwork)
        is a 2-way softmax whose two logits are each side's log-mean-exp over its own
        prompts: a mixture in which every prompt of a side weighs the same and each side
        weighs the same however many prompts it has. Averaging the prompt directions
        instead blurs the subjects together, so the subject of the picture, not its
        medium, decided: with the demo model 27% of plain shape pictures came out as
        artworks that way, against 7% pooled like this.
        """
        styles, media = self._class_embeddings()
        rows = as_rows(vectors, styles.shape[1])
        p_style = softmax(rows @ styles.T / self.temperature)
        logits = rows.astype(np.float64) @ media.T.astype(np.float64) / self.temperature
        n_art = len(self.artwork_prompts)
        sides = np.stack([_log_mean_exp(logits[:, :n_art]), _log_mean_exp(logits[:, n_art:])])
        p_artwork = softmax(sides.T)[:, 0]
        return p_style, p_artwork

    def score(self, vectors: np.ndarray) -> list[list[Label]]:
        """Per item: top-k ``style`` labels (descending), then the ``artwork`` label."""
        p_style, p_artwork = self.probabilities(vectors)
        # Stable sort on the negated scores: ties keep the configured artist order.
        order = np.argsort(-p_style, axis=1, kind="stable")[:, : self.top_k]
        out: list[list[Label]] = []
        for i, top in enumerate(order):
            labels = [Label("style", self.artists[j], float(p_style[i, j])) for j in top]
            labels.append(Label("artwork", "artwork", float(p_artwork[i])))
            out.append(labels)
        return out


def _log_mean_exp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    out: np.ndarray = top[:, 0] + np.log(np.exp(logits - top).mean(axis=1))
    return out


def shown_styles(labels: Sequence[Label], threshold: float = ARTWORK_THRESHOLD) -> list[Label]:
    """The style labels worth showing for one item: none unless it is likely an artwork."""
    artwork = next((lb.score for lb in labels if lb.kind == "artwork"), 0.0)
    return [lb for lb in labels if lb.kind == "style"] if artwork >= threshold else []
