"""CLIP image/text embeddings through open_clip, the upstream reference implementation.

Weights are found, in order:
1. ``pretrained`` is a path to a checkpoint file: that file;
2. ``$EVERLOOK_MODEL_DIR/open_clip/<model>/<pretrained>/`` holds a checkpoint: that file
   (for offline machines; same bytes open_clip would download);
3. ``pretrained`` is a tag open_clip knows: open_clip's own cache, downloading if online.
Model configs beyond open_clip's built-ins are registered with ``add_model_config`` from
``search/embedders/model_configs/`` and ``$EVERLOOK_MODEL_DIR/open_clip_configs/``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from search.embedders import register
from search.model_base import (
    BUILTIN_MODELS,
    LazyModel,
    ModelUnavailable,
    Runtime,
    WeightsUnavailable,
)

BUILTIN_CONFIGS = Path(__file__).resolve().parent / "model_configs"
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@functools.cache
def _register_config_dir(path: str) -> None:
    import open_clip

    if Path(path).is_dir() and any(Path(path).glob("*.json")):
        open_clip.add_model_config(path)


def register_configs(model_dir: Path | None) -> None:
    _register_config_dir(str(BUILTIN_CONFIGS))
    if model_dir is not None:
        _register_config_dir(str(model_dir / "open_clip_configs"))


def local_checkpoint(model_dir: Path | None, model_name: str, pretrained: str) -> Path | None:
    """A checkpoint under EVERLOOK_MODEL_DIR, else among the weights Everlook ships."""
    for root in (model_dir, BUILTIN_MODELS):
        if root is None:
            continue
        folder = root / "open_clip" / model_name / pretrained
        if not folder.is_dir():
            continue
        for name in CHECKPOINT_NAMES:
            if (folder / name).is_file():
                return folder / name
        found = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        if found:
            return found[0]
    return None


def _missing_weights_message(
    model_name: str, pretrained: str, model_dir: Path | None, cause: BaseException | None
) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    source = (
        f"the file open_clip_model.safetensors of the Hugging Face repository '{hub}'"
        if hub
        else f"the checkpoint at {cfg['url']}"
        if cfg.get("url")
        else "its checkpoint file"
    )
    where = str(model_dir) if model_dir is not None else "DIR"
    chosen = "" if model_dir is not None else " (DIR being a folder of your choice)"
    because = f" ({type(cause).__name__}: {cause})" if cause else ""
    return (
        f"The weights of CLIP model {model_name!r} / {pretrained!r} are not on this machine "
        f"and could not be downloaded{because}. On a machine with internet, the first run "
        f"downloads them into open_clip's cache (~/.cache/huggingface/hub). To run offline, "
        f"copy {source} to {where}/open_clip/{model_name}/{pretrained}/open_clip_model.safetensors"
        f"{chosen} and set EVERLOOK_MODEL_DIR={where}; or set EVERLOOK_CLIP_PRETRAINED to the "
        f"path of a checkpoint file."
    )


def resolve_weights(model_name: str, pretrained: str, model_dir: Path | None) -> str:
    """Return what to pass as open_clip's ``pretrained``: a local file or a known tag."""
    import open_clip

    register_configs(model_dir)
    if model_name not in open_clip.list_models():
        some = ", ".join(open_clip.list_models()[:12])
        raise ModelUnavailable(f"unknown open_clip model {model_name!r}; known: {some}...")
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser())
    local = local_checkpoint(model_dir, model_name, pretrained)
    if local is not None:
        return str(local)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise WeightsUnavailable(
            f"{pretrained!r} is neither a checkpoint file nor a pretrained tag open_clip knows "
            f"for {model_name!r} (known: {tags}). "
            + _missing_weights_message(model_name, pretrained, model_dir, None)
        )
    cached = _hf_cached(cfg)
    if cached is not None:
        return cached
    why = _offline_reason()
    if why is not None:
        # Fail now with the useful message, instead of after huggingface_hub's retries
        # (about a minute of back-off per file on a machine without network).
        raise WeightsUnavailable(
            _missing_weights_message(model_name, pretrained, model_dir, ConnectionError(why))
        )
    return pretrained  # open_clip downloads it into its cache


def _hf_cached(cfg: dict[str, Any]) -> str | None:
    """The checkpoint from huggingface_hub's cache, if an earlier run downloaded it."""
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, fname = (
        cfg["hf_hub"].rpartition("/") if not cfg["hf_hub"].endswith("/") else (hub, "", "")
    )
    names = [fname] if fname else list(CHECKPOINT_NAMES)
    for name in names:
        got = try_to_load_from_cache(repo or hub, name)
        if isinstance(got, str) and Path(got).is_file():
            return got
    return None


def _offline_reason() -> str | None:
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    return None


@functools.cache
def _load(
    model_name: str, weights: str, tag: str, model_dir: str | None, device: str
) -> tuple[Any, Any, Any]:
    """Build model, eval transform and tokenizer once per process and arguments."""
    import open_clip

    extra: dict[str, Any] = {}
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    if tag_cfg and weights != tag:
        # A local copy of a tagged checkpoint (EVERLOOK_MODEL_DIR or the HF cache) must be
        # preprocessed and run exactly as open_clip does for the tag itself.
        for key in ("mean", "std", "interpolation", "resize_mode"):
            if key in tag_cfg:
                extra[f"image_{key}"] = tag_cfg[key]
        extra["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=device, **extra
        )
    except Exception as exc:
        if Path(weights).is_file():
            raise
        md = Path(model_dir) if model_dir else None
        raise WeightsUnavailable(_missing_weights_message(model_name, tag, md, exc)) from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


