"""What the app serves from: built once by the caller (``everlook serve`` or a test)
and handed to ``create_app``; routes reach it through the ``Svc`` dependency."""

from __future__ import annotations

import functools
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request
from PIL import Image

from api.batching import TextBatcher
from api.files import Thumbnails
from catalog import Catalog
from catalog.stylejobs import StyleQueue
from indexer.media import Limits
from search.engine import SearchEngine


@dataclass(frozen=True)
class ApiConfig:
    thumbs_dir: Path
    roots: tuple[str, ...] = ()  # resolved (realpath) library folders
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    upload_max_bytes: int = 25 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    draft_side: int | None = None  # JPEG draft decoding of query images, as when indexing
    negative_weight: float = 0.5
    has_min_confidence: float = 0.4
    style_min_score: float = 0.2
    artwork_min_score: float = 0.5
    refresh_seconds: float = 2.0


@dataclass(frozen=True)
class StylizeConfig:
    """What the style-transfer routes need: where results live, the settings a job
    starts from, and the limits a request is held to."""

    home: Path  # the data dir (results, previews and uploads lie under it)
    defaults: dict[str, Any] = field(default_factory=dict)  # StyleSettings.as_dict()
    max_side: int = 1024
    max_steps: int = 1000
    queue_max: int = 16
    max_attempts: int = 3


@dataclass
class Services:
    config: ApiConfig
    catalog: Catalog
    engines: dict[str, SearchEngine]  # one per enabled space, clip first
    # Built on first use (the ImageNet prompts take a while on first use, then come
    # from the disk cache); the factory is called once, under the model gate.
    classifier_factory: Callable[[], Any]
    watcher: Any = None  # indexer.watch.Watcher when the server indexes too
    stylize: StylizeConfig | None = None  # None: no style transfer on this server
    # Hands a finished result to whoever indexes the library (the watcher's queue).
    index_back: Callable[[str], None] | None = None
    worker: Any = None  # indexer.stylize_worker.StyleWorker run beside the requests
    thumbs: Thumbnails = field(init=False)
    jobs: StyleQueue = field(init=False)
    # One query model call at a time: on a CPU box, parallel forward passes only
    # thrash the cores, and a single queue keeps latency fair (p99 close to p50).
    # FAISS searches and catalog reads run side by side, outside this gate.
    gate: threading.RLock = field(default_factory=threading.RLock)
    _classifier: Any = None
    facets: tuple[float, dict[str, Any]] | None = None  # (when, facets): a short cache
    watch_failure: str | None = None  # why the watcher thread stopped, if it did
    # Cursors are signed with a key of this process: a forged cursor is refused before
    # it costs a search. (Replicas behind one address would share a key: issue [9].)
    cursor_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        self.thumbs = Thumbnails(self.config.thumbs_dir, self.config.limits)
        self.jobs = StyleQueue(self.catalog.engine)
        # Typing-as-you-search and paging repeat the same texts: their vectors are
        # kept (the model is fixed for the life of the server), so a page 2 or a
        # popular query costs a FAISS search, not a forward pass.
        self._text_cache = functools.lru_cache(maxsize=2048)(self._embed_text)
        self.texts = {name: TextBatcher(e.embedder.embed_texts, self.gate)
                      for name, e in self.engines.items()}  # fmt: skip

    @property
    def engine(self) -> SearchEngine:
        """CLIP's engine: pictures by text or picture, similar items, browsing."""
        return self.engines["clip"]

    def _embed_text(self, text: str, space: str) -> tuple[np.ndarray, str]:
        engine = self.engines[space]
        vec, words = engine.text_vector(text, self.config.negative_weight, embed=self.texts[space])
        vec.setflags(write=False)  # shared by every request that asks the same
        return vec, words

    @contextmanager
    def model(self) -> Iterator[None]:
        with self.gate:
            yield

    def text_vector(
        self, text: str, image: np.ndarray | None = None, space: str = "clip"
    ) -> tuple[np.ndarray, str]:
        if image is None:
            return self._text_cache(text, space)
        engine = self.engines[space]
        return engine.text_vector(text, self.config.negative_weight, image, self.texts[space])

    def image_vector(self, image: Image.Image, space: str = "clip") -> np.ndarray:
        with self.model():
            emb = self.engines[space].embedder
            return np.asarray(emb.embed_images([image])[0], dtype=np.float32)

    def audio_vector(self, waveform: np.ndarray, space: str = "imagebind") -> np.ndarray:
        with self.model():
            emb: Any = self.engines[space].embedder
            return np.asarray(emb.embed_audio([waveform])[0], dtype=np.float32)

    def classifier(self) -> Any:
        with self.model():
            if self._classifier is None:
                self._classifier = self.classifier_factory()
            return self._classifier


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(_services)]
