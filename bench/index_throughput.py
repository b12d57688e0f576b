"""Indexing throughput on camera-size JPEGs with ViT-B-32.

Prints images/s for
  (a) the model alone, forward on pre-made inputs at the best batch size,
  (p) the preparation alone: read + SHA-256, draft decode, preprocess, over the same
      thread pool as the pipeline, no model,
  (b) a naive loop: full decode, preprocess, encode one image at a time,
  (c) Everlook's indexing pipeline end to end (scan, read + SHA-256, draft decode,
      preprocess in the pool, batched forward, catalog transaction, FAISS, index save),
and c/ceiling, where the ceiling is 1 / (1/a + 1/p): model and decoding share the same
cores, so the pipeline cannot beat the sum of their costs per image. All in one run, on
the same machine state, with the backend the settings choose (ONNX Runtime on a CPU;
EVERLOOK_CLIP_BACKEND=torch for PyTorch, EVERLOOK_CPU_BF16=true for bfloat16 (OpenVINO)
on a CPU that multiplies it natively; there, the other precision's (a) is measured last).
Also prints the rate of the `everlook index` command itself, process start and model load
included (its ONNX export shared), and the fp32 bound: the image tower's GFLOP per picture
against this machine's fp32 matrix-multiply rate.

ViT-B-32 gets random weights (same cost as real ones), saved where an offline user puts
real weights and loaded through the same path. Usage:
    python bench/index_throughput.py [--files 64] [--data DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL, TAG = "ViT-B-32", "bench-random"


def camera_jpeg(seed: int, size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A 12 MP photo-like JPEG: smooth scene, hard-edged objects, sensor noise.

    Flat synthetic images compress to a few hundred kB and decode unrealistically
    fast; real 12 MP photos are 3-6 MB because of texture and noise, so we add both.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.uniform(30, 225, (6, 8, 3)).astype(np.float32)
    scene = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(12):  # objects with edges
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(80, 700)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        scene[mask] = rng.uniform(0, 255, 3)
    texture = np.asarray(
        Image.fromarray(rng.integers(0, 255, (h // 4, w // 4), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR
        ),
        dtype=np.float32,
    )
    scene += (texture[..., None] - 128) * 0.25 + rng.normal(0, 5, (h, w, 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def make_data(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        p = folder / f"IMG_{i:04d}.jpg"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(camera_jpeg(i))
            tmp.rename(p)
        files.append(p)
    return files


def save_random_weights(model_dir: Path) -> None:
    import open_clip
    import torch

    dest = model_dir / "open_clip" / MODEL / TAG / "open_clip_model.pt"
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(MODEL).state_dict(), dest)


def model_only(embedder, n_images: int) -> tuple[float, int]:
    side = embedder.input_side
    rng = np.random.default_rng(0)
    best, best_bs = 0.0, 0
    for bs in (8, 16, 32, 64):
        x = [rng.standard_normal((3, side, side), dtype=np.float32) for _ in range(bs)]
        embedder.embed_preprocessed(x)  # warm-up
        reps = max(1, n_images // bs)
        t = time.perf_counter()
        for _ in range(reps):
            embedder.embed_preprocessed(x)
        rate = reps * bs / (time.perf_counter() - t)
        print(f"    model-only batch {bs:3d}: {rate:6.2f} img/s", flush=True)
        if rate > best:
            best, best_bs = rate, bs
    return best, best_bs


def prepare_only(pipeline, files: list[Path], workers: int, draft_side: int | None) -> float:
    """(p): what the pipeline's pool does for each file before the model sees it."""
    from concurrent.futures import ThreadPoolExecutor

    from indexer.scan import Found

    found = [Found(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda x: pipeline._prepare(x, draft_side), found[:4]))  # warm-up
        pipeline._claimed.clear()  # a run claims each content once: forget the warm-up's
        t = time.perf_counter()
        got = list(pool.map(lambda x: pipeline._prepare(x, draft_side), found))
        rate = len(found) / (time.perf_counter() - t)
    assert all(g.error is None and g.tensor is not None for g in got)
    return rate


