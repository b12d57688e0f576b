"""Time from a file landing in a watched folder to a search returning it.

Runs the real Watcher (watchdog observer, catalog job queue, pipeline) in this process
with the search engine's vector index, drops photo-like JPEGs into the folder one at a
time while the watcher is otherwise idle, and measures from the moment each file is
complete (closed) to the moment a search over the index returns its item. Prints p50 and
p95 over the files, for everlook-demo and for ViT-B-32 (random weights: same cost), with
the quiet period stated. Bar: p95 <= 3 s with ViT-B-32.

    python bench/watch_latency.py [--files 50] [--quiet 1.0]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.index_throughput import camera_jpeg, save_random_weights  # noqa: E402


def photos(n: int, side: tuple[int, int]) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        img = Image.open(io.BytesIO(camera_jpeg(1000 + i, side)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run(
    model: str, tag: str, model_dir: Path | None, files: list[bytes], quiet: float
) -> list[float]:
    from catalog.jobs import JobQueue
    from everlook.settings import Settings
    from everlook.wiring import Parts
    from indexer.scan import ScanRules
    from indexer.watch import Watcher, WatchOptions

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(EVERLOOK_HOME=f"{tmp}/home", EVERLOOK_CLIP_MODEL=model,
                          EVERLOOK_CLIP_PRETRAINED=tag, EVERLOOK_DEVICE="cpu")  # fmt: skip
        if model_dir:
            os.environ["EVERLOOK_MODEL_DIR"] = str(model_dir)
        parts = Parts(Settings())
        _ = parts.embedder.model  # loaded before timing: a running watcher has it loaded
        lib = Path(tmp) / "inbox"
        lib.mkdir()
        rules = ScanRules(parts.settings.include)
        watcher = Watcher(
            parts.pipeline(rules),
            parts.catalog,
            JobQueue(parts.catalog.engine),
            [str(lib)],
            rules,
            WatchOptions(quiet_seconds=quiet),
        )
        watcher.start()
        thread = threading.Thread(target=watcher.run_forever, daemon=True)
        thread.start()
        store = parts.index.store
        latencies = []
        try:
            for i, data in enumerate(files):
                path = lib / f"IMG_{i:04d}.jpg"
                path.write_bytes(data)  # written and closed: the file has landed
                landed = time.monotonic()
                while True:
                    item = parts.catalog.item_id_for_path(str(path))
                    if item is not None:
                        vec = np.frombuffer(parts.catalog.embedding(item, "clip")[1], np.float32)
                        hits = store.search(vec, 1, allow=[item])[0]
                        if hits and hits[0][0] == item:
                            break
                    if time.monotonic() - landed > 60:
                        raise RuntimeError(f"{path} not searchable after 60 s")
                    time.sleep(0.01)
                latencies.append(time.monotonic() - landed)
                time.sleep(0.3)  # the watcher is otherwise idle between files
        finally:
            watcher.stop()
            thread.join(30)
    return latencies


def report(name: str, lat: list[float]) -> float:
    q = statistics.quantiles(lat, n=100, method="inclusive")
    p50, p95 = statistics.median(lat), q[94]
    print(
        f"{name:34s} p50 {p50:5.2f} s   p95 {p95:5.2f} s   max {max(lat):5.2f} s  "
        f"({len(lat)} files)"
    )
    return p95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--quiet", type=float, default=1.0, help="quiet period in seconds")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    args = ap.parse_args()
    files = photos(args.files, (3000, 2000))
    print(
        f"{len(files)} JPEGs 3000x2000 ({np.mean([len(f) for f in files]) / 1e6:.1f} MB avg); "
        f"quiet period {args.quiet:.2f} s; watcher otherwise idle"
    )
    model_dir = args.data / "models"
    save_random_weights(model_dir)
    demo = run("everlook-demo", "v1", None, files, args.quiet)
    vit = run("ViT-B-32", "bench-random", model_dir, files, args.quiet)
    report("everlook-demo", demo)
    p95 = report("ViT-B-32", vit)
    print(f"quiet-period share of the ViT-B-32 p50: {args.quiet / statistics.median(vit):.2f}")
    print(f"bar: ViT-B-32 p95 <= 3 s -> {'ok' if p95 <= 3 else 'MISSED'}")


if __name__ == "__main__":
    main()
