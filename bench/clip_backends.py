"""CLIP on PyTorch vs ONNX Runtime (fp32, dynamic int8) on this machine's CPU.

ViT-B-32 with random weights (same cost as real ones), batch 16, 2 threads, medians of
repeated runs, all in one run and printed as ratios against PyTorch measured here:

- building the model: open_clip's create_model_and_transforms (random init, then the
  checkpoint copied in) vs Everlook's meta-device build with the checkpoint assigned;
- exporting the towers (dynamo text, legacy image) and quantising them to int8;
- image tower: PyTorch eager vs ORT fp32 vs ORT int8, img/s and cosine against PyTorch;
- one text query: PyTorch padded to 77 tokens, PyTorch cut after end-of-text, ORT fp32,
  ORT int8 (ms), and the torch-free tokenizer;
- a fresh process answering one text query through OpenClipEmbedder: PyTorch with the
  whole model vs the ONNX text tower alone (weights prepacked when the session opens, or
  not): wall time and peak RSS (VmHWM of the child: ru_maxrss would report the parent's
  size, which a forked child inherits; ru_maxrss where /proc is missing).

Usage: python bench/clip_backends.py [--data DIR] [--reps 7] [--cold-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL, TAG = "ViT-B-32", "bench-random"
QUERY = "a photo of a dog running on a beach at sunset"


def median_time(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from pathlib import Path
from search.embedders.clip import OpenClipEmbedder
mode, model_dir, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
kw = {{"backend": "torch"}} if mode == "torch" else {{
    "backend": "onnx", "cache_dir": cache, "prepack_text": mode == "prepack"}}
e = OpenClipEmbedder({model!r}, {tag!r}, model_dir=model_dir, device="cpu", **kw)
v = e.embed_texts([{query!r}])
heavy = [m for m in ("torch", "open_clip") if m in sys.modules]
try:
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    peak = int(status.split()[0]) / 1024
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"wall": time.perf_counter() - t0, "rss_mb": peak, "heavy": heavy,
                  "v": v[0].tolist()}}))
"""


