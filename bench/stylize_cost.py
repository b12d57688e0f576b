"""Cost of Gatys style transfer (enrich.stylize): seconds per step and per job.

For each side (256 and 512 px, long side of a 4:3 picture) and optimiser (L-BFGS, Adam)
it times StyleTransfer.run() with 1 step and with 1 + n steps, after one warm-up run, the
best of --rounds each (other work on the machine only ever adds time):
  per step  = (t[1+n] - t[1]) / n,
  overhead  = t[1] - per step (resizing, the style and content targets, the last loss),
  per job   = overhead + per step × steps (the default job's 300 steps, or --steps).
A job's cost is extrapolated from those few measured steps (every step costs the same:
one forward and backward pass at one size). Model load time (imports, building VGG-19)
is printed apart: a worker pays it once. VGG-19 is randomly initialised (nothing is
downloaded): the same architecture and cost as its ImageNet weights. Usage:
    python bench/stylize_cost.py [--sides 256 512] [--steps 300] [--measure 3] [--rounds 2]
                                 [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def main() -> None:
    from enrich.stylize import StyleSettings, StyleTransfer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=StyleSettings().steps, help="steps of a job")
    ap.add_argument("--measure", type=int, default=3, help="steps timed per configuration")
    ap.add_argument("--rounds", type=int, default=2, help="timings per figure, best kept")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import torch
    import torchvision  # noqa: F401  (its import is part of a worker's first load)

    imported = time.perf_counter() - t0
    model = StyleTransfer("random", device=args.device)
    t0 = time.perf_counter()
    model.load()
    built = time.perf_counter() - t0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {model.device}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"model load: import torch+torchvision {imported:.2f} s, build VGG-19 {built:.2f} s")
    print(f"per job = overhead + per step × {args.steps} steps, from {args.measure} timed steps")
    content, style = picture((640, 480), 0), picture((480, 640), 1)

    def timed(settings: StyleSettings) -> float:
        t = time.perf_counter()
        model.run(content, style, settings)
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    print(f"{'side':>5} {'optimizer':>9} {'s/step':>8} {'overhead s':>10} {'s/job':>8}")
    for side in args.sides:
        for optimizer in ("lbfgs", "adam"):
            one = StyleSettings(side=side, steps=1, optimizer=optimizer)
            more = StyleSettings(side=side, steps=1 + args.measure, optimizer=optimizer)
            timed(one)  # warm-up: the allocator, oneDNN/cuDNN picking kernels for this size
            t1 = min(timed(one) for _ in range(args.rounds))
            tn = min(timed(more) for _ in range(args.rounds))
            step = (tn - t1) / args.measure
            overhead = max(0.0, t1 - step)
            job = overhead + step * args.steps
            print(f"{side:>5} {optimizer:>9} {step:>8.3f} {overhead:>10.3f} {job:>8.1f}")


if __name__ == "__main__":
    main()
