"""Neural style transfer after Gatys, Ecker and Bethge (CVPR 2016) on torchvision's VGG-19.

The picture itself is optimised: starting from the content picture (or noise), each step
moves its pixels so that VGG-19's activations at ``content_layers`` stay close to the
content picture's, while the Gram matrices (channel correlations, i.e. texture
statistics) at ``style_layers`` approach the style picture's. Activations are taken after
the ReLU (Gatys' Caffe network applied it in place). The loss is the common PyTorch form
of Gatys' (PyTorch's own VGG-19 tutorial's): a Gram is ``F Fᵀ / (C·H·W)``, each term a
mean squared error, style terms summed over layers, pixels in 0..1 with ImageNet
normalisation inside the network. The default weights and optimiser are that tutorial's
(content 1, style 1e6, L-BFGS, ~300 evaluations), the default layers Gatys' (content
conv4_2, style conv1_1 … conv5_1).

``weights="random"`` (tests, the offline demo) runs the same architecture with seeded
random filters. Random convolutional features still capture texture (Ustyuzhaninov et al.
2016), but torchvision draws VGG's filters with He's fan-*out* rule, which shrinks the
signal at each block's first convolution (4.6× at conv1_1, 3 → 64 channels). Measured on
a 128 px photo: activations fall from RMS 0.25 at conv1_1 to 0.04 at conv5_1, and as a
Gram term grows with their fourth power, conv5_1's weighs 1/54 000 of conv1_1's (the
deep, large-scale texture is lost) and the whole style term starts at 0.1 against 52.
Random filters are therefore drawn with He's fan-*in* rule, which keeps each layer's
mean square near its input's (He et al. 2015): RMS 1.17 to 0.56, conv5_1 at 1/840 of
conv1_1, so the same defaults stylise visibly. The loss itself is the same for both.

Importing this module imports neither torch nor torchvision: they load with the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from search.model_base import IMPORT_LOCK, LazyModel, ModelUnavailable, offline_reason

WEIGHTS_HOST = "download.pytorch.org"
WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"  # the file name torchvision's VGG19_Weights uses
WEIGHTS_URL = f"https://{WEIGHTS_HOST}/models/{WEIGHTS_FILE}"
BLOCKS = (2, 2, 4, 4, 4)  # VGG-19's convolutions per block ("E" in Simonyan & Zisserman)
CONV_NAMES = tuple(f"conv{b}_{i}" for b, n in enumerate(BLOCKS, 1) for i in range(1, n + 1))
# L-BFGS keeps this many pairs of picture-sized vectors: 2 × 10 × 3 MB at 512 px. Torch's
# default (100) would hold 600 MB per job at 512 px and ~10 GB at 2048 px.
LBFGS_HISTORY = 10
MIN_SHORT_SIDE = 16


@dataclass(frozen=True)
class StyleSettings:
    """How one picture is stylised; stored with the result as its provenance.

    ``pool``: Gatys et al. replace VGG's max pooling by average pooling ("slightly more
    appealing results"); a per-run choice because it costs nothing.
    """

    side: int = 512
    steps: int = 300
    content_weight: float = 1.0
    style_weight: float = 1e6
    content_layers: tuple[str, ...] = ("conv4_2",)
    style_layers: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    optimizer: str = "lbfgs"
    learning_rate: float = 0.02  # Adam's, in 0..1 pixel units; L-BFGS always uses 1
    init: str = "content"
    pool: str = "avg"

    def __post_init__(self) -> None:
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if isinstance(layers, str) or not isinstance(layers, list | tuple):
                raise ValueError(f"{name} must be a list of layer names, got {layers!r}")
            object.__setattr__(self, name, tuple(layers))  # lists from JSON, kept hashable
        _check_int("side", self.side, 32, 4096)
        _check_int("steps", self.steps, 1, 10_000)
        for name in ("content_weight", "style_weight", "learning_rate"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            low = 0 if name != "learning_rate" else 1e-12
            if not ok or not low <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
        for name in ("content_layers", "style_layers"):
            layers = getattr(self, name)
            if not layers or any(v not in CONV_NAMES for v in layers):
                raise ValueError(f"{name} must be a non-empty list of VGG-19 convolutions "
                                 f"(conv1_1 … conv5_4), got {layers!r}")  # fmt: skip
        for name, allowed in (("optimizer", ("lbfgs", "adam")), ("init", ("content", "noise")),
                              ("pool", ("avg", "max"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: layer tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StyleSettings:
        """The inverse of :meth:`as_dict`; missing keys take defaults, unknown ones fail."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown style settings {unknown}; known: {sorted(known)}")
        return cls(**d)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


