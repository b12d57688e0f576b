"""What a GPU changes for search: fp16 CLIP towers where they agree with fp32, and FAISS
indexes cloned to the GPU. Everything here degrades to the CPU path with a reason.

torch and faiss are imported inside the functions: importing torch costs ~1.6 s and
~600 MB, and the query path may run without it.

FAISS on the GPU (the ``gpu`` extra: Meta's ``faiss-gpu`` wheel) takes flat, IVF-flat,
IVF-SQ and IVF-PQ indexes; an ``IndexIDMap``/``IndexIDMap2`` stays a CPU wrapper around
the GPU index (FAISS's own cloner does this), so item ids work unchanged. HNSW has no
GPU version in FAISS (CAGRA, through cuVS, is the GPU graph index): it stays on the CPU.
GPU indexes take no ID selector and no removals, so :class:`GpuMirror` answers the plain
searches on the GPU and leaves filtered ones, and anything after a removal until it is
re-cloned, to the CPU index, which stays the one that is saved.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from search.model_base import IMPORT_LOCK

# FAISS's GPU k-selection limit (GPU_MAX_SELECTION_K, 2048 since 1.7.3).
GPU_MAX_K = 2048

PROBE_PROMPTS = (
    "a photo of a dog",
    "a red bicycle against a brick wall",
    "a painting of a harbour at night",
    "a black and white portrait of an old man",
    "a bowl of fruit on a wooden table",
    "snow on the mountains",
    "a diagram",
    "x",
)


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device. Imports torch: call it only where a model
    is about to load anyway (device auto or cuda)."""
    with IMPORT_LOCK:
        import torch

    return bool(torch.cuda.is_available())


# ---- fp16 towers ------------------------------------------------------------------------


def half_if_parity(
    model: Any,
    probe_images: Any,
    probe_tokens: Any,
    min_cosine: float = 0.999,
    dtype: Any = None,
) -> tuple[Any, float]:
    """The model in half precision if its normalised image and text embeddings agree with
    fp32 on the probes (every cosine >= min_cosine), else the fp32 model unchanged; with
    the lowest cosine seen (NaN when fp16 overflowed), for the log and the record.

    ``dtype`` defaults to float16. Meant for CUDA, where fp16 doubles throughput; it runs
    on the CPU too (slower than fp32 there: the tests use it to check the gate). The
    probe images are already preprocessed ([N, 3, side, side], float32) and the tokens
    come from the model's tokenizer. The fp32 model is kept whole until the verdict:
    halving in place and back would lose its low bits.
    """
    import torch

    dtype = dtype or torch.float16
    device = next(model.parameters()).device
    images = probe_images.to(device)
    tokens = probe_tokens.to(device)
    # Copied outside inference mode: a copy made inside would hold inference tensors,
    # which a later forward with autograd on (no inference_mode) refuses.
    low = copy.deepcopy(model).to(dtype).eval()
    with torch.inference_mode():
        ref_i, ref_t = _embed(model, images, tokens)
        low_i, low_t = _embed(low, images.to(dtype), tokens)
    cosine = min(_min_cosine(ref_i, low_i), _min_cosine(ref_t, low_t))
    if cosine >= min_cosine:  # False for NaN: an overflow never passes
        return low, cosine
    del low
    return model, cosine


def _embed(model: Any, images: Any, tokens: Any) -> tuple[Any, Any]:
    return model.encode_image(images), model.encode_text(tokens)


def _min_cosine(a: Any, b: Any) -> float:
    """The lowest row cosine, each side normalised in float64 (a half-precision norm is
    itself off by ~1e-3, the size of what is measured)."""
    import torch.nn.functional as F

    a64, b64 = F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1)
    got = float((a64 * b64).sum(dim=-1).min())
    return got if math.isfinite(got) and bool(b.isfinite().all()) else math.nan


def input_dtype(model: Any) -> Any:
    """The dtype the model's image tower takes (float16 after half_if_parity kept fp16):
    callers cast preprocessed pixels to it."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def probe_inputs(transform: Any, tokenizer: Any, n: int = 8, seed: int = 0) -> tuple[Any, Any]:
    """Probe images and tokens for half_if_parity: photo-like pictures (smooth colour,
    hard-edged discs, a little noise) through the model's own eval transform, and
    everyday prompts through its tokenizer. Random noise would not do: real inputs are
    smooth, and fp16 errors depend on the activations they make."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(n):
        w, h = (320, 240) if i % 2 else (240, 320)
        coarse = rng.uniform(20, 235, (3, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        img = img.astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(4):
            cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(15, 90)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 3, (h, w, 1))
        pictures.append(transform(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))))
    prompts = [PROBE_PROMPTS[i % len(PROBE_PROMPTS)] for i in range(n)]
    return torch.stack(pictures), tokenizer(prompts)


# ---- FAISS on the GPU -------------------------------------------------------------------


