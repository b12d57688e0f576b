"""CLIP's towers on ONNX Runtime: the torch-free side (sessions, pictures, int8).

On a CPU, ONNX Runtime runs ViT-B-32's towers faster than PyTorch eager at cosine
1.000000, dynamic int8 faster again, and a process holding only the text tower answers
a query without importing torch at all (figures: bench/clip_backends.py). The towers are
exported once from the open_clip model through the normal weights path (clip_export.py,
the torch side) into the cache (clip_cache.py). Nothing here imports torch or open_clip:
a tower missing from the cache is exported through a callback into the torch side (the
first query or picture of a model pays for it once).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from search.embedders.clip_cache import Artifact, exclusive, quiet_root
from search.model_base import IMPORT_LOCK, ModelUnavailable

log = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.9999  # below this the fp32 export is not the same model: torch answers
INT8_WARN_COSINE = 0.99  # int8 is opt-in; below this its vectors drift visibly (warned)


def session(path: Path, threads: int | None = None, *, prepack: bool = True) -> Any:
    """An ONNX Runtime CPU session over a file whose weights ORT maps (external data).

    ``prepack=False`` skips re-laying out the weights for the matrix kernels when the
    session opens: for ViT-B-32's text tower ~3x quicker to open (~0.15 s vs ~0.45 s
    here), each query ~1.6x slower after that, the same peak memory. A process that
    answers one query (a cold `everlook search`) gains; a server loses."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # ORT's own errors reach us as exceptions
    # ORT's worker threads spin between tasks by default; here they share the cores with
    # the pipeline's decoding threads, whose time spinning would take.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    # From the path, not bytes: ORT maps the weights file instead of holding a copy.
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Tower:
    """A loaded tower: one session, its input name, and its sidecar."""

    def __init__(self, sess: Any, info: dict[str, Any]) -> None:
        self.session = sess
        self.info = info
        self.input = sess.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, int(self.info.get("dim", 0))), dtype=np.float32)
        (out,) = self.session.run(None, {self.input: x})
        return np.ascontiguousarray(out, dtype=np.float32)


RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PicturePrep:
    """open_clip's eval transform for resize_mode "shortest" and a square input, in PIL
    and numpy: resize the short side (PIL, as torchvision does for PIL images), centre
    crop, RGB, /255, normalise. Returns float32 [3, side, side]."""

    side: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: Image.Resampling

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any] | None) -> PicturePrep | None:
        """None for what this does not reproduce (other resize modes, non-square inputs):
        those keep open_clip's own transform."""
        if not cfg or cfg.get("resize_mode", "shortest") != "shortest":
            return None
        size, interp = cfg.get("size"), cfg.get("interpolation") or "bicubic"
        if isinstance(size, list | tuple):
            size = size[0] if len(size) == 2 and size[0] == size[1] else None
        interp = "bicubic" if interp == "random" else interp  # random: in training only
        mean, std = list(cfg.get("mean") or ()), list(cfg.get("std") or ())
        if not isinstance(size, int) or interp not in RESAMPLE or len(mean) != 3 or len(std) != 3:
            return None
        return cls(size, tuple(map(float, mean)), tuple(map(float, std)), RESAMPLE[interp])

    def __call__(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        s = self.side
        # torchvision's Resize(int): the short side becomes s, the long one is truncated.
        size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        if size != (w, h):
            image = image.resize(size, self.resample)
        w, h = image.size  # both >= s now: CenterCrop never pads here
        top, left = round((h - s) / 2.0), round((w - s) / 2.0)
        image = image.crop((left, top, left + s, top + s))
        if image.mode != "RGB":  # open_clip converts after cropping, so do we
            image = image.convert("RGB")
        # The same float32 operations as ToTensor (/255) and Normalize ((x - mean) / std).
        x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def quantize_int8(src: Artifact, dest: Artifact, sample: np.ndarray, threads: int | None) -> None:
    """Dynamic int8 (QInt8 weights, activations quantised per batch) of an fp32 tower,
    with its agreement with fp32 measured on sample inputs and recorded. Torch-free."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    base = src.read() or {}
    with exclusive(src.folder):
        done = dest.valid()
        if done is not None and done.get("from") == base.get("export_id"):
            return  # another process quantised it while this one waited
        tmp = dest.temp()
        try:
            # (It suggests shape inference first; it changes nothing for these graphs.)
            with quiet_root("Please consider to run pre-processing before quantization"):
                quantize_dynamic(src.path, tmp, weight_type=QuantType.QInt8)
            ref = Tower(session(src.path, threads), base)(sample)
            got = Tower(session(tmp, threads), base)(sample)
            cos = [float(c) for c in (ref * got).sum(axis=1)]
            if min(cos) < INT8_WARN_COSINE:
                log.warning(
                    "int8 %s tower of %s agrees with fp32 only to cosine %.4f",
                    src.tower, base.get("model_id"), min(cos),
                )  # fmt: skip
            keep = ("model_id", "weights", "trim", "dim", "preprocess", "context_length")
            dest.commit(tmp, {
                **{k: base[k] for k in keep if k in base},
                "status": "ok", "exporter": "onnxruntime.quantization.quantize_dynamic(QInt8)",
                "opset": base.get("opset"), "from": base.get("export_id"),
                "cosines_vs_fp32": cos, "min_cosine_vs_fp32": min(cos),
            })  # fmt: skip
        finally:
            tmp.unlink(missing_ok=True)


class OnnxClip:
    """The ONNX side of one CLIP model: exports on first use, lazy sessions (a query loads
    only the text tower), and the parity verdicts that send a model back to torch.

    ``export(tower)`` is the torch side (clip.py): it builds the open_clip model through
    the normal weights path and writes ``Artifact(folder, tower)`` with its sidecar.
    ``tokenize`` turns prompts into int64 ids [n, context] (torch-free for models using
    open_clip's default tokenizer).
    """

    def __init__(
        self,
        folder: Path,
        *,
        quantize: str,
        tokenize: Callable[[Sequence[str]], np.ndarray],
        export: Callable[[str], None],
        weights: Callable[[], dict[str, Any] | None],
        threads: int | None = None,
        prepack_text: bool = True,
        bf16: bool = False,
    ) -> None:
        self.folder = folder
        self.bf16 = bf16  # pictures in bf16 where the CPU and the gate allow (clip_bf16)
        self.quantize = quantize
        self.tokenize = tokenize
        self._export = export
        self._weights = weights
        self.threads = threads
        self.prepack_text = prepack_text
        # Loads take IMPORT_LOCK first (model_base): an export loads the torch model, and
        # a lock of our own taken before it could deadlock with a load that embeds text.
        self._lock = IMPORT_LOCK
        self._towers: dict[str, Tower | None] = {}
        self._prep: PicturePrep | bool | None = False  # False: not read yet
        self.exports = 0  # how many towers this instance had to export (tests, logs)

    def info(self, tower: str) -> dict[str, Any] | None:
        """The fp32 sidecar of a tower, exporting it first when the cache lacks it."""
        with self._lock:
            art = Artifact(self.folder, tower)
            info = art.valid(self._weights())
            if info is None:
                self.exports += 1
                self._export(tower)
                info = art.valid(self._weights())
            return info

    def tower(self, name: str) -> Tower | None:
        """The session of a tower; None when its fp32 export failed parity (torch then)."""
        got = self._towers.get(name, False)
        if got is not False:
            return got  # type: ignore[return-value]
        with self._lock:
            if name not in self._towers:
                self._towers[name] = self._open(name)
            return self._towers[name]

    def _open(self, name: str) -> Tower | None:
        for attempt in (1, 2):
            info = self.info(name)
            if info is None:
                raise ModelUnavailable(f"the ONNX {name} tower could not be exported")
            if info["status"] != "ok":
                if self.quantize == "int8":
                    raise ModelUnavailable(
                        f"the ONNX {name} tower of {info.get('model_id')} differs from open_clip "
                        f"(cosine {info.get('min_cosine')}), so it cannot be quantised: "
                        "set EVERLOOK_CLIP_QUANTIZE=none"
                    )
                return None
            art = Artifact(self.folder, name)
            if self.quantize == "int8":
                art = self._int8(name, info)
            try:
                prepack = self.prepack_text or name != "text"
                fp32 = _once(partial(_load_tower, art.path, self.threads, prepack, info))
                if name == "image" and self.bf16 and self.quantize == "none":
                    from search.embedders import clip_bf16

                    fast = clip_bf16.decide(self.folder, info, fp32, self.picture_prep(),
                                            self.threads)  # fmt: skip
                    if fast is not None:
                        return fast
                return fp32()
            except Exception as exc:  # a file damaged after its sidecar was written
                log.warning("cached %s is unreadable (%s); exporting it again", art.path, exc)
                art.forget()
                Artifact(self.folder, name).forget()
                if attempt == 2:
                    raise ModelUnavailable(f"ONNX Runtime cannot load {art.path}: {exc}") from exc
        return None

    def _int8(self, name: str, info: dict[str, Any]) -> Artifact:
        dest = Artifact(self.folder, name, "int8")
        got = dest.valid(self._weights())
        if got is None or got.get("from") != info.get("export_id"):
            quantize_int8(Artifact(self.folder, name), dest, self.sample(name), self.threads)
        return dest

    def sample(self, name: str) -> np.ndarray:
        """Inputs on which int8 agreement with fp32 is measured."""
        if name == "text":
            tokens = self.tokenize(list(PROMPTS))
            return trim_if(tokens, Artifact(self.folder, name).read() or {})
        size = ((Artifact(self.folder, name).read() or {}).get("preprocess") or {})["size"]
        h, w = size if isinstance(size, list) else (size, size)
        return np.random.default_rng(0).standard_normal((4, 3, h, w), dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray | None:
        tower = self.tower("text")
        if tower is None:
            return None
        return tower(trim_if(self.tokenize(list(texts)), tower.info))

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray | None:
        tower = self.tower("image")
        return None if tower is None else tower(np.ascontiguousarray(batch, dtype=np.float32))

    def picture_prep(self) -> PicturePrep | None:
        """numpy preprocessing equal to open_clip's for this model, or None (open_clip's
        own transform then). Asked for every picture: read once."""
        if self._prep is False:
            with self._lock:
                if self._prep is False:
                    self._prep = PicturePrep.from_cfg((self.info("image") or {}).get("preprocess"))
        return self._prep  # type: ignore[return-value]


def _load_tower(path: Path, threads: int | None, prepack: bool, info: dict[str, Any]) -> Tower:
    return Tower(session(path, threads, prepack=prepack), info)


def _once(make: Callable[[], Tower]) -> Callable[[], Tower]:
    """make, called at most once: the fp32 session the bf16 gate opens is the one kept
    when bf16 is refused."""
    made: list[Tower] = []

    def get() -> Tower:
        if not made:
            made.append(make())
        return made[0]

    return get


# Prompts on which towers are compared: short and long, punctuation, digits, non-Latin.
PROMPTS = (
    "a photo of a dog",
    "a red bicycle against a brick wall",
    "",
    "Two cats, 3 dogs & a parrot; sleeping on the sofa at 10 p.m.!",
    "東京の夜景 and the Eiffel tower at dawn, oil painting in the style of Monet",
    "a very long description of a busy market street " * 8,
)


def trim_if(tokens: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    from search.embedders.clip_tokenizer import trim_after_end

    return trim_after_end(tokens) if info.get("trim") else tokens
