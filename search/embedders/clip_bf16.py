"""CLIP's image tower in bfloat16 on CPUs that multiply bf16 natively, through OpenVINO.

Why: on a CPU, fp32 matrix multiplication bounds the image tower (see the README's "At a
million items"). CPUs with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake) or AMX
(Intel Xeon 4th generation and later) multiply bfloat16 at twice the fp32 rate or more.
ONNX Runtime's CPU kernels have no bf16 matrix multiply on x86; OpenVINO's CPU plugin
has, and reads the very ONNX file clip_export.py wrote (same graph, same weights), without
torch. Measured here (AMD EPYC Zen 4, 2 cores, ViT-B-32-256, batch 16): fp32 16.3 img/s
(ONNX Runtime: 16.7), bf16 31-32 img/s. The fp32 export is converted once to OpenVINO's
own form with fp16-stored weights (half the file, mapped), whose compiled form OpenVINO
caches: a new process has the tower in ~0.1 s and peaks no higher than with ONNX Runtime.

Opt-in (Settings.cpu_bf16), like half precision anywhere: bf16 keeps 8 bits of mantissa,
so its vectors are close to fp32's, not equal. On the project's trained demo model the
lowest cosine to fp32 over test pictures is ~0.9996, below the 0.9999 an fp32 export must
meet, so fp32 stays the default on a CPU. The gate is half precision's (search.gpu, fp16
on a GPU): cosine >= 0.999 to the fp32 tower on probe pictures (photo-like drawings
through the model's own preprocessing, and noise), else fp32, logged. The verdict is
remembered beside the fp32 export (``image.bf16.json``), per export, OpenVINO version and
CPU feature, so a later process neither runs fp32 nor converts again. The model id stays
(the GPU's fp16 keeps it too): vectors within 0.999 rank alike.

Torch-free, like clip_onnx.py; a text query never loads it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from search.embedders.clip_cache import Artifact, exclusive, publish, temp_beside, write_atomic
from search.embedders.clip_onnx import Tower

log = logging.getLogger(__name__)

BF16_MIN_COSINE = 0.999  # half precision's bar (search.gpu.half_if_parity)
CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of native bf16 multiply
PROBES = 8


def native_bf16() -> str | None:
    """The CPU's native bf16 feature (Linux's /proc/cpuinfo), or None; read without
    importing any runtime."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return next((flag for flag in CPU_FLAGS if flag in flags), None)
    except OSError:
        pass
    return None


def openvino_version() -> str | None:
    """OpenVINO's version without importing it, or None when it is not installed."""
    spec = importlib.util.find_spec("openvino")
    if spec is None:
        return None
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return "unknown"


def available() -> bool:
    return native_bf16() is not None and openvino_version() is not None


class OvTower(Tower):
    """The image tower compiled by OpenVINO in bf16: float32 [n, 3, S, S] in, unit
    float32 [n, dim] out (normalised again in fp32: bf16 leaves norms a little off 1)."""

    def __init__(self, compiled: Any, info: dict[str, Any]) -> None:
        self.session = None
        self.compiled = compiled
        self.info = info
        self.input = "pixels"
        self._local = threading.local()  # an infer request is not thread-safe: one each

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, int(self.info.get("dim", 0))), dtype=np.float32)
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        out = req.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        v = np.asarray(next(iter(out.values())), dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


def ir_files(folder: Path) -> tuple[Path, Path]:
    """OpenVINO's own form of the image tower, beside its ONNX export: a graph file and
    its weights stored as fp16 (half the fp32 file; OpenVINO maps it, and the bf16 copies
    it packs replace the fp32 ones ONNX would keep: ~520 MB peak instead of ~830 MB for
    ViT-B-32-256)."""
    return folder / "image.bf16.xml", folder / "image.bf16.bin"


def build_ir(folder: Path) -> None:
    """Convert the fp32 ONNX export once (~0.4 s): weights to fp16 storage, the graph as
    is. Written under temporary names and renamed, weights first: a reader never sees a
    graph without its weights."""
    import openvino as ov

    xml, binary = ir_files(folder)
    tmp = temp_beside(xml).with_suffix(".xml")
    try:
        model = ov.Core().read_model(str(Artifact(folder, "image").path))
        ov.save_model(model, str(tmp), compress_to_fp16=True)
        publish(tmp.with_suffix(".bin"), binary)
        publish(tmp, xml)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)


def compile_bf16(folder: Path, threads: int | None) -> Any:
    """OpenVINO's CPU plugin, bf16 inference precision, over the IR. Its compiled blob is
    cached in the folder (a new process loads it in ~0.1 s, not ~0.8 s). One stream,
    ``threads`` threads: batches come one at a time, as to ONNX Runtime."""
    import os

    import openvino as ov

    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise RuntimeError("OpenVINO's CPU plugin offers no bf16 on this CPU")
    cache = folder / "openvino-cache"
    cache.mkdir(parents=True, exist_ok=True)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
        "CACHE_DIR": str(cache),
    }
    return core.compile_model(str(ir_files(folder)[0]), "CPU", config)


