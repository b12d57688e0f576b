"""Zero-shot labels in CLIP's space: labels a user gives, or ImageNet-1k's 1,000 classes.

Like the style scores, this works on stored CLIP image embeddings and cached
prompt-ensemble embeddings. The ImageNet class names and prompt templates are the ones
open_clip ships (``open_clip.zero_shot_metadata``, from OpenAI's CLIP evaluation), read
from open_clip's source file so that listing them or naming the stage's model id does
not import torch.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from catalog.results import Label
from enrich.prompts import PromptCache, as_rows, digest, softmax
from search.embedders import Embedder

# 1/100, CLIP's own logit scale (see enrich.style.DEFAULT_TEMPERATURE).
DEFAULT_TEMPERATURE = 0.01
DEFAULT_TOP_K = 5


@functools.cache
def _metadata() -> ModuleType:
    """open_clip's zero_shot_metadata module, loaded from its file alone.

    The file is plain data (no imports); importing it the usual way would run
    open_clip's ``__init__``, which imports torch: seconds and hundreds of MB for a
    list of names.
    """
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "zero_shot_metadata.py"
        file_spec = importlib.util.spec_from_file_location("_everlook_zsm", path)
        if path.is_file() and file_spec is not None and file_spec.loader is not None:
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module
    return importlib.import_module("open_clip.zero_shot_metadata")  # an unexpected layout


def _as_format_strings(templates: Iterable[Callable[[str], str]]) -> tuple[str, ...]:
    # open_clip's templates are lambdas (c -> f"a photo of a {c}."); applied to "{}" they
    # give the same sentence as a format string we can hash, cache and show.
    return tuple(t("{}") for t in templates)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names as CLIP's authors reworded them for prompts."""
    return tuple(_metadata().IMAGENET_CLASSNAMES)


@functools.cache
def openai_imagenet_templates() -> tuple[str, ...]:
    """The 80 prompt templates of OpenAI's ImageNet evaluation (``{}`` for the class)."""
    return _as_format_strings(_metadata().OPENAI_IMAGENET_TEMPLATES)


@functools.cache
def simple_imagenet_templates() -> tuple[str, ...]:
    """OpenAI's 7-template subset: about as accurate, 11x fewer prompts to embed."""
    return _as_format_strings(_metadata().SIMPLE_IMAGENET_TEMPLATES)


def clean_labels(labels: Iterable[str]) -> list[str]:
    """User labels stripped, empties dropped, repeats dropped (first spelling kept).

    Repeats are found case-insensitively because CLIP's tokenizer lower-cases text:
    "Cat" and "cat" would be the same class splitting its probability in two.
    Fewer than two labels is an error: a softmax over one class always says 100%.
    """
    seen: dict[str, str] = {}
    for raw in labels:
        label = raw.strip()
        if label and label.casefold() not in seen:
            seen[label.casefold()] = label
    out = list(seen.values())
    if len(out) < 2:
        given = ", ".join(repr(lb) for lb in out) or "none"
        raise ValueError(
            f"zero-shot classification needs at least two different labels to choose "
            f"between (got {given}); give them comma-separated, e.g. --labels cat,dog,bird"
        )
    return out


def parse_labels(spec: str) -> list[str]:
    """``"cat, dog,,bird"`` -> ``["cat", "dog", "bird"]`` (see ``clean_labels``)."""
    return clean_labels(spec.split(","))


class ZeroShotClassifier:
    """Ranks labels for items by their CLIP image embeddings.

    ``templates`` None means OpenAI's 80 ImageNet templates, for user labels and ImageNet
    alike. Their first ImageNet use embeds 80,000 prompts (once per model; then read from
    ``cache_dir``); ``simple_imagenet_templates()`` makes that 7,000.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        templates: Sequence[str] | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        cache_dir: Path | None = None,
    ) -> None:
        if templates is not None and (not templates or any("{}" not in t for t in templates)):
            raise ValueError("prompt templates must be non-empty and each hold '{}'")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.embedder = embedder
        self._templates = None if templates is None else tuple(templates)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.prompts = PromptCache(embedder, cache_dir)
        self._lock = threading.Lock()
        self._imagenet: np.ndarray | None = None

    @property
    def templates(self) -> tuple[str, ...]:
        return self._templates if self._templates is not None else openai_imagenet_templates()

    @property
    def model_id(self) -> str:
        # Provenance of the stored ImageNet labels: model, prompts, labels, temperature, k.
        h = digest(self.templates, imagenet_labels(), self.temperature, self.top_k)
        return f"{self.embedder.model_id}+imagenet:{h[:12]}"

    def probabilities(self, vectors: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """(n, len(labels)) softmax probabilities, labels in the order given."""
        classes = self.prompts.for_labels(self.templates, labels)
        return self._softmax(vectors, classes)

    def _softmax(self, vectors: np.ndarray, classes: np.ndarray) -> np.ndarray:
        rows = as_rows(vectors, classes.shape[1])
        return softmax(rows @ classes.T / self.temperature)

    def classify(self, vectors: np.ndarray, labels: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per item, every (cleaned) label with its probability, most likely first."""
        names = clean_labels(labels)
        return [_ranked(names, row, len(names)) for row in self.probabilities(vectors, names)]

    def classify_imagenet(
        self, vectors: np.ndarray, k: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per item, the k most likely ImageNet classes (all 1,000 with k None)."""
        names = imagenet_labels()
        probs = self._softmax(vectors, self._imagenet_classes())
        return [_ranked(names, row, k or len(names)) for row in probs]

    def top_imagenet(self, vectors: np.ndarray, k: int | None = None) -> list[list[Label]]:
        """The stage's output: per item the top ``k`` (default ``top_k``) ``imagenet``
        labels, most likely first, stored so that a text search can match them."""
        ranked = self.classify_imagenet(vectors, k or self.top_k)
        return [[Label("imagenet", name, p) for name, p in row] for row in ranked]

    def _imagenet_classes(self) -> np.ndarray:
        # Held here as well as in the PromptCache: its key hashes all 80,000 prompt texts,
        # which is worth doing once, not for every batch the stage scores.
        if self._imagenet is None:
            with self._lock:
                if self._imagenet is None:
                    self._imagenet = self.prompts.for_labels(self.templates, imagenet_labels())
        return self._imagenet


def _ranked(names: Sequence[str], probs: np.ndarray, k: int) -> list[tuple[str, float]]:
    # Stable sort on the negated probabilities: ties keep the order the labels came in.
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[j], float(probs[j])) for j in order]
