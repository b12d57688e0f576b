"""Time from a file landing in a watched folder to a search returning it, with a catalog
of --catalog-items items already there.

Runs the real watcher as `everlook watch` builds it (watchdog observer, the catalog's
job queue, the pipeline, the enrichment stages backfilling when idle) in this process,
with the search engine's vector index, drops photo-like JPEGs into the folder one at a
time while the watcher is otherwise idle, and measures from the moment each file is
complete (closed) to the moment a search over the index returns its item. ViT-B-32 with
random weights (the same cost as real ones), twice in one run: over an empty catalog
(the baseline) and over --catalog-items synthetic items with their vectors, done stage
rows and a vector index built from them (bench/_synthetic.cached_catalog, built once,
minutes at a million; the bench's own items are taken out again at the end). Prints
p50/p95 of each and their ratio, and apart from the latencies: the model load, the
index open (load or build, and reconciliation with the catalog), the watcher's start
(its reconciling scan) and the index save at stop. Bar: p95 <= 3 s at a million.

The vector index lives in a temporary data dir under /dev/shm when the catalog is
filled (2 GB at a million, and a save writes a second copy before the rename): its
save figure is a RAM disk's, not a disk's.

    python bench/watch_latency.py [--files 50] [--quiet 1.0] [--catalog-items 1000000]
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
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._synthetic import cached_catalog  # noqa: E402
from bench.index_throughput import camera_jpeg, save_random_weights  # noqa: E402

MODEL, TAG = "ViT-B-32", "bench-random"


def photos(n: int, side: tuple[int, int]) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        img = Image.open(io.BytesIO(camera_jpeg(1000 + i, side)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def settle_stages(parts: Any) -> None:
    """Done rows of every enabled stage for every item, as a caught-up library has:
    the watcher's idle backfill then has nothing to do but the new files."""
    from sqlalchemy import text

    models = {name: parts.stage(name).model_id for name in parts.settings.stages}
    with parts.catalog.engine.begin() as conn:
        for name, model_id in models.items():
            conn.execute(
                text(
                    "INSERT OR IGNORE INTO stage_status (item_id, stage, status, attempts,"
                    " model_id, updated_at) SELECT id, :stage, 'done', 1, :model, created_at"
                    " FROM items WHERE kind = 'image'"
                ),
                {"stage": name, "model": model_id},
            )


def run(
    model_dir: Path, files: list[bytes], quiet: float, items: int, data: Path
) -> tuple[list[float], dict[str, float]]:
    from everlook.settings import Settings
    from everlook.wiring import Parts
    from indexer.watch import WatchOptions

    where = "/dev/shm" if items and Path("/dev/shm").is_dir() else None
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        for k in [k for k in os.environ if k.startswith("EVERLOOK_")]:
            del os.environ[k]
        os.environ.update(EVERLOOK_HOME=f"{tmp}/home", EVERLOOK_CLIP_MODEL=MODEL,
                          EVERLOOK_CLIP_PRETRAINED=TAG, EVERLOOK_DEVICE="cpu",
                          EVERLOOK_MODEL_DIR=str(model_dir))  # fmt: skip
        if items:
            db = cached_catalog(data, items, f"open_clip/{MODEL}/{TAG}")
            os.environ["EVERLOOK_DATABASE_URL"] = f"sqlite:///{db}"
        # The stages' prompt embeddings (minutes of the text tower for the labels) are
        # kept between runs, as a running watcher has them from its first day.
        (data / "cache").mkdir(parents=True, exist_ok=True)
        Path(f"{tmp}/home").mkdir()
        Path(f"{tmp}/home/cache").symlink_to(data / "cache")
        parts = Parts(Settings())
        if items:
            t = time.perf_counter()
            settle_stages(parts)
            times["stage rows"] = time.perf_counter() - t
        t = time.perf_counter()
        _ = parts.embedder.model  # loaded before timing: a running watcher has it loaded
        times["model load"] = time.perf_counter() - t
        t = time.perf_counter()
        _ = parts.index.store  # loaded (here: built from the catalog) and reconciled
        times["index open"] = time.perf_counter() - t
        lib = Path(tmp) / "inbox"
        lib.mkdir()
        watcher = parts.watcher([str(lib)], parts.scan_rules(), WatchOptions(quiet_seconds=quiet))
        t = time.perf_counter()
        watcher.start()
        times["watcher start"] = time.perf_counter() - t
        thread = threading.Thread(target=watcher.run_forever, daemon=True)
        thread.start()
        latencies = []
        try:
            # The first file is not counted: the stages' prompts are embedded on their
            # first batch (cached in the data dir from then on).
            for i, data_ in enumerate([files[0], *files]):
                path = lib / f"IMG_{i:04d}.jpg"
                path.write_bytes(data_)  # written and closed: the file has landed
                landed = time.monotonic()
                wait_searchable(parts, path, landed)
                if i:
                    latencies.append(time.monotonic() - landed)
                else:
                    t = time.perf_counter()
                    wait_enriched(parts, watcher, path)
                    times["first enrichment"] = time.perf_counter() - t
                time.sleep(0.3)  # the watcher is otherwise idle
        finally:
            watcher.stop()
            thread.join(120)
            times["index save at stop"] = watcher.last_save_seconds or 0.0
            if items:  # leave the cached catalog as it was
                gone = list(parts.catalog.known_paths([str(lib)]))
                parts.catalog.remove_paths(gone)
    return latencies, times