def faiss_gpu_reason() -> str | None:
    """Why FAISS cannot use a GPU here, or None when it can."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return "this FAISS has no GPU support (faiss-cpu); install the gpu extra: everlook[gpu]"
    try:
        n = int(faiss.get_num_gpus())
    except Exception as exc:  # a CUDA runtime that fails to start
        return f"FAISS cannot count GPUs: {type(exc).__name__}: {exc}"
    return None if n > 0 else "FAISS sees no GPU"


def faiss_gpu_available() -> bool:
    return faiss_gpu_reason() is None


@functools.cache
def _resources(device_no: int) -> Any:
    """One StandardGpuResources per device and process: each reserves scratch memory on
    its device, and the GPU indexes share it (they keep it alive by shared pointer)."""
    import faiss

    return faiss.StandardGpuResources()


def why_not_on_gpu(index: Any) -> str | None:
    """Why FAISS's GPU cloner would not take this index (looking through an id map)."""
    import faiss

    inner = index
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 is one too
        inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "HNSW has no GPU version in FAISS (CAGRA through cuVS is the GPU graph index)"
    supported = (
        faiss.IndexFlat,
        faiss.IndexIVFFlat,
        faiss.IndexIVFScalarQuantizer,
        faiss.IndexIVFPQ,
        faiss.IndexScalarQuantizer,  # the cloner takes QT_fp16 only; others fail and say so
    )
    if not isinstance(inner, supported):
        return f"{type(inner).__name__} has no GPU version in FAISS"
    return None


def index_to_gpu(index: Any, device_no: int = 0, fp16_storage: bool = False) -> tuple[Any, str]:
    """A GPU clone of a CPU index, or the index itself when that cannot be; with a
    sentence for the log either way. fp16_storage halves the GPU memory of flat vectors
    (and IVF-PQ lookup tables) at a small cost in score precision."""
    why = faiss_gpu_reason() or why_not_on_gpu(index)
    if why is not None:
        return index, f"FAISS stays on the CPU: {why}"
    import faiss

    options = faiss.GpuClonerOptions()
    options.useFloat16 = fp16_storage
    try:
        clone = faiss.index_cpu_to_gpu(_resources(device_no), device_no, index, options)
    except Exception as exc:  # out of GPU memory, IVF-PQ sizes the GPU kernels lack
        return index, f"FAISS stays on the CPU: cloning to GPU {device_no} failed: {exc}"
    storage = "fp16" if fp16_storage else "fp32"
    return clone, f"FAISS on GPU {device_no}: {index.ntotal} vectors ({storage} storage)"


class GpuMirror:
    """A GPU copy of a CPU index for plain searches; the CPU index stays the truth.

    - ``search`` answers on the GPU when it may (no ID selector, k within FAISS's GPU
      limit, the copy current) and returns None otherwise: the caller searches the CPU
      index. A GPU search that fails turns the mirror off, with the reason.
    - ``add`` goes to both (FAISS adds to GPU indexes); ``remove`` cannot (GPU indexes
      have no removal), so it marks the copy stale and the next search re-clones it:
      one copy of the vectors per batch of removals, never per query.
    FAISS GPU resources are not safe to use from several threads at once, and searches
    on an index run side by side (VectorIndex's read lock): one lock serialises them.
    """

    def __init__(self, cpu_index: Any, device_no: int = 0, fp16_storage: bool = False) -> None:
        self.cpu = cpu_index
        self.device_no = device_no
        self.fp16_storage = fp16_storage
        self._lock = threading.Lock()
        self.gpu: Any = None
        self.reason = ""
        self._stale = True
        self.refresh()

    @property
    def active(self) -> bool:
        return self.gpu is not None

    def refresh(self) -> str:
        """Clone the CPU index again (after removals, or a new index was trained)."""
        with self._lock:
            clone, self.reason = index_to_gpu(self.cpu, self.device_no, self.fp16_storage)
            self.gpu = clone if clone is not self.cpu else None
            self._stale = False
        return self.reason

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Mirror an add the caller has made to the CPU index."""
        with self._lock:
            if self.gpu is not None and not self._stale:
                try:
                    self.gpu.add_with_ids(vectors, ids)
                except Exception:
                    self._stale = True

    def removed(self) -> None:
        """The caller removed vectors from the CPU index: the copy is out of date."""
        with self._lock:
            self._stale = True

    def search(
        self, query: np.ndarray, k: int, params: Any = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, labels) from the GPU, or None: search the CPU index instead.
        ``params``: FAISS search parameters; any with an ID selector go to the CPU."""
        if self.gpu is None or getattr(params, "sel", None) is not None or k > GPU_MAX_K:
            return None
        if self._stale:
            self.refresh()
        with self._lock:
            if self.gpu is None or self._stale:
                return None
            try:
                scores, labels = self.gpu.search(query, k, params=params)
            except Exception as exc:  # never fail a query the CPU index can answer
                self.reason = f"GPU search failed, CPU from now on: {exc}"
                self.gpu = None
                return None
        return scores, labels


def top_k_agreement(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> float:
    """Mean share of b's ids in a's, query by query (recall of b against a)."""
    shares = [len(set(x) & set(y)) / max(1, len(x)) for x, y in zip(a, b, strict=True)]
    return float(np.mean(shares)) if shares else 1.0
