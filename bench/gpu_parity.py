"""What the GPU paths agree on and what they gain, against the CPU measured in this run.

Prints, each with its CPU baseline from the same run:
  1. CLIP towers: fp16 vs fp32 cosine on probe pictures and prompts (the gate of
     search.gpu.half_if_parity, bar 0.999), image-tower img/s in fp32 and fp16 on the
     GPU and in fp32 on the CPU, and one text query's ms;
  2. decoding: nvJPEG + GPU preprocessing (indexer.gpu_decode) against open_clip's PIL
     transform on camera-size JPEGs: max and mean pixel difference, embedding cosine, and
     img/s against the CPU pipeline's own preparation (draft decode + PIL transform in a
     pool of one thread per core) and a full PIL decode;
  3. FAISS: GPU clone (fp32 and fp16 storage) against exact CPU search over N vectors:
     top-10 agreement, ms per query (one query at a time, as the API asks), clone time.
Without CUDA or GPU FAISS, each GPU line says why it was skipped and the CPU lines
still print (so the script is checked on any machine). ViT-B-32 gets random weights
(same cost as real ones) through the offline weights path.

    python bench/gpu_parity.py [--vectors 1000000] [--photos 32] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.index_throughput import make_data, save_random_weights  # noqa: E402

SUMMARY: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    SUMMARY.append(line)


def rate(fn: Callable[[], Any], items: int, rounds: int = 3, sync: Any = None) -> float:
    """Items per second, best of rounds after one warm-up (shared machines are noisy)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return items / best


def load_embedder(model: str, data: Path, device: str) -> Any:
    from search.embedders.clip import OpenClipEmbedder

    if model == "everlook-demo":
        return OpenClipEmbedder("everlook-demo", "v1", device=device)
    save_random_weights(data / "models")
    return OpenClipEmbedder(model, "bench-random", model_dir=data / "models", device=device)


def towers(args: argparse.Namespace, cuda: bool) -> Any:
    import torch

    from search.gpu import half_if_parity, probe_inputs

    cpu = load_embedder(args.model, args.data, "cpu")
    side = cpu.input_side
    tokenizer = cpu.load()[2]
    images, tokens = probe_inputs(cpu.transform, tokenizer, n=8)
    print(f"model {cpu.model_id}, input {side}px")
    x_cpu = torch.randn(16, 3, side, side)
    with torch.inference_mode():
        cpu_rate = rate(lambda: cpu.model.encode_image(x_cpu), 16, rounds=2)
        one = tokenizer(["a red bicycle against a brick wall"])
        cpu_text = 1000 / rate(lambda: cpu.model.encode_text(one), 1, rounds=5)
    say(f"towers  CPU fp32 image tower: {cpu_rate:8.1f} img/s (batch 16); text {cpu_text:.1f} ms")
    if not cuda:
        say("towers  GPU: skipped (no CUDA)")
        return cpu
    gpu = load_embedder(args.model, args.data, "cuda")
    kept, cosine = half_if_parity(gpu.model, images, tokens)
    fp16 = kept is not gpu.model
    verdict = "kept" if fp16 else "refused"
    say(f"towers  fp16 vs fp32 min cosine {cosine:.6f} (bar 0.999): fp16 {verdict}")
    x = torch.randn(args.batch, 3, side, side, device="cuda")
    one_gpu = one.cuda()
    sync = torch.cuda.synchronize
    with torch.inference_mode():
        r32 = rate(lambda: gpu.model.encode_image(x), args.batch, rounds=5, sync=sync)
        t32 = 1000 / rate(lambda: gpu.model.encode_text(one_gpu), 1, rounds=20, sync=sync)
        say(
            f"towers  GPU fp32 image tower: {r32:8.1f} img/s (batch {args.batch}) = "
            f"{r32 / cpu_rate:.1f}x CPU; text {t32:.2f} ms = {cpu_text / t32:.1f}x CPU"
        )
        if fp16:
            xh = x.half()
            r16 = rate(lambda: kept.encode_image(xh), args.batch, rounds=5, sync=sync)
            t16 = 1000 / rate(lambda: kept.encode_text(one_gpu), 1, rounds=20, sync=sync)
            say(
                f"towers  GPU fp16 image tower: {r16:8.1f} img/s = {r16 / r32:.2f}x GPU fp32, "
                f"{r16 / cpu_rate:.1f}x CPU; text {t16:.2f} ms"
            )
    return cpu


