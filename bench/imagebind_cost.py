"""What ImageBind-huge costs per picture, per sound and per text, against CLIP ViT-B-32.

Both models at real size with random weights (the cost of trained ones; nothing
downloaded). ImageBind runs through Everlook's ImageBindEmbedder, preprocessing included;
only loading is replaced, by the bare architecture. The baseline, measured in the same run
on the same pictures: open_clip's ViT-B-32 (what every item pays for embed/clip), its
eval transform and encode_image.

  images:  seconds/image, a batch of --batch 640x480 pictures (preprocess + forward)
  sound:   seconds/recording at 1 and at --clips clips of 2 s, and thus per clip and per
           second of sound embedded (a 10 s recording, 16 kHz mono, already decoded). A
           recording costs its clips whatever its length: only clips x 2 s are heard.
  text:    seconds/text, a batch of --batch short prompts
  memory:  peak resident set size after each model

    python bench/imagebind_cost.py [--batch 4] [--rounds 2] [--clips 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.detect_cost import pictures  # noqa: E402
from search.embedders.imagebind import ImageBindEmbedder, _Loaded  # noqa: E402


class RandomImageBind(ImageBindEmbedder):
    """The embedder with its architecture built and no weights read (same cost)."""

    def _load(self) -> _Loaded:
        return _Loaded(self.runtime.place(self.build()))


def best_s(fn: Callable[[], object], rounds: int, per: int) -> float:
    fn()  # warm up: lazy loads, allocator, tokenizer vocabulary
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) / per


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def clip_baseline(pics: list[Any], args: argparse.Namespace) -> float:
    import open_clip
    import torch

    model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", device=args.device)
    model.eval()

    def embed() -> None:
        x = torch.stack([transform(p) for p in pics]).to(args.device)
        with torch.inference_mode():
            model.encode_image(x, normalize=True).cpu()

    # A batch takes a fraction of a second: more rounds, so that the best of them is a
    # quiet one even when other processes share the cores.
    return best_s(embed, max(args.rounds, 10), len(pics))


def recording(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPU cores, {args.device}")  # fmt: skip
    pics = pictures(args.batch, (640, 480))
    clip_s = clip_baseline(pics, args)
    clip_rss = peak_rss_gb()
    print(f"CLIP ViT-B-32   {clip_s:8.3f} s/image   (peak RSS {clip_rss:.2f} GB)", flush=True)

    emb = RandomImageBind(device=args.device, audio_clips=args.clips)
    t0 = time.perf_counter()
    net = emb.load().net
    params = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    print(f"ImageBind-huge built in {time.perf_counter() - t0:.1f} s: {params / 1e6:.0f} M "
          f"values, {params * 4 / 1e9:.2f} GB in float32 (peak RSS {peak_rss_gb():.2f} GB)",
          flush=True)  # fmt: skip
    image_s = best_s(lambda: emb.embed_images(pics), args.rounds, len(pics))
    print(f"  {'image':<15} {image_s:8.3f} s/image", flush=True)

    texts = [f"the sound of a {w} in the rain" for w in ("dog", "bell", "car", "crowd")]
    texts = (texts * args.batch)[: args.batch]
    text_s = best_s(lambda: emb.embed_texts(texts), args.rounds, len(texts))
    print(f"  {'text':<15} {text_s:8.3f} s/text", flush=True)

    waves = [recording(10.0)] * args.batch
    sound_s = {}
    for clips in sorted({1, args.clips}):
        emb.audio_clips = clips
        sound_s[clips] = best_s(lambda: emb.embed_audio(waves), args.rounds, len(waves))
        label = f"sound, {clips} clip{'s' if clips > 1 else ''}"
        print(f"  {label:<15} {sound_s[clips]:8.3f} s/recording", flush=True)
    # Milliseconds: more rounds, so that one slice of a busy machine does not decide it.
    mel_s = best_s(lambda: emb.preprocess_audio(waves[0]), max(args.rounds, 20), 1)
    per_clip = sound_s[args.clips] / args.clips
    rss = peak_rss_gb()

    print(f"\n  {'what':<40} {'seconds':>8} {'x CLIP image':>13}")
    rows = [
        ("CLIP ViT-B-32 image (baseline)", clip_s),
        ("ImageBind image", image_s),
        ("ImageBind text", text_s),
        (f"ImageBind sound, {args.clips} clips (recording)", sound_s[args.clips]),
        ("ImageBind sound, per 2 s clip", per_clip),
        ("ImageBind sound, per second embedded", per_clip / 2),
        ("  of which log-mel (per recording)", mel_s),
    ]
    for label, s in rows:
        print(f"  {label:<40} {s:8.3f} {s / clip_s:13.1f}")
    print(f"\n  peak RSS: {clip_rss:.2f} GB with CLIP, {rss:.2f} GB with ImageBind-huge too")


if __name__ == "__main__":
    main()
