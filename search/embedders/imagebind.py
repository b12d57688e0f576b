"""ImageBind image/text/audio embeddings in one space, through Meta's own model code.

The model and every preprocessing step are upstream's (``imagebind.data`` and
``imagebind.models.imagebind_model``): the vision transform, the BPE tokenizer, the clip
sampling and ``waveform2melspec`` for sound. Only decoding differs: Everlook hands in a
decoded 16 kHz mono waveform instead of a path for torchaudio to open.

Architecture and weights are found, in order:
1. ``imagebind_huge``: upstream's ``imagebind_huge()`` architecture; any other name:
   ``<root>/imagebind/<name>.json`` (keyword arguments of ``ImageBindModel``); or
   ``model_name`` is the path of a ``.pth`` file with a ``.json`` beside it;
2. weights ``<root>/imagebind/<name>.pth``, ``<root>`` being ``$EVERLOOK_MODEL_DIR``,
   Everlook's model cache, then the weights Everlook ships;
3. ``imagebind_huge`` only: Meta's checkpoint downloaded into ``cache_dir`` (never into
   the working directory, where upstream's own helper puts it).

Nothing here imports torch or imagebind until a model loads or an input is prepared.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import types
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from search.embedders import register
from search.model_base import (
    IMPORT_LOCK,
    LazyModel,
    ModelUnavailable,
    Runtime,
    WeightsUnavailable,
    download,
    offline_reason,
)

HUGE = "imagebind_huge"
HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
HUGE_HOST = "dl.fbaipublicfiles.com"
# What upstream's imagebind_huge() passes to ImageBindModel (a test checks they agree):
# known here so that ``dim`` and the mel shape never need torch.
HUGE_CONFIG: dict[str, Any] = {
    "vision_embed_dim": 1280,
    "vision_num_blocks": 32,
    "vision_num_heads": 16,
    "text_embed_dim": 1024,
    "text_num_blocks": 24,
    "text_num_heads": 16,
    "out_embed_dim": 1024,
    "audio_drop_path": 0.1,
    "imu_drop_path": 0.7,
}
# ImageBindModel's own defaults, for configs that leave these out.
DEFAULT_OUT_DIM = 768
DEFAULT_MEL_BINS = 128
DEFAULT_TARGET_LEN = 204

# The constants of upstream's load_and_transform_audio_data / _vision_data.
SAMPLE_RATE = 16000
CLIP_SECONDS = 2
MEL_MEAN, MEL_STD = -4.268, 9.138
IMAGE_SIDE = 224
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# kaldi.fbank's window (25 ms at 16 kHz): a shorter clip gives no frame at all, and
# waveform2melspec then divides by zero.
MIN_SAMPLES = 400


# ---- importing upstream on today's libraries ------------------------------------------
def _shim_functional_tensor() -> None:
    # pytorchvideo 0.1.5 (imported by imagebind.data) imports
    # torchvision.transforms.functional_tensor, which torchvision 0.17 renamed to
    # _functional_tensor. pytorchvideo calls its matrix-form affine() (only in its
    # augmentations, never on ImageBind's path), which torchvision.transforms.functional
    # does not have under that signature, so the private module is the faithful alias.
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
    except ImportError:
        try:
            import torchvision.transforms._functional_tensor as ft
        except ImportError:
            import torchvision.transforms.functional as ft
        sys.modules["torchvision.transforms.functional_tensor"] = ft


def _shim_pkg_resources() -> None:
    # imagebind.data imports pkg_resources to find its BPE vocabulary; setuptools>=81 no
    # longer ships it. Only when it is gone, stand in with the one function used,
    # answered by importlib.resources (the same file inside the installed package).
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            import pkg_resources  # noqa: F401
    except ImportError:
        from importlib.resources import files

        fallback = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            return str(files(package).joinpath(resource))

        fallback.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = fallback


@dataclass(frozen=True)
class _Upstream:
    data: Any  # imagebind.data
    models: Any  # imagebind.models.imagebind_model
    clip_sampler: Any  # pytorchvideo's ConstantClipsPerVideoSampler class


def upstream() -> _Upstream:
    """imagebind's data and model modules, imported once with the shims they need (under
    IMPORT_LOCK: a query thread and the watcher's may both get here first)."""
    with IMPORT_LOCK:
        return _import_upstream()