def naive(embedder, files: list[Path]) -> float:
    embedder.embed_images([Image.open(files[0]).convert("RGB")])  # warm-up
    t = time.perf_counter()
    for f in files:
        img = Image.open(f)
        img.load()  # full decode, as a simple script does
        embedder.embed_images([img.convert("RGB")])
    return len(files) / (time.perf_counter() - t)


def _precision(emb) -> str:
    """What the embedder's image tower runs in, from its weights (ONNX Runtime: fp32;
    OpenVINO's bf16 tower: bf16)."""
    if not getattr(emb, "_images_by_torch", lambda: False)() and getattr(emb, "_onnx_state", None):
        from search.embedders.clip_bf16 import OvTower

        return "bf16" if isinstance(emb._onnx_state._towers.get("image"), OvTower) else "fp32"
    from search.gpu import input_dtype

    return str(input_dtype(emb.model)).replace("torch.", "").replace("bfloat16", "bf16")


def fp32_ceiling() -> tuple[float, float]:
    """(GFLOP per picture of the image tower, fp32 matrix-multiply GFLOP/s on every core):
    their ratio bounds what any fp32 runtime can reach here (the tower is ~all matmuls)."""
    import statistics

    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = open_clip.create_model(MODEL, pretrained=None).eval()
    # Without the fused attention fast path, whose kernel the counter does not see (it
    # would miss the attention projections, a third of the cost).
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.encode_image(torch.zeros(1, 3, 224, 224))
    torch.backends.mha.set_fastpath_enabled(before)
    per_picture = fc.get_total_flops() / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return per_picture, 2 * 2048**3 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--naive-files", type=int, default=24)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    ap.add_argument("--batch-size", type=int, default=0, help="pipeline batch; 0 = best of (a)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    files = make_data(args.data / "photos", args.files)
    mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
    print(
        f"data: {len(files)} JPEGs 4000x3000, {mb:.1f} MB each on average "
        f"(ready in {time.perf_counter() - t0:.0f}s)"
    )
    model_dir = args.data / "models"
    save_random_weights(model_dir)

    from everlook.settings import Settings
    from everlook.wiring import Parts

    onnx = args.data / "onnx-cache"  # one export for every home of this run
    onnx.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "models").mkdir()
        (Path(home) / "models" / "onnx").symlink_to(onnx)
        env = {"EVERLOOK_HOME": home, "EVERLOOK_MODEL_DIR": str(model_dir),
               "EVERLOOK_CLIP_MODEL": MODEL, "EVERLOOK_CLIP_PRETRAINED": TAG,
               "EVERLOOK_DEVICE": os.environ.get("EVERLOOK_DEVICE", "cpu"),
               "EVERLOOK_STAGES": "[]"}  # fmt: skip
        os.environ.update(env)
        parts = Parts(Settings())
        emb = parts.embedder
        emb.embed_images([Image.new("RGB", (64, 48))])  # exports at first use, untimed
        print(f"model: {emb.model_id}, input {emb.input_side}px, dim {emb.dim}, "
              f"backend {getattr(emb, 'backend', 'torch')}, {os.cpu_count()} cores")  # fmt: skip

        bf16 = _precision(emb) == "bf16"
        on_onnx = getattr(emb, "_onnx_state", None) and not emb._images_by_torch()
        runs = ("OpenVINO" if bf16 else "ONNX Runtime") if on_onnx else "PyTorch"
        print(f"pictures run on: {runs} {_precision(emb)}")
        print("(a) model only ...", flush=True)
        a, best_bs = model_only(emb, args.files)
        print("(p) preparation only ...", flush=True)
        pipe = parts.pipeline()
        workers = parts.settings.decode_workers or os.cpu_count() or 2
        p = prepare_only(pipe, files, workers, 2 * emb.input_side)
        print("(b) naive loop ...", flush=True)
        b = naive(emb, files[: args.naive_files])

        print("(c) everlook pipeline ...", flush=True)
        bs = args.batch_size or best_bs
        os.environ["EVERLOOK_BATCH_SIZE"] = str(bs)
        parts = Parts(Settings())
        # The model loaded before timing, as in (a) and (b): `dim` alone reads the config,
        # and an ONNX Runtime or OpenVINO session would open inside the timed run.
        parts.embedder.warm_images()
        pipeline = parts.pipeline()
        t = time.perf_counter()
        report = pipeline.run([str(args.data / "photos")])
        c = report.new / (time.perf_counter() - t)
        assert report.new == len(files) and not report.failed, report.as_dict()

    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "models").mkdir()
        (Path(home) / "models" / "onnx").symlink_to(onnx)
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "everlook", "index", str(args.data / "photos"), "--json"],
            env={**os.environ, **env, "EVERLOOK_HOME": home, "EVERLOOK_BATCH_SIZE": str(bs)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        wall = time.perf_counter() - t
        inner = json.loads(res.stdout)["seconds"]

    other = None  # the other precision's (a), where the CPU multiplies bf16: measured last,
    # so that a second runtime's threads never share the machine with (b), (c) or the command
    from search.embedders.clip_bf16 import native_bf16

    if native_bf16() and os.environ.get("EVERLOOK_CLIP_BACKEND", "auto") == "auto":
        with tempfile.TemporaryDirectory() as home:
            (Path(home) / "models").mkdir()
            (Path(home) / "models" / "onnx").symlink_to(onnx)
            flag = "false" if bf16 else "true"
            print(f"(a) model only, EVERLOOK_CPU_BF16={flag} ...", flush=True)
            os.environ.update(EVERLOOK_HOME=home, EVERLOOK_CPU_BF16=flag)
            e2 = Parts(Settings()).embedder
            e2.embed_images([Image.new("RGB", (64, 48))])
            other = (_precision(e2), model_only(e2, args.files)[0])
            del e2

    per_picture, peak = fp32_ceiling()
    ceiling = 1 / (1 / a + 1 / p)
    print()
    a_max = peak / per_picture
    print(
        f"fp32 bound: the image tower costs {per_picture:.2f} GFLOP a picture; fp32 matmul "
        f"peaks at {peak:.0f} GFLOP/s here, so no fp32 runtime passes {a_max:.1f} img/s, "
        f"and the fp32 pipeline none of 1/(1/{a_max:.1f} + 1/p) = "
        f"{1 / (1 / a_max + 1 / p):.1f} img/s"
    )
    print(f"(a) model only, batch {best_bs}:        {a:7.2f} images/s")
    if other is not None:
        mine = "bf16" if bf16 else "fp32"
        ratio = f"{other[0]}/{mine} {other[1] / a:.2f}x"
        print(f"    {other[0]} model only (same run):      {other[1]:7.2f} images/s  ({ratio})")
    print(f"(p) preparation only, {workers} threads:  {p:7.2f} images/s")
    print(f"    2-core ceiling 1/(1/a + 1/p):    {ceiling:7.2f} images/s")
    print(f"(b) naive loop, batch 1, full decode: {b:7.2f} images/s")
    print(f"(c) everlook pipeline, batch {bs}:     {c:7.2f} images/s")
    print(
        f"    `everlook index` command: {len(files) / wall:.2f} images/s over {wall:.1f}s wall "
        f"({inner:.1f}s inside the command, incl. model load; rest is process start)"
    )
    print(f"c/ceiling = {c / ceiling:.3f}   (bar >= 0.90)")
    print(f"c/b = {c / b:.3f}   (bar >= 2.5)")
    print(f"everlook index = {len(files) / wall:.2f} images/s   (bar >= 16, rclip's rate here)")


if __name__ == "__main__":
    main()
