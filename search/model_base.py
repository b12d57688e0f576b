"""One base class for every model Everlook runs: CLIP, YOLO, the segmenters, ImageBind, VGG.

Two axes, kept apart as in Immich's machine-learning service:

- *what a model computes* is a subclass of :class:`LazyModel`: it says how to load itself
  (``_load``) and how to predict (``_predict``), nothing else;
- *what runs it* is a :class:`Runtime`: device choice, moving a module there, the
  inference context. PyTorch today (:class:`TorchRuntime`); ONNX Runtime later.

The base class owns what every backend would otherwise rewrite: loading once, lazily, under
a lock (several threads may ask at once); resolving ``device="auto"`` only when the model
loads (importing torch costs ~1.6 s and ~600 MB, so nothing that does not run a model may
pay it); and finding weights: ``$EVERLOOK_MODEL_DIR/<family>/...`` first (offline
machines), then the weights Everlook ships, then the library's own cache or download, and
when none works one paragraph saying which file to put where.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

# Weights that ship inside Everlook (the offline demo models), laid out like MODEL_DIR.
BUILTIN_MODELS = Path(__file__).resolve().parent / "embedders" / "models"


# Python's import system takes one lock per module; two threads importing torch,
# torchvision, open_clip or imagebind at once can each hold a lock the other needs and
# fail with "_DeadlockError" (seen: a query importing ImageBind while the watcher thread
# loaded CLIP). So models load one at a time, and so do the first imports of heavy
# modules outside a load (IMPORT_LOCK). Reentrant: a model may load another inside.
IMPORT_LOCK = threading.RLock()


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded (weights missing, unknown name): a configuration
    problem that stops the run, never a per-file failure."""


class WeightsUnavailable(ModelUnavailable):
    """The weights for a model cannot be found locally nor downloaded."""


def pick_device(requested: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is usable, else ``cpu``; anything else as given."""
    if requested != "auto":
        return requested
    import torch  # only when a model loads

    return "cuda" if torch.cuda.is_available() else "cpu"


class Runtime(Protocol):
    """What runs a model: where it lives and how inference is entered."""

    name: str
    device: str

    def resolve(self) -> None:
        """Settle the device (called once, when the model loads)."""
        ...

    def place(self, module: Any) -> Any:
        """Move a freshly built module to the device, in inference mode."""
        ...

    def inference(self) -> contextlib.AbstractContextManager[Any]: ...


class TorchRuntime:
    name = "torch"

    def __init__(self, device: str = "auto") -> None:
        self.requested = device
        self.device = device

    def resolve(self) -> None:
        self.device = pick_device(self.requested)

    def place(self, module: Any) -> Any:
        to = getattr(module, "to", None)
        if callable(to):
            module = to(self.device)
        ev = getattr(module, "eval", None)
        if callable(ev):
            ev()
        return module

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        import torch

        with torch.inference_mode():
            yield


M = TypeVar("M")


class LazyModel(ABC, Generic[M]):
    """A model that loads on first use. Subclasses implement ``_load`` and ``_predict``.

    ``family`` names the folder under ``EVERLOOK_MODEL_DIR`` (and under Everlook's own
    model cache) that holds this kind of model's weights: ``open_clip``, ``ultralytics``,
    ``detectron2``, ``transformers``, ``torchvision``, ``imagebind``.
    """

    family: ClassVar[str] = "models"

    def __init__(
        self,
        name: str,
        *,
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
        runtime: Runtime | None = None,
    ) -> None:
        self.name = name
        self.model_dir = model_dir
        self.cache_dir = cache_dir  # Everlook's own download folder for this family
        self.runtime: Runtime = runtime or TorchRuntime(device)
        self._lock = threading.Lock()
        self._model: M | None = None

    # ---- identity -------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """Provenance recorded with everything this model produces."""
        return f"{self.family}/{self.name}"

    @property
    def device(self) -> str:
        return self.runtime.device

    # ---- loading ----------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> M:
        """Build the model once per instance, under the process-wide IMPORT_LOCK (one
        load at a time: see there); later calls return it without locking."""
        model = self._model
        if model is None:
            # A download (ImageBind-huge: 4.8 GB) happens first, outside IMPORT_LOCK, so
            # other models keep loading and answering meanwhile; one per model at a time.
            with self._lock:
                if self._model is None:
                    self._fetch_weights()
            with IMPORT_LOCK:
                model = self._model
                if model is None:
                    try:
                        self.runtime.resolve()
                        model = self._load()
                    except ModelUnavailable:
                        raise
                    except Exception as exc:
                        # A model that cannot be built (truncated checkpoint, a device
                        # that is not there, out of memory) is a configuration problem:
                        # it must stop its stage, not count as a failure of each item.
                        raise ModelUnavailable(
                            f"{self.model_id} could not be loaded on {self.runtime.device}: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    self._model = model
        return model

    def predict(self, inputs: Any) -> Any:
        model = self.load()
        with self.runtime.inference():
            return self._predict(model, inputs)

    def _fetch_weights(self) -> None:
        """Bring the weights onto this machine (download) before loading, outside
        IMPORT_LOCK; errors surface when _load asks for them again. Default: nothing."""

    @abstractmethod
    def _load(self) -> M:
        """Build the model and its weights (``self.runtime`` is resolved already)."""

    @abstractmethod
    def _predict(self, model: M, inputs: Any) -> Any:
        """Run the model on inputs (called inside the runtime's inference context)."""

    # ---- weights ----------------------------------------------------------------------
    def local_weights(self, *relative: str) -> Path | None:
        """``<root>/<family>/<relative...>`` under EVERLOOK_MODEL_DIR, Everlook's model
        cache, or the weights Everlook ships, whichever has it first."""
        for root in (self.model_dir, self.cache_dir_root, BUILTIN_MODELS):
            if root is None:
                continue
            candidate = root.joinpath(self.family, *relative)
            if candidate.exists():
                return candidate
        return None

    @property
    def cache_dir_root(self) -> Path | None:
        # cache_dir is the family's folder; its parent lays out like EVERLOOK_MODEL_DIR.
        return self.cache_dir.parent if self.cache_dir is not None else None

    def missing_weights(
        self, what: str, relative: str, source: str, cause: BaseException | None = None
    ) -> WeightsUnavailable:
        """The one paragraph a user needs when weights are neither here nor reachable."""
        where = str(self.model_dir) if self.model_dir is not None else "DIR"
        chosen = "" if self.model_dir is not None else " (DIR being a folder of your choice)"
        because = f" ({type(cause).__name__}: {cause})" if cause else ""
        return WeightsUnavailable(
            f"The weights of {what} are not on this machine and could not be "
            f"downloaded{because}. On a machine with internet the first run downloads "
            f"{source}. To run offline, copy that file to "
            f"{where}/{self.family}/{relative}{chosen} and set EVERLOOK_MODEL_DIR={where}."
        )


def offline_reason(host: str) -> str | None:
    """Why a download from host cannot work right now, or None when it might."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") and "huggingface" in host:
        return "HF_HUB_OFFLINE is set"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    return None


def download(url: str, dest: Path) -> Path:
    """Fetch url to dest atomically (temp file, then rename), with torch.hub's helper."""
    import os

    with IMPORT_LOCK:  # the import, not the transfer, must not race other imports
        from torch.hub import download_url_to_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    try:
        download_url_to_file(url, str(tmp), progress=False)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
