"""Export of open_clip's towers to ONNX, checked against open_clip: the torch side of
clip_onnx.py (which never imports this module on a query whose tower is cached).

- Text tower: int64 tokens [batch, seq] -> L2-normalised float32 [batch, dim], both axes
  dynamic (seq <= the context length), pooled where open_clip pools (the highest id for
  ``text_pool_type == "argmax"``), so a prompt cut after its end-of-text token runs on
  a fraction of the positions. Only the dynamo exporter (opset 18) keeps the sequence
  axis symbolic: the legacy one bakes the example's length into the attention reshapes.
- Image tower: float32 [batch, 3, S, S] -> normalised [batch, dim], batch dynamic. The
  legacy exporter first (under a second for ViT-B-32, the dynamo one takes ~10x longer),
  with PyTorch's fused attention fast path switched off while tracing, which the legacy
  exporter cannot translate; the dynamo exporter when the legacy one fails or disagrees.

Parity gate: ORT is compared with open_clip's own ``encode_text(tokens, normalize=True)``
(padded to the context length) on a few prompts and with ``encode_image`` on a few random
pictures. Below cosine 0.9999 the sidecar records a fallback and torch keeps the tower.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search.embedders.clip_cache import Artifact, exclusive, runtime_version
from search.embedders.clip_onnx import FP32_MIN_COSINE, PROMPTS, Tower, session, trim_if

log = logging.getLogger(__name__)
OPSET = 18


class TextTower(torch.nn.Module):
    """open_clip's encode_text for CLIP's own text transformer, over as many positions
    as the tokens have (the causal mask and positional table sliced to match)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.pool = model.text_pool_type
        self.eos = int(getattr(model, "text_eos_id", None) or 0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m, n = self.model, tokens.shape[1]
        x = m.token_embedding(tokens) + m.positional_embedding[:n]
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        if self.pool == "argmax":
            ends = tokens.argmax(dim=-1)
        else:
            ends = tokens.eq(self.eos).int().argmax(dim=-1)
        x = x[torch.arange(x.shape[0]), ends]
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)


class WholeText(torch.nn.Module):
    """Any other text tower, as open_clip runs it (fixed length, no trimming)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)


class ImageTower(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


def sliceable(model: Any) -> bool:
    """CLIP's own text transformer, causal and pooled at one token: exact on a prefix."""
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    pool = getattr(model, "text_pool_type", None)
    return (
        getattr(model, "attn_mask", None) is not None
        and (
            pool == "argmax" or (pool == "eos" and getattr(model, "text_eos_id", None) is not None)
        )
        and all(hasattr(model, p) for p in parts)
    )


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """No fused-attention fast path (the legacy exporter cannot translate it), no
    gradients, no deprecation chatter; the fast path flag comes back as it was."""
    mha = torch.backends.mha
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        mha.set_fastpath_enabled(before)


def _dynamo(
    module: torch.nn.Module, example: torch.Tensor, dims: dict[int, Any], tmp: Path
) -> None:
    name = "tokens" if example.dtype == torch.int64 else "pixels"
    prog = torch.onnx.export(
        module.eval(), (example,), dynamo=True, opset_version=OPSET, verbose=False,
        input_names=[name], output_names=["vector"], dynamic_shapes={name: dims},
    )  # fmt: skip
    assert prog is not None
    prog.save(str(tmp))


def _legacy(module: torch.nn.Module, example: torch.Tensor, tmp: Path) -> None:
    torch.onnx.export(
        module.eval(), (example,), str(tmp), dynamo=False, opset_version=OPSET,
        input_names=["pixels"], output_names=["vector"],
        dynamic_axes={"pixels": {0: "batch"}, "vector": {0: "batch"}},
    )  # fmt: skip


def _cosines(ref: torch.Tensor, got: np.ndarray) -> list[float]:
    r = ref.float().cpu().numpy()
    return [float(c) for c in (r * got).sum(axis=1) / np.linalg.norm(r, axis=1)]


def _relocate(raw: Path, dest: Path) -> Path:
    """raw saved again as dest plus one weights file beside it (returned), which ONNX
    Runtime maps instead of copying: a query process holding ViT-B-32's text tower then
    peaks at ~250 MB instead of ~400 MB and opens it in ~0.25 s instead of ~0.6 s (and a
    tower over 2 GB, protobuf's limit, needs it anyway). Named per export: see commit."""
    import onnx

    model = onnx.load(str(raw))
    data = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.data")
    onnx.save_model(
        model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data.name, size_threshold=1024,
    )  # fmt: skip
    return data


def _prompts(tokenize: Callable[[Sequence[str]], Any]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(tokenize(list(PROMPTS))), dtype=torch.int64).cpu()


def _pictures(model: Any) -> torch.Tensor:
    size = model.visual.preprocess_cfg["size"]
    h, w = size if isinstance(size, tuple | list) else (size, size)
    return torch.randn(4, 3, h, w, generator=torch.Generator().manual_seed(0))