@dataclass
class StepInfo:
    """Progress after one step. Losses are the weighted terms of the objective, measured
    on the picture this step started from (what the optimiser evaluated)."""

    step: int  # 1-based: steps done so far
    total: int
    content_loss: float
    style_loss: float
    # A copy of the picture after this step (a few MB); turned into pixels only on ask.
    pixels: Any = field(default=None, repr=False, compare=False)

    def image(self) -> Image.Image:
        """The picture after this step (RGB)."""
        return _to_image(self.pixels)


class Cancelled(Exception):
    """on_step returned False: the run stopped after that step."""


@dataclass
class StyleResult:
    image: Image.Image  # RGB, long side == settings.side, the content picture's shape
    steps: int
    first_style_loss: float  # of the start picture
    last_style_loss: float  # of the returned picture
    first_content_loss: float
    last_content_loss: float
    seconds: float  # the optimisation, without loading the model
    model_id: str
    device: str


@dataclass(frozen=True)
class Vgg:
    """VGG-19's convolutional part up to conv5_4's ReLU (no last pool, no classifier:
    the classifier is 120 M of its 140 M parameters and style transfer never uses it)."""

    features: Any  # torch.nn.Sequential, frozen, shared read-only by concurrent runs
    relu_at: dict[str, int]  # conv name -> index of its ReLU in features
    mean: Any  # (1, 3, 1, 1) tensors on the device
    std: Any