@functools.cache
def _import_upstream() -> _Upstream:
    _shim_functional_tensor()
    _shim_pkg_resources()
    with warnings.catch_warnings():
        # Deprecation notices about upstream's own imports, nothing an Everlook user
        # can act on.
        warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*script_method.*", category=FutureWarning)
        import imagebind.data as data
        from imagebind.models import imagebind_model
        from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
    return _Upstream(data, imagebind_model, ConstantClipsPerVideoSampler)


def tokenizer() -> Any:
    """Upstream's BPE tokenizer with the vocabulary the package ships (built once: reading
    the vocabulary takes a while)."""
    with IMPORT_LOCK:
        return _tokenizer()


@functools.cache
def _tokenizer() -> Any:
    up = upstream()
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    return SimpleTokenizer(bpe_path=up.data.return_bpe_path())


class _DropShortClipWarning(logging.Filter):
    # waveform2melspec logs "Large gap between audio n_frames..." on the root logger for
    # every clip of a recording under ~1.6 s: expected for short sounds, and a warning per
    # file would bury real ones. Only that message is dropped.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Large gap between audio n_frames")


_SHORT_CLIP_FILTER = _DropShortClipWarning()


@contextmanager
def _quiet_short_clips() -> Iterator[None]:
    root = logging.getLogger()
    root.addFilter(_SHORT_CLIP_FILTER)
    try:
        yield
    finally:
        root.removeFilter(_SHORT_CLIP_FILTER)


# ---- the embedder ---------------------------------------------------------------------
@dataclass
class _Loaded:
    net: Any  # ImageBindModel, on the runtime's device, in eval mode


DEFAULT_CLIPS = 3  # upstream's clips_per_video


