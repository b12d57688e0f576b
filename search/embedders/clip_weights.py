"""Where CLIP's weights come from, and how they get into an open_clip model.

Weights are found, in order:
1. ``pretrained`` is a path to a checkpoint file: that file;
2. ``$EVERLOOK_MODEL_DIR/open_clip/<model>/<pretrained>/`` holds a checkpoint: that file
   (for offline machines; same bytes open_clip would download);
3. ``pretrained`` is a tag open_clip knows: open_clip's own cache, downloading if online.
Model configs beyond open_clip's built-ins are registered with ``add_model_config`` from
``search/embedders/model_configs/`` and ``$EVERLOOK_MODEL_DIR/open_clip_configs/``.

The model is built on the meta device and its checkpoint assigned to it, so no weight is
drawn at random only to be overwritten (:func:`build_without_init`).
"""

from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path
from typing import Any

from search.model_base import BUILTIN_MODELS, ModelUnavailable, WeightsUnavailable

log = logging.getLogger(__name__)

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
def load_model(
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
        try:
            model, preprocess = build_without_init(model_name, weights, extra, device)
        except (OSError, WeightsUnavailable):
            raise
        except Exception as exc:  # an architecture the meta device cannot take
            log.info("%s: built the usual way (%s: %s)", model_name, type(exc).__name__, exc)
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


def build_without_init(
    model_name: str, weights: str, extra: dict[str, Any], device: str
) -> tuple[Any, Any]:
    """The model and its eval transform, as open_clip.create_model_and_transforms makes
    them, minus the random initialisation its weights would overwrite (ViT-B-32: 151 M
    parameters drawn, then replaced): the modules are built on the meta device (shapes,
    no memory), and open_clip's own load_checkpoint (its key conversions and resizing)
    assigns the checkpoint's tensors to them instead of copying into them."""
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_kwargs

    from search.embedders.clip_cache import quiet_root

    if Path(weights).is_file():
        checkpoint = weights
    else:  # a tag: open_clip's cache, downloading if need be
        cfg = open_clip.get_pretrained_cfg(model_name, weights)
        checkpoint = open_clip.download_pretrained(cfg)
    pp = {k[len("image_") :]: v for k, v in extra.items() if k.startswith("image_")}
    # open_clip warns that a model built with load_weights=False is "initialized
    # randomly": here it is neither (meta tensors) nor left so (the weights come next).
    with torch.device("meta"), quiet_root("No pretrained weights loaded"):
        model = open_clip.create_model(
            model_name, pretrained=weights, load_weights=False, device="meta",
            force_quick_gelu=bool(extra.get("force_quick_gelu", False)),
            force_preprocess_cfg=merge_preprocess_kwargs({}, **pp),
        )  # fmt: skip
    tensors = itertools.chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    want = {k: t.dtype for k, t in tensors}
    model.load_state_dict = functools.partial(torch.nn.Module.load_state_dict, model, assign=True)
    try:
        open_clip.load_checkpoint(model, checkpoint, strict=True)
    finally:
        del model.load_state_dict
    _settle(model, want)
    model.to(device)
    return model, image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def _settle(model: Any, want: dict[str, Any]) -> None:
    """After assignment: tensors in the dtype the model was built with (a checkpoint may
    hold fp16), and the buffers a constructor computes instead of loading (CLIP's causal
    mask) computed; anything else still on the meta device is an error."""
    import torch

    for prefix, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for key, t in list(table.items()):
                if t is None:
                    continue
                name = f"{prefix}.{key}" if prefix else key
                dtype = want.get(name, t.dtype)
                if t.is_meta and key == "attn_mask" and t.dim() == 2:
                    n = t.shape[0]
                    table[key] = torch.full((n, n), float("-inf"), dtype=dtype).triu_(1)
                elif t.is_meta:
                    raise RuntimeError(f"{name} is computed at construction, not loaded")
                elif t.dtype != dtype:
                    t.data = t.data.to(dtype)


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
