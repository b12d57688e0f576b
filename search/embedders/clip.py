"""CLIP image/text embeddings through open_clip, the upstream reference implementation.

Where the weights come from and how the model is built: clip_weights.py. What runs the
towers (``backend``): PyTorch, or on a CPU ONNX Runtime over towers exported from this
same model and checked against it (clip_onnx.py, clip_export.py). A text query whose
tower is exported already imports neither torch nor open_clip (clip_tokenizer.py).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from search.embedders import register
from search.embedders.clip_weights import (  # noqa: F401  (the names callers import from here)
    BUILTIN_CONFIGS,
    BUILTIN_MODELS,
    load_model,
    local_checkpoint,
    read_model_config,
    register_configs,
    resolve_weights,
)
from search.model_base import (
    IMPORT_LOCK,
    LazyModel,
    ModelUnavailable,
    Runtime,
    WeightsUnavailable,
    pick_device,
)

if TYPE_CHECKING:
    from search.embedders.clip_onnx import OnnxClip

log = logging.getLogger(__name__)
Parts = tuple[Any, Any, Any]  # model, eval transform, tokenizer
BACKENDS = ("auto", "torch", "onnx")
QUANTIZE = ("none", "int8")
RECENT_QUERIES = 256  # text vectors kept per embedder: a search page asks the same again
QUERY_BATCH = 8  # larger batches are prompt banks (labels, styles), not worth keeping
T = TypeVar("T")


class OpenClipEmbedder(LazyModel[Parts]):
    """open_clip model behind the Embedder protocol. Loads on first use (LazyModel).

    ``backend``: "torch"; "onnx" (ONNX Runtime on the CPU); "auto": ONNX Runtime when no
    GPU is there, onnxruntime is installed and the exported towers pass the parity check,
    else torch. ``quantize="int8"`` runs dynamically quantised towers: other vectors, so
    another model id. ``cache_dir`` is Everlook's models cache (Settings.models_cache),
    where exported towers are kept; without it "auto" means torch. ``threads``: ONNX
    Runtime's (default: every core). ``prepack_text=False`` opens the text tower faster
    and runs it slower: for a process that answers one query (see clip_onnx.session).
    ``cpu_bf16``: on a CPU that multiplies bfloat16 natively, run pictures in bf16 where
    they agree with fp32: OpenVINO (clip_bf16) with ONNX Runtime's towers, or PyTorch on
    AMX when OpenVINO is missing (Settings.cpu_bf16, on by default; off here, so a bare
    embedder computes fp32).
    """

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
        backend: str = "auto",
        quantize: str = "none",
        cache_dir: Path | None = None,
        threads: int | None = None,
        prepack_text: bool = True,
        cpu_bf16: bool = False,
    ) -> None:
        if backend not in BACKENDS or quantize not in QUANTIZE:
            raise ValueError(f"backend must be one of {BACKENDS}, quantize one of {QUANTIZE}")
        if quantize != "none" and backend == "torch":
            raise ValueError("int8 towers run on ONNX Runtime: backend 'torch' cannot run them")
        if cache_dir is None and (backend == "onnx" or quantize != "none"):
            raise ValueError("the ONNX backend needs cache_dir (where exported towers are kept)")
        family_cache = cache_dir / self.family if cache_dir is not None else None
        super().__init__(
            model_name, model_dir=model_dir, cache_dir=family_cache, device=device, runtime=runtime
        )
        self.model_name = model_name
        self.pretrained = pretrained
        self.backend = backend
        self.quantize = quantize
        self.models_cache = cache_dir
        self.threads = threads
        self.prepack_text = prepack_text
        self.cpu_bf16 = cpu_bf16
        self._bf16_images: bool | None = None  # None: not decided yet
        self._fp32: Parts | None = None
        self._cfg: dict[str, Any] | None = None
        self._onnx_state: OnnxClip | bool | None = None  # None: not decided; False: torch
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_lock = threading.Lock()

    @property
    def base_model_id(self) -> str:
        # Provenance: a file given directly is named by its file name; a tag by the tag,
        # whether its bytes came from the cache or from EVERLOOK_MODEL_DIR.
        p = Path(self.pretrained).expanduser()
        tag = f"file:{p.name}" if p.is_file() else self.pretrained
        return f"open_clip/{self.model_name}/{tag}"

    @property
    def model_id(self) -> str:
        # fp32 ONNX towers are the same model (cosine >= 0.9999 with open_clip, checked);
        # int8 ones give other vectors, so a switch re-embeds the library.
        suffix = "+onnx-int8" if self.quantize == "int8" else ""
        return self.base_model_id + suffix

    def _load(self) -> Parts:
        weights = resolve_weights(self.model_name, self.pretrained, self.model_dir)
        md = str(self.model_dir) if self.model_dir else None
        # Shared per process and arguments: several embedders of one model load it once.
        parts = load_model(self.model_name, weights, self.pretrained, md, self.device)
        self._fp32 = parts  # what exports read (shared, so kept anyway)
        if str(self.device).startswith("cuda") and self.backend != "onnx":
            parts = self._half_if_parity(parts, "fp16")
        elif self._amx_bf16():
            parts = self._half_if_parity(parts, "bf16")
        return parts

    def _amx_bf16(self) -> bool:
        """Whether torch runs on a CPU whose matrix units (Intel AMX) multiply bfloat16
        several times faster than float32 (measured here, ViT-B-32 batch 16 on 2 cores:
        43 img/s against 18-24 img/s for fp32 in PyTorch and ONNX Runtime alike)."""
        if not self.cpu_bf16 or self.backend == "onnx" or self.quantize != "none":
            return False
        if str(self.device) != "cpu" or not cpu_has_amx_bf16():
            return False
        import torch

        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # the kernel allows AMX
        return bool(probe is not None and probe())

    def _half_if_parity(self, parts: Parts, kind: str) -> Parts:
        """Half precision doubles the towers' speed on a GPU (fp16) and on a CPU with AMX
        (bf16); kept only when its embeddings agree with fp32 on probe pictures and
        prompts (cosine >= 0.999, search.gpu)."""
        import torch

        from search.gpu import half_if_parity, probe_inputs

        model, preprocess, tokenizer = parts
        images, tokens = probe_inputs(preprocess, tokenizer)
        dtype = torch.bfloat16 if kind == "bf16" else torch.float16
        half, cosine = half_if_parity(model, images, tokens, dtype=dtype)
        kept = half is not model
        log.info("%s on %s: %s %s (lowest %s/fp32 cosine %.6f, bar 0.999)", self.model_id,
                 self.device, kind, "kept" if kept else "refused", kind, cosine)  # fmt: skip
        return half, preprocess, tokenizer

    def _images_by_torch(self) -> bool:
        """With backend auto on a CPU with AMX, pictures go to PyTorch in bf16 when it
        passed its parity gate (text queries stay on ONNX Runtime: no torch to start)."""
        if self._bf16_images is None:
            wanted = self.backend == "auto" and self.quantize == "none" and self.cpu_bf16
            # OpenVINO runs bf16 without PyTorch's start-up (clip_bf16): PyTorch only
            # where it is missing. The device may still read "auto" here (it settles when
            # the model loads).
            if wanted and cpu_has_amx_bf16() and not bf16_runtime() and not self._on_gpu():
                import torch

                from search.gpu import input_dtype

                self._bf16_images = input_dtype(self.load()[0]) == torch.bfloat16
                if self._bf16_images:  # the first query after indexing then needs no torch
                    self._via_onnx(lambda o: o.info("text"))
            else:
                self._bf16_images = False
        return self._bf16_images

    def _predict(self, model: Parts, inputs: Any) -> Any:
        from search.gpu import input_dtype

        x = inputs.to(self.device, dtype=input_dtype(model[0]))  # fp16 when kept
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

    # ---- what runs the towers -----------------------------------------------------------
    def _onnx(self) -> OnnxClip | None:
        """The ONNX side when the backend is (or "auto" resolves to) ONNX Runtime."""
        state = self._onnx_state
        if state is None:
            with IMPORT_LOCK:  # the lock every load takes first (see model_base)
                if self._onnx_state is None:
                    self._onnx_state = self._choose() or False
                state = self._onnx_state
        return state or None  # type: ignore[return-value]

    def _choose(self) -> OnnxClip | None:
        from search.embedders import clip_cache, clip_onnx

        if self.backend == "torch" or self.models_cache is None:
            return None
        version = clip_cache.runtime_version()
        if version is None:
            if self.backend == "onnx" or self.quantize != "none":
                raise ModelUnavailable("the ONNX backend needs onnxruntime (pip install it)")
            return None
        if self.backend == "auto" and self.quantize == "none" and self._on_gpu():
            return None
        folder = clip_cache.cache_folder(self.models_cache, self.base_model_id, version)
        return clip_onnx.OnnxClip(
            folder, quantize=self.quantize, tokenize=self._tokens, export=self._export,
            weights=self._weights_stamp, threads=self.threads, prepack_text=self.prepack_text,
            bf16=self.cpu_bf16 and self.quantize == "none",
        )  # fmt: skip

    def _on_gpu(self) -> bool:
        requested = self.runtime.device
        if requested != "auto":
            return requested.startswith("cuda")
        # Asking torch costs ~1.6 s and ~600 MB: only where a GPU driver is there at all.
        if sys.platform == "darwin" or (
            sys.platform.startswith("linux")
            and not any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/kfd"))
        ):
            return False
        return pick_device("auto").startswith("cuda")

    def _via_onnx(self, run: Callable[[OnnxClip], T | None]) -> T | None:
        """run on the ONNX side, or None for torch. With backend "auto" an ONNX failure
        (an export that crashes, a runtime that cannot load it) is logged once and torch
        takes over; asked for explicitly (or int8), it is an error."""
        onnx = self._onnx()
        if onnx is None:
            return None
        try:
            return run(onnx)
        except WeightsUnavailable:
            raise  # no weights to export from: torch has none either
        except Exception as exc:
            if self.backend == "onnx" or self.quantize != "none":
                raise
            log.warning(
                "ONNX Runtime cannot run %s (%s: %s); PyTorch runs it instead",
                self.model_id, type(exc).__name__, exc,
            )  # fmt: skip
            self._onnx_state = False
            return None

    def _tokens(self, texts: Sequence[str]) -> np.ndarray:
        from search.embedders.clip_tokenizer import tokenizer, uses_default_tokenizer

        cfg = self._config()
        if uses_default_tokenizer(self.model_name, cfg):
            ctx = int(cfg.get("text_cfg", {}).get("context_length", 77))
            cache = self.models_cache / "onnx" if self.models_cache is not None else None
            return tokenizer(ctx, cache)(texts)
        return np.asarray(self.load()[2](list(texts)).numpy(), dtype=np.int64)

    def _weights_stamp(self) -> dict[str, Any] | None:
        """The checkpoint file, found without open_clip where Everlook finds it first."""
        from search.embedders.clip_cache import weights_stamp

        p = Path(self.pretrained).expanduser()
        return weights_stamp(p if p.is_file() else local_checkpoint(
            self.model_dir, self.model_name, self.pretrained))  # fmt: skip

    def _export(self, tower: str) -> None:
        """The torch side: the model through the normal weights path, one tower out."""
        from search.embedders.clip_cache import Artifact
        from search.embedders.clip_export import export_tower

        self.load()
        assert self._fp32 is not None  # set by the load
        model, _, tokenize = self._fp32  # never the half-precision copy
        onnx = self._onnx()
        assert onnx is not None
        # With the model loaded to index pictures, the text tower comes too (seconds):
        # the first query after indexing then needs no torch. Not the other way round:
        # a query waits for what it exports.
        for name in (tower, "text") if tower == "image" else (tower,):
            art = Artifact(onnx.folder, name)
            if name == tower or art.valid(self._weights_stamp()) is None:
                export_tower(
                    model, art, model_id=self.base_model_id, weights=self._weights_stamp(),
                    tokenize=tokenize, threads=self.threads,
                )  # fmt: skip

    def text_ready(self) -> bool:
        """Whether embed_texts would run now without torch: the ONNX backend, open_clip's
        default tokenizer, and a text tower already exported, passing and of this weights."""
        from search.embedders.clip_cache import Artifact
        from search.embedders.clip_tokenizer import uses_default_tokenizer

        onnx = self._via_onnx(lambda o: o)
        if onnx is None or not uses_default_tokenizer(self.model_name, self._config()):
            return False
        fp32 = Artifact(onnx.folder, "text").valid(self._weights_stamp())
        if fp32 is None or fp32.get("status") != "ok":
            return False
        if self.quantize == "none":
            return True
        int8 = Artifact(onnx.folder, "text", self.quantize).valid(self._weights_stamp())
        return int8 is not None and int8.get("from") == fp32.get("export_id")

    # ---- embedding ----------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> Any:
        if self._images_by_torch():
            return self.transform(image)
        prep = self._via_onnx(lambda o: o.picture_prep())
        return prep(image) if prep is not None else self.transform(image)

    def embed_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        # numpy arrays (ONNX preprocessing) and torch tensors (open_clip's) both go to
        # either runtime.
        out = None
        if not self._images_by_torch():
            out = self._via_onnx(
                lambda o: o.embed_pixels(np.stack([np.asarray(b, dtype=np.float32) for b in batch]))
            )
        if out is not None:
            return out
        import torch

        feats = self.predict(torch.stack([torch.as_tensor(b) for b in batch]))
        return _unit(feats)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_preprocessed([self.preprocess(im) for im in images])

    def warm_images(self) -> None:
        """Open what embeds pictures now (the preprocessing, then the image tower's
        session, or the torch model), so that it loads while the first pictures decode
        (a session takes ~0.4 s on one core). An error is left for the first batch to meet
        and report where it reports errors."""
        try:
            if not self._images_by_torch():
                opened = self._via_onnx(lambda o: (o.picture_prep(), o.tower("image"))[1])
                if opened is not None:
                    return
            self.load()
        except Exception as exc:
            log.debug("opening the image tower early failed (%s); the first batch will", exc)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of texts; recent queries answer from memory."""
        texts = list(texts)
        if not texts or len(texts) > QUERY_BATCH:
            return self._embed_texts(texts)
        with self._recent_lock:
            found = {t: self._recent[t] for t in texts if t in self._recent}
            for t in found:
                self._recent.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            fresh = self._embed_texts(missing)
            found.update(zip(missing, fresh, strict=True))
            with self._recent_lock:
                for t, v in zip(missing, fresh, strict=True):
                    self._recent[t] = v
                while len(self._recent) > RECENT_QUERIES:
                    self._recent.popitem(last=False)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=True)

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        out = self._via_onnx(lambda o: o.embed_texts(texts))
        if out is not None:
            return out
        model, _, tokenizer = self.load()
        tokens = tokenizer(texts).to(self.device)
        with self.runtime.inference():
            feats = encode_text_trimmed(model, tokens)
        return _unit(feats)


def _unit(feats: Any) -> np.ndarray:
    """float32 rows, normalised again when the tower ran in half precision: its own
    normalisation leaves norms up to ~0.4 % off 1 in bf16, and FAISS compares raw inner
    products."""
    import torch

    half = feats.dtype != torch.float32
    out = np.ascontiguousarray(feats.float().cpu().numpy(), dtype=np.float32)
    if half:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def bf16_runtime() -> bool:
    """Whether OpenVINO is there to run pictures in bf16 on this CPU (clip_bf16)."""
    from search.embedders.clip_bf16 import available

    return available()


def cpu_has_amx_bf16() -> bool:
    """The CPU announces AMX bfloat16 (Linux's /proc/cpuinfo; read without torch)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


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
