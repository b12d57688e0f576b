"""How far int8 CLIP towers move your own library's search results from fp32 ones.

Dynamic int8 runs the CLIP towers ~2x faster again than fp32 ONNX on a CPU, but its
vectors are not fp32's: real CLIP weights have outlier activations (a few channels far
larger than the rest) that per-batch int8 scaling handles worse than random weights do.
Before switching (EVERLOOK_CLIP_QUANTIZE=int8 re-embeds the whole library), measure it
on your pictures: this reads your settings (EVERLOOK_HOME, EVERLOOK_MODEL_DIR, .env),
samples N indexed pictures, embeds them and a set of text queries with the fp32 and the
int8 towers of the library's model, and prints

- the cosine between each picture's fp32 and int8 vectors (mean, worst),
- the overlap of the top-10 pictures each text query finds among the sample, fp32 vs int8,
- the overlap of each sampled picture's 10 nearest neighbours, fp32 vs int8.

An overlap near 1.0 means int8 would show the same results; as a rule of thumb, stay on
fp32 below ~0.9. The sample is a stand-in for the library (neighbours among N pictures,
not among all of them). Usage:

    python bench/int8_agreement.py [--sample 300] [--query "a dog" --query ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUERIES = [
    "a dog", "a cat", "a child playing", "a group of people at a party", "a wedding",
    "a beach at sunset", "snow on the mountains", "a city street at night", "food on a plate",
    "a birthday cake", "a car", "a bicycle", "a flower in close-up", "a forest path",
    "a portrait of an old man", "a baby sleeping", "a document or a receipt", "a screenshot",
    "a painting", "a black and white photo", "the sea", "a bird", "a building", "a selfie",
]  # fmt: skip


def top_k(queries: np.ndarray, pool: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    scores = queries @ pool.T
    if skip_self:
        np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1)[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def sample_pictures(parts: Any, n: int, seed: int) -> tuple[list[Any], list[str]]:
    from indexer.media import Limits, MediaError, decode_image

    ids = parts.catalog.item_ids_of_kind("image")
    random.Random(seed).shuffle(ids)
    images, names = [], []
    limits = Limits(parts.settings.max_pixels, parts.settings.max_file_bytes)
    for paths in parts.catalog.paths_for(ids[: n * 2]).values():
        if len(images) >= n:
            break
        for path in paths:
            try:
                data = Path(path).read_bytes()
                images.append(decode_image(data, limits, draft_side=448).image)
                names.append(path)
                break
            except (OSError, MediaError):
                continue  # moved, unreadable: another path, or another picture
    return images, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=300, help="pictures to sample")
    ap.add_argument("--query", action="append", default=[], help="a text query (repeatable)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    from everlook.settings import Settings
    from everlook.wiring import Parts
    from search.embedders.clip import OpenClipEmbedder

    s = Settings()
    parts = Parts(s)
    active = parts.catalog.spaces.active("clip")
    model = dict(active.args) if active is not None else parts.embedder_args("clip")
    model.pop("quantize", None)
    kw = {"model_dir": s.model_dir, "device": "cpu", "backend": "onnx", "cache_dir": s.models_cache}
    fp32 = OpenClipEmbedder(**model, **kw)
    int8 = OpenClipEmbedder(**model, quantize="int8", **kw)

    t = time.perf_counter()
    images, _ = sample_pictures(parts, args.sample, args.seed)
    if len(images) < args.k + 1:
        sys.exit(f"only {len(images)} readable pictures in the catalog: index more first")
    queries = args.query or QUERIES
    batches = [images[i : i + 32] for i in range(0, len(images), 32)]
    v32 = np.concatenate([fp32.embed_images(b) for b in batches])
    v8 = np.concatenate([int8.embed_images(b) for b in batches])
    t32, t8 = fp32.embed_texts(queries), int8.embed_texts(queries)
    pic_cos = (v32 * v8).sum(axis=1)
    text_cos = (t32 * t8).sum(axis=1)
    k = min(args.k, len(images) - 1)
    out = {
        "model": fp32.model_id,
        "pictures": len(images),
        "queries": len(queries),
        "picture_cosine_mean": float(pic_cos.mean()),
        "picture_cosine_min": float(pic_cos.min()),
        "text_cosine_mean": float(text_cos.mean()),
        "text_cosine_min": float(text_cos.min()),
        f"text_top{k}_overlap": overlap(top_k(t32, v32, k, False), top_k(t8, v8, k, False)),
        f"neighbour_top{k}_overlap": overlap(top_k(v32, v32, k, True), top_k(v8, v8, k, True)),
        "seconds": round(time.perf_counter() - t, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['model']}: fp32 vs int8 on {len(images)} of your pictures, "
          f"{len(queries)} text queries ({out['seconds']} s)")  # fmt: skip
    print(f"  picture vectors: cosine mean {out['picture_cosine_mean']:.4f}, "
          f"worst {out['picture_cosine_min']:.4f}")  # fmt: skip
    print(f"  text vectors:    cosine mean {out['text_cosine_mean']:.4f}, "
          f"worst {out['text_cosine_min']:.4f}")  # fmt: skip
    print(f"  text queries, top-{k} pictures in common:     {out[f'text_top{k}_overlap']:.3f}")
    print(f"  picture neighbours, top-{k} in common:        {out[f'neighbour_top{k}_overlap']:.3f}")
    print("  (1.000: int8 shows the same results; below ~0.9, stay on fp32)")


if __name__ == "__main__":
    main()
