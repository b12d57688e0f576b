"""Embedders turn images (and later text, sound) into L2-normalised float32 vectors.

Backends register under a name (``clip``, ``imagebind``) and are built from
plain keyword arguments, so the shell can pick one from settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from search.model_base import ModelUnavailable, WeightsUnavailable

__all__ = ["Embedder", "ModelUnavailable", "WeightsUnavailable", "available", "create"]


@runtime_checkable
class Embedder(Protocol):
    space: str  # the vector space this embedder writes to ("clip", "imagebind")
    # What it embeds: "image" and "text" (CLIP); ImageBind adds "audio", with
    # ``preprocess_audio(waveform) / embed_audio_preprocessed(batch) / embed_audio``
    # over mono float32 waveforms at ``audio_sample_rate``.
    modalities: frozenset[str]

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def input_side(self) -> int:
        """Side in pixels of the square the image tower sees."""
        ...

    def preprocess(self, image: Image.Image) -> Any:
        """CPU-side preparation of one decoded RGB image (thread-safe)."""
        ...

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


_REGISTRY: dict[str, Callable[..., Embedder]] = {}
BUILTIN = ("clip", "imagebind")  # modules under search/embedders/ that register themselves


def register(name: str) -> Callable[[Callable[..., Embedder]], Callable[..., Embedder]]:
    def deco(factory: Callable[..., Embedder]) -> Callable[..., Embedder]:
        _REGISTRY[name] = factory
        return factory

    return deco


def create(name: str, **kwargs: Any) -> Embedder:
    if name not in _REGISTRY:
        _load_builtin(name)
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown embedder {name!r}; known: {sorted(_REGISTRY)}") from None
    return factory(**kwargs)


def _load_builtin(name: str) -> None:
    # Import lazily: each backend pulls in heavy libraries (when it loads a model).
    if name in BUILTIN:
        importlib.import_module(f"search.embedders.{name}")


def available() -> list[str]:
    for name in BUILTIN:
        _load_builtin(name)
    return sorted(_REGISTRY)
