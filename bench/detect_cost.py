"""Cost of object detection per picture: a real-size yolo11n and the demo model.

For each model prints ms/image of
  (a) the network alone, forward on a ready letterboxed batch (the ceiling),
  (b) YoloDetector.detect() on PIL pictures: ultralytics' letterbox, forward, NMS,
      boxes scaled back and turned into Everlook's Detections,
and the ratio b/a (what the path around the network costs). Same run, same machine.

yolo11n is built from its yaml, randomly initialised (nothing downloaded): the same
architecture and cost as yolo11n.pt, at its 640 px. The demo model runs at the size it
was trained at (read from its checkpoint). Usage:
    python bench/detect_cost.py [--batch 8] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pictures(n: int, size: tuple[int, int]) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    w, h = size
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def best_ms(fn: Callable[[], object], rounds: int, per: int) -> float:
    fn()  # warm up: first call sets up ultralytics' predictor and fuses conv+bn
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times) / per


def measure(weights: str, size: tuple[int, int], args: argparse.Namespace) -> None:
    import torch

    from enrich.detect import YoloDetector

    det = YoloDetector(weights, device=args.device)
    batch = pictures(args.batch, size)
    detect_ms = best_ms(lambda: det.detect(batch), args.rounds, args.batch)
    side = det.imgsz
    net = det.load().predictor.model  # ultralytics' AutoBackend around the fused network
    # The shape detect() feeds it: pictures of one size are letterboxed to the smallest
    # multiple of the stride that holds them, not to a square.
    r = side / max(size)
    w, h = (int(math.ceil(round(v * r) / 32) * 32) for v in size)
    x = torch.zeros(args.batch, 3, h, w, device=det.device)

    def forward() -> None:
        with torch.inference_mode():
            net(x)

    net_ms = best_ms(forward, args.rounds, args.batch)
    print(
        f"{det.model_id} at {side} px ({w}x{h} in), pictures {size[0]}x{size[1]}, "
        f"batch {args.batch}:"
    )
    print(f"  network alone  {net_ms:8.1f} ms/image")
    print(f"  detect()       {detect_ms:8.1f} ms/image   ratio {detect_ms / net_ms:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="everlook-bench-") as tmp:
        from enrich.detect import configure_ultralytics

        configure_ultralytics(Path(tmp))  # keep ultralytics' settings out of ~/.config
        import torch

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
        measure("yolo11n.yaml", (640, 480), args)
        measure("everlook-demo-yolo.pt", (256, 256), args)


if __name__ == "__main__":
    main()