class StyleTransfer(LazyModel[Vgg]):
    """Gatys style transfer; ``weights`` is ``imagenet`` (torchvision's
    VGG19_Weights.IMAGENET1K_V1) or ``random`` (nothing downloaded). ``seed`` draws the
    random filters and the start picture of ``init="noise"``."""

    family = "torchvision"

    def __init__(
        self,
        weights: str = "imagenet",
        *,
        seed: int = 0,
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
    ) -> None:
        if weights not in ("imagenet", "random"):
            raise ModelUnavailable(f"unknown VGG-19 weights {weights!r}: imagenet or random")
        tag = "IMAGENET1K_V1" if weights == "imagenet" else f"random-seed{seed}"
        super().__init__(f"vgg19:{tag}", model_dir=model_dir, cache_dir=cache_dir, device=device)
        self.weights = weights
        self.seed = seed
        self._fetch_error: BaseException | None = None

    # ---- weights ----------------------------------------------------------------------
    def weights_file(self) -> Path | None:
        """The ImageNet checkpoint on this machine: EVERLOOK_MODEL_DIR/torchvision/,
        Everlook's cache, then torch.hub's (where torchvision downloads by itself)."""
        local = self.local_weights(WEIGHTS_FILE)
        if local is not None:
            return local
        with IMPORT_LOCK:
            import torch.hub
        for folder in (self.cache_dir, Path(torch.hub.get_dir()) / "checkpoints"):
            if folder is not None and (folder / WEIGHTS_FILE).is_file():
                return folder / WEIGHTS_FILE
        return None

    def _fetch_weights(self) -> None:
        self._fetch_error = None
        if self.weights != "imagenet" or self.weights_file() is not None:
            return
        why = offline_reason(WEIGHTS_HOST)  # fail in a second, not after HTTP retries
        if why is not None:
            self._fetch_error = ConnectionError(why)
            return
        try:
            with IMPORT_LOCK:
                from torchvision.models import VGG19_Weights
            kwargs = {"model_dir": str(self.cache_dir)} if self.cache_dir is not None else {}
            # torchvision's own download: torch.hub's cache, its hash check on the file.
            VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True, **kwargs)
        except Exception as exc:
            self._fetch_error = exc

    def _missing(self, cause: BaseException | None) -> Exception:
        source = f"{WEIGHTS_FILE} from {WEIGHTS_URL} into torch.hub's cache"
        return self.missing_weights("VGG-19 (torchvision, ImageNet)", WEIGHTS_FILE, source, cause)

    # ---- loading ----------------------------------------------------------------------
    def _load(self) -> Vgg:
        path = self.weights_file() if self.weights == "imagenet" else None
        if self.weights == "imagenet" and path is None:
            raise self._missing(self._fetch_error)
        import torch
        from torchvision.models import VGG19_Weights, vgg19

        with torch.device("meta"):  # the architecture without allocating the classifier
            features = vgg19(weights=None).features[:-1]  # the last pool feeds only it
        features = features.to_empty(device="cpu")
        if path is None:
            _init_random(features, self.seed)
        else:
            try:  # mapped, so the classifier's 480 MB are never read
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # torch's pre-1.6 file format (2017's file) can't be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            # A full torchvision checkpoint or only its features.* keys (what is used).
            mine = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
            features.load_state_dict(mine, strict=True)
        features.requires_grad_(False)
        features = self.runtime.place(features)
        relus = [i for i, module in enumerate(features) if isinstance(module, torch.nn.ReLU)]
        relu_at = dict(zip(CONV_NAMES, relus, strict=True))  # each conv has its ReLU
        norm = VGG19_Weights.IMAGENET1K_V1.transforms()  # its mean and std, also for random
        mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1)
                     for v in (norm.mean, norm.std))  # fmt: skip
        return Vgg(features, relu_at, mean, std)

    def _predict(self, model: Vgg, inputs: Any) -> Any:
        raise TypeError("style transfer needs gradients: call run(), not predict()")

    # ---- style transfer ---------------------------------------------------------------
    def run(
        self,
        content: Image.Image,
        style: Image.Image,
        settings: StyleSettings,
        on_step: Callable[[StepInfo], bool | None] | None = None,
    ) -> StyleResult:
        """Stylise content after style. on_step sees every step; returning False stops
        the run (:class:`Cancelled`) before the next one. Safe to call from several
        threads at once: all state of a run is local, the network is only read."""
        vgg = self.load()
        t0 = time.perf_counter()
        pixels, first, last = _optimise(
            vgg, _fit(content, settings.side), _fit(style, settings.side), settings,
            seed=self.seed, device=self.device, on_step=on_step,
        )  # fmt: skip
        return StyleResult(
            image=_to_image(pixels), steps=settings.steps,
            first_style_loss=first[1], last_style_loss=last[1],
            first_content_loss=first[0], last_content_loss=last[0],
            seconds=time.perf_counter() - t0, model_id=self.model_id, device=self.device,
        )  # fmt: skip


