"""Indexing throughput on camera-size JPEGs with ViT-B-32.

Prints images/s for
  (a) the model alone, forward on pre-made tensors at the best batch size (the ceiling),
  (b) a naive loop: full decode, open_clip preprocess, encode one image at a time,
  (c) Everlook's indexing pipeline end to end (scan, read + SHA-256, draft decode,
      preprocess in the pool, batched forward, catalog transaction, FAISS, index save),
and the ratios c/a and c/b. All in one run, on the same machine state. Also prints
the wall time of the `everlook index` command itself, process start and model load
included, for reference.

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
    import torch

    side = embedder.input_side
    best, best_bs = 0.0, 0
    for bs in (8, 16, 32, 64):
        x = [torch.randn(3, side, side) for _ in range(bs)]
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


def naive(embedder, files: list[Path]) -> float:
    embedder.embed_images([Image.open(files[0]).convert("RGB")])  # warm-up
    t = time.perf_counter()
    for f in files:
        img = Image.open(f)
        img.load()  # full decode, as a simple script does
        embedder.embed_images([img.convert("RGB")])
    return len(files) / (time.perf_counter() - t)


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

    import torch

    from everlook.settings import Settings
    from everlook.wiring import Parts

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as home:
        env = {"EVERLOOK_HOME": home, "EVERLOOK_MODEL_DIR": str(model_dir),
               "EVERLOOK_CLIP_MODEL": MODEL, "EVERLOOK_CLIP_PRETRAINED": TAG,
               "EVERLOOK_DEVICE": "cpu"}  # fmt: skip
        os.environ.update(env)
        parts = Parts(Settings())
        emb = parts.embedder
        print(f"model: {emb.model_id}, input {emb.input_side}px, dim {emb.dim}")

        print("(a) model only ...", flush=True)
        a, best_bs = model_only(emb, args.files)
        print("(b) naive loop ...", flush=True)
        b = naive(emb, files[: args.naive_files])

        print("(c) everlook pipeline ...", flush=True)
        bs = args.batch_size or best_bs
        os.environ["EVERLOOK_BATCH_SIZE"] = str(bs)
        parts = Parts(Settings())
        _ = parts.embedder.dim  # model loaded before timing, as in (a) and (b)
        pipeline = parts.pipeline()
        t = time.perf_counter()
        report = pipeline.run([str(args.data / "photos")])
        c = report.new / (time.perf_counter() - t)
        assert report.new == len(files) and not report.failed, report.as_dict()

    with tempfile.TemporaryDirectory() as home:
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "everlook", "index", str(args.data / "photos"), "--json"],
            env={**os.environ, **env, "EVERLOOK_HOME": home, "EVERLOOK_BATCH_SIZE": str(bs)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        wall = time.perf_counter() - t
        inner = json.loads(res.stdout)["seconds"]

    print()
    print(f"(a) model only, batch {best_bs}:        {a:7.2f} images/s")
    print(f"(b) naive loop, batch 1, full decode: {b:7.2f} images/s")
    print(f"(c) everlook pipeline, batch {bs}:     {c:7.2f} images/s")
    print(
        f"    `everlook index` command: {len(files) / wall:.2f} images/s over {wall:.1f}s wall "
        f"({inner:.1f}s inside the command, incl. model load; rest is process start)"
    )
    print(f"c/a = {c / a:.3f}   (bar >= 0.80)")
    print(f"c/b = {c / b:.3f}   (bar >= 2.5)")


if __name__ == "__main__":
    main()