def read_model_config(model_name: str, model_dir: Path | None) -> dict[str, Any]:
    """The model's open_clip config JSON, read without importing open_clip or torch.

    Importing torch costs about 500 MB of resident memory (CUDA builds), so parts that
    only need the dimension or input size (opening an index, a watcher with nothing new
    to embed) must not pay it.
    """
    import importlib.util
    import json

    folders = [BUILTIN_CONFIGS]
    if model_dir is not None:
        folders.append(model_dir / "open_clip_configs")
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    for folder in folders:
        path = folder / f"{model_name}.json"
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
    return {}


Parts = tuple[Any, Any, Any]  # model, eval transform, tokenizer


class OpenClipEmbedder(LazyModel[Parts]):
    """open_clip model behind the Embedder protocol. Loads on first use (LazyModel)."""

    space = "clip"
    modalities = frozenset({"image", "text"})
    family = "open_clip"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str = "laion2b_s34b_b79k",
        model_dir: Path | None = None,
        device: str = "auto",
        runtime: Runtime | None = None,
    ) -> None:
        super().__init__(model_name, model_dir=model_dir, device=device, runtime=runtime)
        self.model_name = model_name
        self.pretrained = pretrained
        self._cfg: dict[str, Any] | None = None

    @property
    def model_id(self) -> str:
        # Provenance: a file given directly is named by its file name; a tag by the tag,
        # whether its bytes came from the cache or from EVERLOOK_MODEL_DIR.
        p = Path(self.pretrained).expanduser()
        tag = f"file:{p.name}" if p.is_file() else self.pretrained
        return f"open_clip/{self.model_name}/{tag}"

    def _load(self) -> Parts:
        weights = resolve_weights(self.model_name, self.pretrained, self.model_dir)
        md = str(self.model_dir) if self.model_dir else None
        # Shared per process and arguments: several embedders of one model load it once.
        return _load(self.model_name, weights, self.pretrained, md, self.device)

    def _predict(self, model: Parts, inputs: Any) -> Any:
        x = inputs.to(self.device)
        return model[0].encode_image(x, normalize=True)

    def _ensure(self) -> Parts:
        return self.load()

    @property
    def model(self) -> Any:
        return self._ensure()[0]

    @property
    def transform(self) -> Any:
        return self._ensure()[1]

    def _config(self) -> dict[str, Any]:
        if self._cfg is None:
            self._cfg = read_model_config(self.model_name, self.model_dir)
        return self._cfg

    @property
    def dim(self) -> int:
        # From the model's config when it says, so opening an index or a catalog never
        # has to load the weights.
        if "embed_dim" in self._config():
            return int(self._config()["embed_dim"])
        out = getattr(self.model.visual, "output_dim", None)
        return int(out) if out else int(self.embed_texts(["x"]).shape[1])

    @property
    def input_side(self) -> int:
        size = self._config().get("vision_cfg", {}).get("image_size")
        if size is None:
            size = self.model.visual.image_size
        return int(min(size) if isinstance(size, tuple | list) else size)

    def preprocess(self, image: Image.Image) -> Any:
        return self.transform(image)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        import torch

        feats = self.predict(torch.stack(list(batch)))
        return np.ascontiguousarray(feats.float().cpu().numpy(), dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_preprocessed([self.preprocess(im) for im in images])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        model, _, tokenizer = self.load()
        tokens = tokenizer(list(texts)).to(self.device)
        with self.runtime.inference():
            feats = encode_text_trimmed(model, tokens)
        return np.ascontiguousarray(feats.float().cpu().numpy(), dtype=np.float32)


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """open_clip's encode_text, run only up to the batch's last end-of-text token.

    Prompts are padded to 77 tokens, but under CLIP's causal mask a position never sees
    the ones after it, and the text is pooled at its end-of-text token: cutting the
    padding after the longest prompt's end-of-text leaves every result the same (a test
    proves it) at a fraction of the cost (~10 of 77 positions for "a photo of a {}").
    Models built otherwise (no causal mask, other pooling) take open_clip's own path.
    """
    import torch
    import torch.nn.functional as F

    pool = getattr(model, "text_pool_type", None)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if (
        getattr(model, "attn_mask", None) is None
        or pool not in ("argmax", "eos")
        or not all(hasattr(model, p) for p in parts)
    ):
        return model.encode_text(tokens, normalize=True)
    if pool == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        hits = tokens == model.text_eos_id
        if not bool(hits.any(dim=-1).all()):
            return model.encode_text(tokens, normalize=True)
        ends = hits.int().argmax(dim=-1)
    n = int(ends.max()) + 1
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return F.normalize(x, dim=-1)


@register("clip")
def _factory(**kwargs: Any) -> OpenClipEmbedder:
    return OpenClipEmbedder(**kwargs)
