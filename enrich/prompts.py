"""Class embeddings from prompt ensembles, computed once per model and cached.

A zero-shot class in CLIP's space is the mean of the normalised text embeddings of
several prompts for it ("a painting by {}", "art by {}", ...), normalised again: the
prompt ensembling of Radford et al. (2021), which is steadier than any one wording.
Embedding the prompts is the only expensive part (1,000 ImageNet labels x 80 templates
is 80,000 texts: minutes on a CPU), so the result is kept in memory for the life of the
cache object and on disk per (model, prompts), where a later process finds it.

Scoring an item is then one matrix product with its stored image embedding and a
softmax; no pixels are decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from search.embedders import Embedder

log = logging.getLogger(__name__)

# Texts per embed_texts call: bounds memory (80,000 ImageNet prompts at once would hold
# them all as tensors) while keeping batches big enough to be efficient.
TEXT_BATCH = 256
CACHE_FORMAT = 1  # bump when the file layout changes; old files are then recomputed


def expand(templates: Sequence[str], labels: Sequence[str]) -> list[list[str]]:
    """Each label's prompts: every template with ``{}`` replaced by the label."""
    return [[t.format(label) for t in templates] for label in labels]


def digest(*parts: object) -> str:
    """A stable hex digest of JSON-able parts (for cache keys and model ids)."""
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 so that sharp temperatures stay finite."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def as_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Image embeddings as a normalised (n, dim) float32 matrix; one vector is one row.

    Stored embeddings are already normalised; normalising again costs nothing and keeps a
    caller's raw vector from skewing the softmax. A zero vector stays zero.
    """
    rows = np.asarray(vectors, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(
            f"expected image embeddings of dimension {dim}, got an array of shape "
            f"{np.shape(vectors)}: were they made by another model?"
        )
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: np.ndarray = rows / np.where(norms > 0, norms, 1.0)
    return out


def as_percent(score: float, digits: int = 1) -> str:
    """A 0..1 score as people read it: ``0.8734`` -> ``'87.3%'``."""
    return f"{100.0 * score:.{digits}f}%"


class PromptCache:
    """Class embeddings per prompt ensemble for one embedder.

    ``cache_dir`` None keeps them in memory only. On disk each ensemble is one ``.npz``
    named by a hash of the embedder's model id and every prompt text, and holding that
    full hash: a file from another model or prompt list, a truncated file or one that
    cannot be read is recomputed and rewritten, never trusted.
    """

    def __init__(self, embedder: Embedder, cache_dir: Path | None = None) -> None:
        self.embedder = embedder
        self.cache_dir = cache_dir
        self._memo: dict[str, np.ndarray] = {}
        # Stages may score from several worker threads; the first one computes.
        self._lock = threading.Lock()

    def for_labels(self, templates: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """(len(labels), dim) class embeddings, each the ensemble of all templates."""
        if not templates:
            raise ValueError("at least one prompt template is needed")
        return self.classes(expand(templates, labels))

    def classes(self, prompt_sets: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(prompt_sets), dim) class embeddings, one per set of full prompt texts."""
        if not prompt_sets or any(not prompts for prompts in prompt_sets):
            raise ValueError("every class needs at least one prompt")
        sets = [list(p) for p in prompt_sets]
        key = digest(CACHE_FORMAT, self.embedder.model_id, sets)
        got = self._memo.get(key)
        if got is not None:
            return got
        with self._lock:
            got = self._memo.get(key)
            if got is None:
                got = self._read(key, len(sets))
                if got is None:
                    got = self._compute(sets)
                    self._write(key, got)
                got.setflags(write=False)  # shared between callers: no one may edit it
                self._memo[key] = got
        return got

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"prompts-{key[:24]}.npz"

    def _compute(self, sets: list[list[str]]) -> np.ndarray:
        flat = [text for prompts in sets for text in prompts]
        owner = np.repeat(np.arange(len(sets)), [len(p) for p in sets])
        sums: np.ndarray | None = None
        for start in range(0, len(flat), TEXT_BATCH):
            emb = np.asarray(self.embedder.embed_texts(flat[start : start + TEXT_BATCH]))
            emb = emb.astype(np.float64)
            # embed_texts promises normalised rows; normalising again makes the ensemble
            # an average of directions whatever a backend does.
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            if sums is None:
                sums = np.zeros((len(sets), emb.shape[1]), dtype=np.float64)
            np.add.at(sums, owner[start : start + len(emb)], emb)
        assert sums is not None  # sets is non-empty and every set has a prompt
        sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(sums, dtype=np.float32)

    def _read(self, key: str, n: int) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = str(data["key"])
                emb = np.asarray(data["embeddings"], dtype=np.float32)
        except Exception as exc:  # any unreadable file is just a cache miss
            log.warning("prompt cache %s unreadable (%s); recomputing", path, exc)
            return None
        if stored_key != key or emb.ndim != 2 or emb.shape[0] != n:
            log.warning("prompt cache %s does not match its name; recomputing", path)
            return None
        if not np.all(np.isfinite(emb)):
            log.warning("prompt cache %s holds non-finite values; recomputing", path)
            return None
        return np.ascontiguousarray(emb)

    def _write(self, key: str, emb: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename: a reader (or a crash) sees the old file
            # or the whole new one, never half of it.
            fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(key), embeddings=emb)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:  # a cache that cannot be written only costs time later
            log.warning("cannot write prompt cache %s: %s", path, exc)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