def decoding(args: argparse.Namespace, cpu: Any, cuda: bool) -> None:
    import torch

    from indexer.gpu_decode import decode_preprocess_batch, eval_transform
    from indexer.media import Limits, decode_image

    files = make_data(args.data / "photos", args.photos)
    datas = [f.read_bytes() for f in files]
    p = eval_transform(cpu.transform)
    assert p is not None, "this model's transform is not open_clip's resize + centre crop"
    limits, workers = Limits(), os.cpu_count() or 2
    draft = 2 * p.side

    def cpu_prepare(draft_side: int | None) -> Callable[[], Any]:
        def one(d: bytes) -> Any:
            return cpu.transform(decode_image(d, limits, draft_side).image)

        def run() -> Any:
            with ThreadPoolExecutor(workers) as pool:
                return torch.stack(list(pool.map(one, datas)))

        return run

    ref = cpu_prepare(None)()
    drafted = cpu_prepare(draft)()
    r_full = rate(cpu_prepare(None), len(datas), rounds=1)
    r_draft = rate(cpu_prepare(draft), len(datas), rounds=1)
    std = torch.tensor(p.std).view(1, 3, 1, 1)

    def gap(got: Any) -> str:
        diff = (got.float().cpu() - ref).abs() * std * 255
        va = cpu.embed_preprocessed(list(got.float().cpu()))
        vb = cpu.embed_preprocessed(list(ref))
        cos = float((va * vb).sum(axis=1).min())
        return (
            f"max {float(diff.max()):5.1f} mean {float(diff.mean()):.3f} levels, cosine {cos:.6f}"
        )

    say(f"decode  {len(datas)} JPEGs 4000x3000, {workers} CPU threads")
    say(f"decode  CPU full decode + PIL transform: {r_full:7.1f} img/s (the reference)")
    say(
        f"decode  CPU pipeline (draft {draft}px + PIL): {r_draft:7.1f} img/s; vs ref {gap(drafted)}"
    )
    on_cpu = decode_preprocess_batch(datas, p.side, p.mean, p.std, device="cpu")
    say(f"decode  libjpeg + tensor preprocess (CPU) vs reference: {gap(on_cpu.pixels)}")
    if not cuda:
        say("decode  nvJPEG: skipped (no CUDA)")
        return
    sync = torch.cuda.synchronize
    batches = [datas[i : i + args.batch] for i in range(0, len(datas), args.batch)]

    def gpu_run() -> Any:
        return [decode_preprocess_batch(b, p.side, p.mean, p.std, device="cuda") for b in batches]

    got = gpu_run()
    errors = [e for g in got for e in g.errors if e]
    r_gpu = rate(gpu_run, len(datas), rounds=3, sync=sync)
    pixels = torch.cat([g.pixels for g in got])
    say(
        f"decode  nvJPEG + GPU preprocess: {r_gpu:7.1f} img/s = {r_gpu / r_draft:.1f}x CPU "
        f"pipeline; vs ref {gap(pixels)}; {len(errors)} errors {errors[:2]}"
    )


def search(args: argparse.Namespace) -> None:
    import faiss

    from search.gpu import index_to_gpu, top_k_agreement

    rng = np.random.default_rng(0)
    n, d = args.vectors, 512
    t = time.perf_counter()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        v = rng.standard_normal((m, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index.add_with_ids(v, np.arange(start, start + m, dtype=np.int64))
    queries = rng.standard_normal((args.queries, d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"faiss: {n} x {d} vectors ready in {time.perf_counter() - t:.0f}s")

    def per_query(ix: Any) -> tuple[float, list[list[int]]]:
        ix.search(queries[:1], 10)  # warm-up
        times, labels = [], []
        for q in queries:
            t = time.perf_counter()
            _, lab = ix.search(q[None, :], 10)
            times.append(time.perf_counter() - t)
            labels.append(lab[0].tolist())
        return statistics.median(times) * 1000, labels

    cpu_ms, truth = per_query(index)
    threads = faiss.omp_get_max_threads()
    say(f"faiss   CPU exact, {n} vectors: {cpu_ms:7.2f} ms/query ({threads} threads)")
    for fp16 in (False, True):
        t = time.perf_counter()
        gpu, reason = index_to_gpu(index, fp16_storage=fp16)
        clone_s = time.perf_counter() - t
        if gpu is index:
            say(f"faiss   GPU: skipped ({reason})")
            return
        ms, labels = per_query(gpu)
        agree = top_k_agreement(truth, labels)
        store = "fp16" if fp16 else "fp32"
        say(
            f"faiss   GPU {store}: {ms:7.2f} ms/query = {cpu_ms / ms:.1f}x CPU; "
            f"top-10 agreement {agree:.4f}; clone {clone_s:.1f}s"
        )
        del gpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--photos", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="ViT-B-32", help="ViT-B-32 (random) or everlook-demo")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    ap.add_argument("--skip", default="", help="comma list of: towers, decode, faiss")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    from search.gpu import faiss_gpu_reason

    cuda = torch.cuda.is_available() and os.environ.get("EVERLOOK_DEVICE", "auto") != "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"torch {torch.__version__}, CUDA device: {name}, {os.cpu_count()} CPU cores")
    print(f"FAISS GPU: {faiss_gpu_reason() or 'available'}")
    cpu = None
    if "towers" not in skip:
        cpu = towers(args, cuda)
    if "decode" not in skip:
        decoding(args, cpu or load_embedder(args.model, args.data, "cpu"), cuda)
    if "faiss" not in skip:
        search(args)
    print("\nsummary")
    for line in SUMMARY:
        print("  " + line)


if __name__ == "__main__":
    main()