def probe_pictures(prep: Callable[[Any], np.ndarray] | None, side: int) -> np.ndarray:
    """What bf16 is compared with fp32 on: photo-like drawings through the model's own
    preprocessing (gradients, flat regions, edges), plus normal noise (every value range)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    rows = []
    for i in range(PROBES - 2):
        w, h = int(side * (1.2 + 0.15 * i)), side + 8 * i
        base = np.linspace(rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), w)
        img = Image.fromarray(np.broadcast_to(base, (h, w, 3)).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3 + i):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = (x0, y0, x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2)))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if i % 2 else draw.rectangle)(box, fill=fill)
        img = img.filter(ImageFilter.GaussianBlur(0.7))
        if prep is not None:
            rows.append(prep(img))
        else:  # no numpy preprocessing for this model: plain scaling, same range
            arr = np.asarray(img.resize((side, side)), dtype=np.float32) / 127.5 - 1.0
            rows.append(arr.transpose(2, 0, 1))
    rows += list(rng.standard_normal((2, 3, side, side), dtype=np.float32))
    return np.stack(rows).astype(np.float32)


def verdict_file(folder: Path) -> Path:
    return Artifact(folder, "image", "bf16").sidecar


def read_verdict(folder: Path, fp32: dict[str, Any], version: str, cpu: str) -> bool | None:
    """True (use bf16, its IR intact) / False (refused) from an earlier process, or None:
    not decided for this export, OpenVINO version and CPU feature (decide again)."""
    try:
        got = json.loads(verdict_file(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(got, dict):
        return None
    same = (got.get("from"), got.get("openvino"), got.get("cpu")) == (
        fp32.get("export_id"), version, cpu)  # fmt: skip
    if not same:
        return None
    if not got.get("use"):
        return False
    try:
        sizes = [f.stat().st_size for f in ir_files(folder)]
    except OSError:
        return None
    return True if sizes == got.get("sizes") else None


def decide(
    folder: Path,
    fp32: dict[str, Any],
    fp32_tower: Callable[[], Tower],
    prep: Callable[[Any], np.ndarray] | None,
    threads: int | None,
) -> OvTower | None:
    """The bf16 tower when this CPU and model pass the gate, else None (fp32 stays).
    ``fp32_tower`` opens the fp32 ONNX Runtime session: only when no verdict is cached.
    One process decides at a time (the export folder's lock); the others read its
    verdict."""
    cpu, version = native_bf16(), openvino_version()
    if cpu is None or version is None:
        return None
    known = read_verdict(folder, fp32, version, cpu)
    if known is None:
        with exclusive(folder):
            known = read_verdict(folder, fp32, version, cpu)
            if known is None:
                return _gate(folder, fp32, fp32_tower, prep, threads, version, cpu)
    if not known:
        return None
    try:
        return OvTower(compile_bf16(folder, threads), fp32)
    except Exception as exc:  # an OpenVINO that cannot load it after all: fp32 stays
        log.warning("OpenVINO cannot load the bf16 tower in %s (%s); fp32 keeps it", folder, exc)
        return None


def _gate(
    folder: Path,
    fp32: dict[str, Any],
    fp32_tower: Callable[[], Tower],
    prep: Callable[[Any], np.ndarray] | None,
    threads: int | None,
    version: str,
    cpu: str,
) -> OvTower | None:
    try:
        build_ir(folder)
        tower = OvTower(compile_bf16(folder, threads), fp32)
    except Exception as exc:  # an OpenVINO that cannot read or compile it: fp32 stays
        log.warning("OpenVINO cannot compile %s in bf16 (%s); fp32 keeps it", folder, exc)
        return None
    size = (fp32.get("preprocess") or {}).get("size", 224)
    side = int(size[0] if isinstance(size, list) else size)
    sample = probe_pictures(prep, side)
    ref, got = fp32_tower()(sample), tower(sample)
    cos = [float(c) for c in (ref * got).sum(axis=1)]  # both unit rows
    use = min(cos) >= BF16_MIN_COSINE
    record = {
        "from": fp32.get("export_id"), "model_id": fp32.get("model_id"), "openvino": version,
        "cpu": cpu, "use": use, "bar": BF16_MIN_COSINE, "min_cosine": min(cos),
        "cosines_vs_fp32": cos, "probes": len(cos),
        "sizes": [f.stat().st_size for f in ir_files(folder)],
    }  # fmt: skip
    write_atomic(verdict_file(folder), json.dumps(record, indent=2, sort_keys=True).encode())
    log.info("%s pictures in bf16 (OpenVINO, %s): %s, lowest cosine to fp32 %.6f (bar %s)",
             fp32.get("model_id"), cpu, "used" if use else "refused", min(cos),
             BF16_MIN_COSINE)  # fmt: skip
    return tower if use else None