def cold(mode: str, model_dir: Path, cache: Path, runs: int) -> dict[str, Any]:
    code = CHILD.format(model=MODEL, tag=TAG, query=QUERY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env["PYTHONPATH"] = str(REPO)
    outs = []
    for _ in range(runs):
        res = subprocess.run(
            [sys.executable, "-c", code, mode, str(model_dir), str(cache)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {
        "wall": statistics.median(o["wall"] for o in outs),
        "rss_mb": statistics.median(o["rss_mb"] for o in outs),
        "heavy": outs[0]["heavy"],
        "v": np.array([outs[0]["v"]], np.float32),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cold-runs", type=int, default=3)
    args = ap.parse_args()

    import open_clip
    import torch

    from bench._synthetic import save_checkpoint
    from search.embedders import clip_onnx
    from search.embedders.clip import OpenClipEmbedder, encode_text_trimmed
    from search.embedders.clip_cache import Artifact, runtime_version
    from search.embedders.clip_tokenizer import tokenizer, trim_after_end
    from search.embedders.clip_weights import build_without_init

    torch.set_num_threads(args.threads)
    model_dir = args.data / "models"
    ckpt = save_checkpoint(MODEL, model_dir / "open_clip" / MODEL / TAG / "open_clip_model.pt")
    print(f"ViT-B-32 random weights at {ckpt}; batch {args.batch}, {args.threads} threads, "
          f"medians of {args.reps}; torch {torch.__version__}, onnxruntime "
          f"{runtime_version()}", flush=True)  # fmt: skip

    # ---- building the model --------------------------------------------------------------
    def usual() -> Any:
        return open_clip.create_model_and_transforms(MODEL, pretrained=str(ckpt))[0]

    def meta() -> Any:
        return build_without_init(MODEL, str(ckpt), {}, "cpu")[0]

    t_usual = median_time(usual, max(1, args.reps // 2))
    t_meta = median_time(meta, max(1, args.reps // 2))
    print(f"build + load: usual {t_usual:.2f} s, meta device {t_meta:.2f} s "
          f"({t_usual / t_meta:.2f}x faster)", flush=True)  # fmt: skip

    # ---- export ------------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "models"
        kw = {"model_dir": model_dir, "device": "cpu", "cache_dir": cache, "threads": args.threads}
        fp32 = OpenClipEmbedder(MODEL, TAG, backend="onnx", **kw)
        model = fp32.model  # loaded before timing the export
        onnx = fp32._onnx()
        assert onnx is not None
        t = time.perf_counter()
        fp32.text_ready() or fp32.embed_texts(["warm"])
        t_text = time.perf_counter() - t
        t = time.perf_counter()
        onnx.tower("image")
        t_image = time.perf_counter() - t
        int8 = OpenClipEmbedder(MODEL, TAG, backend="onnx", quantize="int8", **kw)
        t = time.perf_counter()
        q = int8._onnx()
        assert q is not None
        q.tower("text"), q.tower("image")
        t_quant = time.perf_counter() - t
        text_info = Artifact(onnx.folder, "text").read() or {}
        image_info = Artifact(onnx.folder, "image").read() or {}
        print(f"export: text {t_text:.1f} s ({text_info.get('exporter')}, cosine "
              f"{text_info.get('min_cosine'):.6f}), image {t_image:.1f} s "
              f"({image_info.get('exporter')}, cosine {image_info.get('min_cosine'):.6f}); "
              f"int8 of both {t_quant:.1f} s", flush=True)  # fmt: skip

        # ---- image tower -----------------------------------------------------------------
        side = fp32.input_side
        x = np.random.default_rng(0).standard_normal((args.batch, 3, side, side), np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            ref = model.encode_image(xt, normalize=True).numpy()

        def torch_images() -> Any:
            with torch.inference_mode():
                return model.encode_image(xt, normalize=True)

        img_fp32, img_int8 = onnx.tower("image"), q.tower("image")
        assert img_fp32 is not None and img_int8 is not None
        rows = [
            ("PyTorch eager", median_time(torch_images, args.reps), 1.0),
            ("ORT fp32", median_time(lambda: img_fp32(x), args.reps), cos(img_fp32(x), ref)),
            ("ORT int8", median_time(lambda: img_int8(x), args.reps), cos(img_int8(x), ref)),
        ]
        base = args.batch / rows[0][1]
        print("image tower (img/s, x PyTorch, min cosine vs PyTorch):")
        for name, secs, c in rows:
            rate = args.batch / secs
            print(f"  {name:14s} {rate:7.1f} img/s  {rate / base:5.2f}x  cosine {c:.6f}")

        # ---- one text query ------------------------------------------------------------------
        tok = tokenizer(77)
        ids = tok([QUERY])
        cut = trim_after_end(ids)
        tt = torch.from_numpy(ids)
        with torch.inference_mode():
            tref = model.encode_text(tt, normalize=True).numpy()

        def torch_padded() -> Any:
            with torch.inference_mode():
                return model.encode_text(tt, normalize=True)

        def torch_trimmed() -> Any:
            with torch.inference_mode():
                return encode_text_trimmed(model, tt)

        path = Artifact(onnx.folder, "text").path
        bare = clip_onnx.Tower(clip_onnx.session(path, args.threads, prepack=False), {})
        packed, packed8 = onnx.tower("text"), q.tower("text")  # as Everlook opens them
        assert packed is not None and packed8 is not None
        reps = args.reps * 5
        text_rows = [
            ("PyTorch padded", median_time(torch_padded, reps), 1.0),
            ("PyTorch cut", median_time(torch_trimmed, reps), 1.0),
            ("ORT fp32", median_time(lambda: packed(cut), reps), cos(packed(cut), tref)),
            ("ORT fp32 unpacked", median_time(lambda: bare(cut), reps), cos(bare(cut), tref)),
            ("ORT int8", median_time(lambda: packed8(cut), reps), cos(packed8(cut), tref)),
        ]
        opens = [median_time(lambda p=p: clip_onnx.session(path, args.threads, prepack=p), 3)
                 for p in (True, False)]  # fmt: skip
        t_tok = median_time(lambda: tok([QUERY]), reps)
        base_ms = text_rows[1][1] * 1000
        print(f"one text query ({cut.shape[1]} of 77 tokens; ms, x faster than PyTorch cut):")
        for name, secs, c in text_rows:
            ms = secs * 1000
            print(f"  {name:16s} {ms:7.2f} ms  {base_ms / ms:5.2f}x  cosine {c:.6f}")
        print(f"  tokenizer (ours, no torch) {t_tok * 1000:.3f} ms; opening the fp32 text "
              f"session {opens[0]:.2f} s prepacked, {opens[1]:.2f} s not", flush=True)  # fmt: skip

        # ---- a fresh process, one query ----------------------------------------------------
        print(f"a fresh process answering one text query (median of {args.cold_runs}):")
        cold_rows = [(m, cold(m, model_dir, cache, args.cold_runs)) for m in
                     ("torch", "prepack", "unpacked")]  # fmt: skip
        t0, r0 = cold_rows[0][1]["wall"], cold_rows[0][1]["rss_mb"]
        for name, got in cold_rows:
            label = {"torch": "PyTorch, whole model", "prepack": "ONNX text tower",
                     "unpacked": "ONNX text tower, unpacked"}[name]  # fmt: skip
            print(f"  {label:26s} {got['wall']:6.2f} s ({t0 / got['wall']:5.2f}x)  peak RSS "
                  f"{got['rss_mb']:6.0f} MB ({got['rss_mb'] / r0:.2f} of PyTorch's)  "
                  f"imports {got['heavy'] or 'neither torch nor open_clip'}  cosine "
                  f"{cos(got['v'], tref):.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