def wait_enriched(parts: Any, watcher: Any, path: Path) -> None:
    """Until every stage that can run has a row for the file's item (done or failed)."""
    item = parts.catalog.item_id_for_path(str(path))
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        have = {st["stage"] for st in parts.catalog.stages.statuses(item)}
        runnable = [s.name for s in watcher.stages.live()] if watcher.stages else []
        if all(name in have for name in runnable):
            return
        time.sleep(0.2)
    raise RuntimeError("the first file's enrichment did not end in 30 minutes")


def wait_searchable(parts: Any, path: Path, landed: float) -> None:
    while True:
        item = parts.catalog.item_id_for_path(str(path))
        if item is not None:
            vec = np.frombuffer(parts.catalog.embedding(item, "clip")[1], np.float32)
            hits = parts.index.search(vec, 1, allow=[item])[0]
            if hits and hits[0][0] == item:
                return
        if time.monotonic() - landed > 120:
            raise RuntimeError(f"{path} not searchable after 120 s")
        time.sleep(0.01)


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
    ap.add_argument("--catalog-items", type=int, default=1_000_000,
                    help="items already in the catalog for the measured run")  # fmt: skip
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    args = ap.parse_args()
    files = photos(args.files, (3000, 2000))
    print(
        f"{len(files)} JPEGs 3000x2000 ({np.mean([len(f) for f in files]) / 1e6:.1f} MB avg); "
        f"quiet period {args.quiet:.2f} s; watcher otherwise idle; ViT-B-32 (random weights)"
    )
    model_dir = args.data / "models"
    save_random_weights(model_dir)
    runs = {}
    for items in (0, args.catalog_items):
        lat, times = run(model_dir, files, args.quiet, items, args.data)
        runs[items] = lat
        print(f"catalog of {items:,} items: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in times.items()))  # fmt: skip
    base = report("ViT-B-32, empty catalog", runs[0])
    p95 = report(f"ViT-B-32, {args.catalog_items:,} items", runs[args.catalog_items])
    p50 = statistics.median(runs[args.catalog_items])
    print(f"{args.catalog_items:,} items / empty: p50 {p50 / statistics.median(runs[0]):.2f}x, "
          f"p95 {p95 / base:.2f}x")  # fmt: skip
    print(f"quiet-period share of the p50: {args.quiet / p50:.2f}")
    print(f"p95 = {p95:.2f} s (bar <= 3) -> {'ok' if p95 <= 3 else 'MISSED'}")


if __name__ == "__main__":
    main()