class ImageBindEmbedder(LazyModel[_Loaded]):
    """ImageBind behind the Embedder protocol, plus sound. Loads on first use."""

    space = "imagebind"
    family = "imagebind"
    modalities = frozenset({"image", "text", "audio"})
    input_side = IMAGE_SIDE
    audio_sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model_name: str = HUGE,
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
        audio_clips: int = 3,
        runtime: Runtime | None = None,
    ) -> None:
        path = Path(model_name).expanduser()
        self.checkpoint: Path | None = path if path.suffix == ".pth" else None
        # A checkpoint given by path is named by its file's stem (its provenance).
        name = path.stem if self.checkpoint is not None else model_name
        super().__init__(
            name, model_dir=model_dir, cache_dir=cache_dir, device=device, runtime=runtime
        )
        self.model_name = model_name
        if audio_clips < 1:
            raise ValueError(f"audio_clips must be at least 1, not {audio_clips}")
        self.audio_clips = audio_clips
        self._cfg: dict[str, Any] | None = None
        self._vision_transform: Any = None

    @property
    def model_id(self) -> str:
        # How many clips a recording is heard through is part of what its vector means:
        # another count is another model for provenance (it backfills, then is switched
        # to), so one index never mixes vectors made both ways.
        base = super().model_id
        return base if self.audio_clips == DEFAULT_CLIPS else f"{base}+clips{self.audio_clips}"

    # ---- configuration (no torch) ------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Keyword arguments of ImageBindModel for this model, read without torch."""
        if self._cfg is None:
            if self.checkpoint is None and self.name == HUGE:
                self._cfg = dict(HUGE_CONFIG)
            else:
                self._cfg = self._read_config(self._config_path())
        return self._cfg

    def _config_path(self) -> Path:
        if self.checkpoint is not None:
            beside = self.checkpoint.with_suffix(".json")
            if not beside.is_file():
                raise ModelUnavailable(
                    f"{self.checkpoint} needs its architecture beside it: {beside.name}, "
                    "the keyword arguments of imagebind's ImageBindModel as JSON"
                )
            return beside
        found = self.local_weights(f"{self.name}.json")
        if found is None:
            raise ModelUnavailable(
                f"unknown ImageBind model {self.name!r}: Everlook knows {HUGE!r}; any other "
                f"needs {self.name}.json (ImageBindModel's keyword arguments) and "
                f"{self.name}.pth in EVERLOOK_MODEL_DIR/{self.family}/"
            )
        return found

    @staticmethod
    def _read_config(path: Path) -> dict[str, Any]:
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(f"cannot read ImageBind config {path}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise ModelUnavailable(f"ImageBind config {path} is not a JSON object")
        return cfg

    @property
    def dim(self) -> int:
        return int(self.config().get("out_embed_dim", DEFAULT_OUT_DIM))

    @property
    def mel_bins(self) -> int:
        return int(self.config().get("audio_num_mel_bins", DEFAULT_MEL_BINS))

    @property
    def mel_frames(self) -> int:
        return int(self.config().get("audio_target_len", DEFAULT_TARGET_LEN))

    # ---- weights -------------------------------------------------------------------------
    def resolve_weights(self) -> Path:
        if self.checkpoint is not None:
            if not self.checkpoint.is_file():
                raise WeightsUnavailable(f"ImageBind checkpoint {self.checkpoint} not found")
            return self.checkpoint
        relative = f"{self.name}.pth"
        local = self.local_weights(relative)
        if local is not None:
            return local
        what = f"ImageBind {self.name}"
        if self.name != HUGE:
            where = self.model_dir if self.model_dir is not None else "EVERLOOK_MODEL_DIR"
            raise WeightsUnavailable(
                f"The weights of {what} are not on this machine and Everlook knows nowhere "
                f"to download them from: put {relative} (a state_dict saved with "
                f"torch.save) beside {self.name}.json in {where}/{self.family}/."
            )
        source = f"the checkpoint at {HUGE_URL} (4.8 GB)"
        if self.cache_dir is None:
            cause = RuntimeError("no download folder was given")
            raise self.missing_weights(what, relative, source, cause)
        why = offline_reason(HUGE_HOST)
        if why is not None:
            # Fail now with the useful paragraph rather than after the HTTP retries.
            raise self.missing_weights(what, relative, source, ConnectionError(why))
        try:
            return download(HUGE_URL, self.cache_dir / relative)
        except Exception as exc:
            raise self.missing_weights(what, relative, source, exc) from exc

    # ---- loading -------------------------------------------------------------------------
    def build(self) -> Any:
        """The architecture with random weights (what loading fills; benches time it)."""
        up = upstream()
        if self.checkpoint is None and self.name == HUGE:
            return up.models.imagebind_huge(pretrained=False)
        return up.models.ImageBindModel(**self.config())

    def _fetch_weights(self) -> None:
        # Downloads imagebind_huge when it is not here yet; a failure is said by _load.
        with contextlib.suppress(ModelUnavailable):
            self.resolve_weights()

    def _load(self) -> _Loaded:
        import torch

        weights = self.resolve_weights()
        net = self.build()
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # mmap needs the zip format of torch>=1.6; an older file loads whole.
            state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ModelUnavailable(f"{weights} is not a state_dict of ImageBindModel")
        # Half-precision copies of the checkpoint load as float32, the dtype the model
        # is built in and runs in.
        state = {
            k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in state.items()
        }
        # strict: a checkpoint of another architecture must fail, never run half-random.
        net.load_state_dict(state, strict=True)
        return _Loaded(self.runtime.place(net))

    def _predict(self, model: _Loaded, inputs: Any) -> Any:
        """inputs: (modality key of upstream, batch tensor). Unit vectors, float32."""
        import torch.nn.functional as F

        key, x = inputs
        out = model.net({key: x.to(self.device)})[key]
        # Upstream scales text (by its logit scale) and audio (by 20) after normalising,
        # and averages a recording's clips: normalising again gives unit vectors.
        return F.normalize(out.float(), dim=-1)

    def _run(self, key: str, batch: Sequence[Any]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)  # without loading the model
        import torch  # imported already: the batch is tensors

        feats = self.predict((key, torch.stack(list(batch))))
        return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)

    # ---- images --------------------------------------------------------------------------
    def _transform(self) -> Any:
        if self._vision_transform is None:
            with IMPORT_LOCK:  # the first import of torchvision may race a model's load
                from torchvision import transforms

            # upstream load_and_transform_vision_data's transform, step for step.
            self._vision_transform = transforms.Compose(
                [
                    transforms.Resize(
                        IMAGE_SIDE, interpolation=transforms.InterpolationMode.BICUBIC
                    ),
                    transforms.CenterCrop(IMAGE_SIDE),
                    transforms.ToTensor(),
                    transforms.Normalize(mean=IMAGE_MEAN, std=IMAGE_STD),
                ]
            )
        return self._vision_transform

    def preprocess(self, image: Image.Image) -> Any:
        """(3, 224, 224) float tensor, as upstream prepares an image file."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self._transform()(image)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        return self._run("vision", batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_preprocessed([self.preprocess(im) for im in images])

    # ---- text ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> Any:
        """(n, 77) token ids. One text at a time, as upstream's load_and_transform_text
        does (its tokenizer returns one row for a single text)."""
        tok = tokenizer()  # first: it imports torch under IMPORT_LOCK
        import torch

        return torch.stack([tok(t) for t in texts])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._run("text", list(self.tokenize(texts)) if texts else [])

    # ---- sound ---------------------------------------------------------------------------
    def preprocess_audio(self, waveform: np.ndarray) -> Any:
        """(clips, 1, mel bins, frames) log-mel clips of a 16 kHz mono waveform, as
        upstream's load_and_transform_audio_data makes them from a file."""
        wav = np.asarray(waveform, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono waveform (1-D), got shape {wav.shape}")
        if wav.size == 0:
            raise ValueError("empty waveform: no sound to embed")
        if not np.isfinite(wav).all():
            raise ValueError("waveform holds NaN or infinite samples")
        if wav.size < MIN_SAMPLES:
            # Shorter than one analysis window: upstream would divide by zero. Silence
            # after the sound gives the window it needs.
            wav = np.pad(wav, (0, MIN_SAMPLES - wav.size))
        up = upstream()  # first: it imports torch and torchvision under IMPORT_LOCK
        import torch
        from torchvision import transforms

        # A copy, shaped (channels, samples) as torchaudio.load returns it: upstream's
        # clips are views of it and waveform2melspec centres each in place, so a clip
        # overlapping an earlier one sees that one's centring (as upstream does) and the
        # caller's array is never touched.
        audio = torch.from_numpy(wav.copy()).unsqueeze(0)
        sr = SAMPLE_RATE
        # A sampler per call: it counts clips in its own state, so sharing one between
        # threads would mix recordings.
        sampler = up.clip_sampler(clip_duration=CLIP_SECONDS, clips_per_video=self.audio_clips)
        points = up.data.get_clip_timepoints(sampler, audio.size(1) / sr)
        normalize = transforms.Normalize(mean=MEL_MEAN, std=MEL_STD)
        clips = []
        with _quiet_short_clips():
            for start, end in points:
                clip = audio[:, int(start * sr) : int(end * sr)]
                mel = up.data.waveform2melspec(clip, sr, self.mel_bins, self.mel_frames)
                clips.append(normalize(mel))
        return torch.stack(clips, dim=0)

    def embed_audio_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        """One unit vector per recording: the mean of its clips' embeddings."""
        # (B, clips, 1, mel, frames): upstream's forward embeds every clip and averages.
        return self._run("audio", batch)

    def embed_audio(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_audio_preprocessed([self.preprocess_audio(w) for w in waveforms])


@register("imagebind")
def _factory(**kwargs: Any) -> ImageBindEmbedder:
    return ImageBindEmbedder(**kwargs)