def _check(
    tower: str, path: Path, info: dict[str, Any], model: Any,
    tokenize: Callable[[Sequence[str]], Any], threads: int | None,
) -> list[float]:  # fmt: skip
    """Cosines between ORT on path and open_clip's own encode_text (padded to the
    context length, as open_clip runs it) or encode_image, on a few inputs."""
    dev = _device(model)
    with _tracing():
        if tower == "text":
            x = _prompts(tokenize)
            ref, feed = model.encode_text(x.to(dev), normalize=True), trim_if(x.numpy(), info)
        else:
            x = _pictures(model)
            ref, feed = model.encode_image(x.to(dev), normalize=True), x.numpy()
    return _cosines(ref, Tower(session(path, threads), info)(feed))


def _export_text(
    model: Any, raw: Path, tokenize: Callable[[Sequence[str]], Any], threads: int | None
) -> dict[str, Any]:
    from torch.export import Dim

    tokens = _prompts(tokenize)
    ctx = int(tokens.shape[1])
    if sliceable(model):
        module: torch.nn.Module = TextTower(model)
        dims = {0: Dim("batch", min=1, max=65536), 1: Dim("seq", min=1, max=ctx)}
        example = tokens[1:4, : min(ctx, 9)]  # 3 x 9: no size equal to another, nor 1
    else:
        module, dims, example = WholeText(model), {0: Dim("batch", min=1, max=65536)}, tokens[1:4]
    with _tracing():
        _dynamo(module, example.to(_device(model)), dims, raw)
    trim = sliceable(model) and model.text_pool_type == "argmax"
    dim = int(model.encode_text(tokens[:1].to(_device(model))).shape[1])
    return {"trim": trim, "context_length": ctx, "dim": dim, "exporter": "dynamo"}


def _export_image(model: Any, raw: Path, threads: int | None) -> dict[str, Any]:
    """The legacy exporter, or the dynamo one when the legacy one fails or disagrees."""
    from torch.export import Dim

    pp = model.visual.preprocess_cfg
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in pp.items()}
    pixels = _pictures(model).to(_device(model))
    info: dict[str, Any] = {"preprocess": cfg}
    for exporter in ("legacy", "dynamo"):
        try:
            with _tracing():
                if exporter == "legacy":
                    _legacy(ImageTower(model), pixels[:2], raw)
                else:
                    _dynamo(ImageTower(model), pixels[:2], {0: Dim("batch", min=1, max=65536)}, raw)
            info.update(exporter=exporter)
            cos = _check("image", raw, info, model, lambda t: [], threads)
        except Exception as exc:  # an exporter that cannot take this model: the next
            log.info("%s export of the image tower failed: %s", exporter, exc)
            continue
        info["dim"] = int(model.encode_image(pixels[:1]).shape[1])
        if min(cos) >= FP32_MIN_COSINE:
            break
    if "dim" not in info:
        raise RuntimeError("neither ONNX exporter could export the image tower")
    return info


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def export_tower(
    model: Any,
    art: Artifact,
    *,
    model_id: str,
    weights: dict[str, Any] | None,
    tokenize: Callable[[Sequence[str]], Any],
    threads: int | None = None,
) -> dict[str, Any]:
    """Export one fp32 tower of an open_clip model into ``art`` (atomically, once across
    processes), with its parity verdict. Returns the sidecar."""
    with exclusive(art.folder):
        done = art.valid(weights)
        if done is not None:
            return done  # another process exported it while this one waited
        work = art.temp()  # a private folder beside the cache's files: renames are atomic
        work.mkdir()
        started = time.perf_counter()
        try:
            raw, final = work / "raw.onnx", work / art.path.name
            try:
                if art.tower == "text":
                    info = _export_text(model, raw, tokenize, threads)
                else:
                    info = _export_image(model, raw, threads)
                data = _relocate(raw, final)
                # The verdict is on the files that will be used, not on the raw export.
                info["cosines"] = _check(art.tower, final, info, model, tokenize, threads)
            except Exception as exc:  # an architecture the exporters cannot take
                info, data = {"cosines": [], "error": f"{type(exc).__name__}: {exc}"}, None
            low = min(info["cosines"], default=-1.0)
            info.update(
                model_id=model_id, weights=weights, opset=OPSET, min_cosine=low,
                status="ok" if low >= FP32_MIN_COSINE else "fallback",
                seconds=round(time.perf_counter() - started, 2),
                onnxruntime=runtime_version(), torch=torch.__version__,
            )  # fmt: skip
            if info["status"] != "ok":
                why = info.get("error") or f"agrees with open_clip only to cosine {low:.6f}"
                log.warning("the ONNX %s tower of %s %s: PyTorch runs it", art.tower, model_id, why)
                return art.commit(None, info)  # remembered: not checked again every start
            return art.commit(final, info, data)
        finally:
            shutil.rmtree(work, ignore_errors=True)