def _optimise(
    vgg: Vgg, content: Image.Image, style: Image.Image, settings: StyleSettings, *,
    seed: int, device: str, on_step: Callable[[StepInfo], bool | None] | None,
) -> tuple[Any, tuple[float, float], tuple[float, float]]:  # fmt: skip
    """The optimisation loop: (final pixels, first losses, last losses)."""
    import torch

    # Gradients are the point here, even when a caller sits inside inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        c_img, s_img = _to_tensor(content, device), _to_tensor(style, device)
        with torch.no_grad():
            c_feats = _features(vgg, c_img, settings.content_layers, settings.pool)
            s_feats = _features(vgg, s_img, settings.style_layers, settings.pool)
            s_grams = {k: _gram(v) for k, v in s_feats.items()}
            del s_feats

        def losses(x: Any) -> tuple[Any, Any]:
            feats = _features(vgg, x, settings.layers, settings.pool)
            mse = torch.nn.functional.mse_loss
            c = sum(mse(feats[k], c_feats[k]) for k in settings.content_layers)
            s = sum(mse(_gram(feats[k]), s_grams[k]) for k in settings.style_layers)
            return c * settings.content_weight, s * settings.style_weight

        if settings.init == "noise":
            gen = torch.Generator(device="cpu").manual_seed(seed)
            x = torch.rand(c_img.shape, generator=gen).to(device)
        else:
            x = c_img.clone()
        x.requires_grad_(True)
        opt: Any
        if settings.optimizer == "lbfgs":
            # max_iter=1: one iteration per step() so progress and cancel act every step;
            # the curvature history lives in the optimiser's state across calls. Zero
            # tolerances: stop only on an exactly zero gradient, not on a small loss.
            opt = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=LBFGS_HISTORY,
                                    tolerance_grad=0.0, tolerance_change=0.0)  # fmt: skip
        else:
            opt = torch.optim.Adam([x], lr=settings.learning_rate)
        seen: list[tuple[float, float]] = []  # losses of each evaluation in a step

        def closure() -> Any:
            opt.zero_grad()
            c, s = losses(x)
            (c + s).backward()
            seen.append((c.item(), s.item()))
            return c + s

        first: tuple[float, float] | None = None
        for step in range(1, settings.steps + 1):
            seen.clear()
            opt.step(closure)
            # Adam: projected descent, pixels stay in 0..1. L-BFGS runs unconstrained, as
            # in Gatys' own code, and is clamped at the end: clamping between its steps
            # breaks its curvature pairs (from noise, one seed's style loss grew 25×).
            if settings.optimizer == "adam":
                with torch.no_grad():
                    x.clamp_(0, 1)
            if first is None:
                first = seen[0]
            if on_step is not None:
                info = StepInfo(step, settings.steps, *seen[0], pixels=x.detach().clone())
                if on_step(info) is False:
                    raise Cancelled(f"style transfer cancelled after step {step}")
        with torch.no_grad():
            x.clamp_(0, 1)  # the picture returned, and the one its losses describe
            c, s = losses(x)
        assert first is not None
        return x.detach(), first, (float(c), float(s))


def _features(vgg: Vgg, x: Any, layers: tuple[str, ...], pool: str) -> dict[str, Any]:
    """Activations (after ReLU, as in Gatys' Caffe network) of layers for pictures x."""
    import torch

    wanted = {vgg.relu_at[name]: name for name in layers}
    out: dict[str, Any] = {}
    h = (x - vgg.mean) / vgg.std
    for i, module in enumerate(vgg.features[: max(wanted) + 1]):
        if isinstance(module, torch.nn.ReLU):
            h = torch.relu(h)  # not torchvision's in-place one: h may be kept below
        elif isinstance(module, torch.nn.MaxPool2d) and pool == "avg":
            h = torch.nn.functional.avg_pool2d(h, 2)
        else:
            h = module(h)
        if i in wanted:
            out[wanted[i]] = h
    return out


def _gram(f: Any) -> Any:
    _, c, h, w = f.shape
    flat = f.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


def _to_tensor(picture: Image.Image, device: str) -> Any:
    import numpy as np
    import torch

    arr = np.array(picture, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous().to(device)


def _init_random(features: Any, seed: int) -> None:
    """He fan-in normal filters and zero biases, reproducible from seed without touching
    the process's random state (other models may be drawing from it)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in features:
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)


def _fit(picture: Image.Image, side: int) -> Image.Image:
    """RGB, resized so that its long side is ``side`` (aspect kept). The short side is
    at least 16 px: conv5 sees it halved four times, and a side of 0 cannot be pooled."""
    rgb = picture if picture.mode == "RGB" else picture.convert("RGB")
    w, h = rgb.size
    short = max(MIN_SHORT_SIDE, round(min(w, h) * side / max(w, h)))
    size = (side, short) if w >= h else (short, side)
    return rgb if size == rgb.size else rgb.resize(size, Image.Resampling.LANCZOS)


def _to_image(pixels: Any) -> Image.Image:
    """(1, 3, H, W) tensor in 0..1 (clamped here) -> RGB picture."""
    arr = (pixels.detach()[0].clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    return Image.fromarray(arr, "RGB")
