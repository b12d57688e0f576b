"""`everlook index` over an unchanged tree: the command end to end, start-up included.

Builds once (cached under --data) a tree of --files tiny distinct JPEGs, 100 to a folder,
and catalog rows for every one of them as a first `everlook index` leaves them: an item
keyed by the file's SHA-256, its path with the file's size and mtime, a vector of the
configured model (random, unit length) and a done embed/clip row. The rows are written
directly (bulk SQL), not by indexing the files with a model: 100k images through a model
take an hour here, and an unchanged run reads none of them anyway. With --catalog-items
(default 1,000,000) the tree's rows sit among that many synthetic items
(bench/_synthetic.cached_catalog), so every cost that grows with the catalog shows; they
are taken out again at the end.

Then, in one run:
- baseline: a plain os.scandir walk of the tree with a stat of every file (what any scan
  of the tree must do, with nothing compared);
- `everlook index TREE --json` in a new process (ViT-B-32 configured, its weights on
  disk), timed from start to exit, three times; the median is the figure;
- a probe process that runs the same pipeline with file reads made to fail, and says
  where the time went (start-up, the catalog's paths under the tree, the walk) and
  whether torch, open_clip or the model were loaded.

    python bench/index_unchanged.py [--files 100000] [--catalog-items 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._synthetic import cached_catalog, save_checkpoint, small_jpeg  # noqa: E402

MODEL, TAG = "ViT-B-32", "bench-random"
MODEL_ID = f"open_clip/{MODEL}/{TAG}"
PER_FOLDER = 100
BAR_S = 20.0


def make_tree(root: Path, n: int) -> Path:
    """n distinct small JPEGs under root/<folder>/: one picture with a different tail
    after its end marker (decoders ignore it), so each file is its own content."""
    done = root / ".complete"
    if done.is_file():
        return root
    base = small_jpeg(7, (64, 48), quality=70)
    for i in range(n):
        folder = root / f"{2000 + i // 10_000}" / f"{(i // PER_FOLDER) % 100:02d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{i:06d}.jpg").write_bytes(base + b"everlook-bench-%d" % i)
    done.write_text(str(n))
    return root


def tree_files(root: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file, sorted: the baseline walk."""
    out = []
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append(e.path)
                else:
                    st = e.stat()
                    out.append((e.path, st.st_size, st.st_mtime_ns))
    return out


def add_tree_rows(url: str, root: Path, first_id: int, dim: int = 512) -> int:
    """Catalog rows for every file under root, ids from first_id; returns how many."""
    from catalog import make_engine
    from catalog.models import Embedding, FilePath, Item, StageStatus

    files = sorted(tree_files(root))
    rng = np.random.default_rng(1)
    now = datetime.now(UTC)
    engine = make_engine(url)
    for start in range(0, len(files), 5000):
        chunk = files[start : start + 5000]
        vecs = rng.standard_normal((len(chunk), dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        items, paths, embs, stages = [], [], [], []
        for j, (path, size, mtime) in enumerate(chunk):
            i = first_id + start + j
            sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            items.append({"id": i, "sha256": sha, "kind": "image", "format": "JPEG", "width": 64,
                          "height": 48, "size_bytes": size, "created_at": now})  # fmt: skip
            # undated: these items have no capture time (see FilePath)
            paths.append({"item_id": i, "path": path, "size": size, "mtime_ns": mtime,
                          "undated": True, "updated_at": now})  # fmt: skip
            embs.append({"item_id": i, "space": "clip", "model_id": MODEL_ID, "dim": dim,
                         "vector": vecs[j].tobytes(), "created_at": now})  # fmt: skip
            stages.append({"item_id": i, "stage": "embed/clip", "status": "done",
                           "attempts": 1, "model_id": MODEL_ID, "updated_at": now})  # fmt: skip
        with engine.begin() as conn:
            for table, rows in ((Item, items), (FilePath, paths), (Embedding, embs),
                                (StageStatus, stages)):  # fmt: skip
                conn.execute(table.__table__.insert(), rows)  # type: ignore[attr-defined]
    engine.dispose()
    return len(files)


def remove_tree_rows(url: str, root: Path) -> int:
    """Take the tree's items out of the catalog again (paths, vectors, rows go with them)."""
    import sqlite3

    db = url.removeprefix("sqlite:///")
    lo, hi = os.fsencode(str(root)) + b"/", os.fsencode(str(root)) + b"0"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys=ON")
    ids = [r[0] for r in conn.execute(
        "SELECT item_id FROM paths WHERE path >= ? AND path < ?", (lo, hi))]  # fmt: skip
    for table in ("embeddings", "stage_status", "paths", "items"):
        col = "id" if table == "items" else "item_id"
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", chunk)
    conn.commit()
    conn.close()
    return len(ids)


def settings_env(home: Path, url: str, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env.update(EVERLOOK_HOME=str(home), EVERLOOK_DATABASE_URL=url, EVERLOOK_CLIP_MODEL=MODEL,
               EVERLOOK_CLIP_PRETRAINED=TAG, EVERLOOK_MODEL_DIR=str(model_dir),
               EVERLOOK_DEVICE="cpu", EVERLOOK_STAGES="[]")  # fmt: skip
    return env


def probe(tree: str) -> None:
    """In a fresh process: where an unchanged run's time goes, and what it loads."""
    t0 = time.perf_counter()
    import indexer.pipeline as pl
    from everlook.settings import Settings
    from everlook.wiring import Parts

    def no_reads(*a: Any, **k: Any) -> Any:
        raise AssertionError("an unchanged file was read")

    pl.read_file = no_reads  # type: ignore[assignment]
    parts = Parts(Settings())
    pipeline = parts.pipeline(parts.scan_rules())
    t1 = time.perf_counter()
    known = parts.catalog.known_paths([tree], ("clip", parts.embedder.model_id))
    t2 = time.perf_counter()
    from indexer.scan import scan

    walked = sum(1 for _ in scan([tree], pipeline.opts.rules))
    t3 = time.perf_counter()
    report = pipeline.run([tree])
    t4 = time.perf_counter()
    print(json.dumps({
        "start_up_s": t1 - t0, "known_paths_s": t2 - t1, "known": len(known),
        "scan_s": t3 - t2, "walked": walked, "run_s": t4 - t3,
        "unchanged": report.unchanged, "new": report.new, "failed": len(report.failed),
        "torch": "torch" in sys.modules, "open_clip": "open_clip" in sys.modules,
        "model_loaded": bool(parts.embedder.loaded), "index_loaded": parts.index.loaded,
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--catalog-items", type=int, default=1_000_000,
                    help="synthetic items besides the tree's (0: the tree's alone)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/tmp/everlook-bench"))
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(args.probe)
    data: Path = args.data
    t = time.perf_counter()
    tree = make_tree(data / f"tree-{args.files}", args.files)
    model_dir = data / "models"
    save_checkpoint(MODEL, model_dir / "open_clip" / MODEL / TAG / "open_clip_model.pt")
    home = data / "home-unchanged"
    if args.catalog_items:
        db = cached_catalog(data, args.catalog_items, MODEL_ID)
    else:
        db = data / f"catalog-tree-{args.files}.sqlite"
        db.unlink(missing_ok=True)
        import migrations
        from catalog import make_engine

        migrations.upgrade(make_engine(f"sqlite:///{db}"))
    url = f"sqlite:///{db}"
    remove_tree_rows(url, tree)  # left by an interrupted run
    n = add_tree_rows(url, tree, args.catalog_items + 1)
    took = time.perf_counter() - t
    print(f"tree {tree}: {n} files in {n // PER_FOLDER} folders; catalog {db.name}: "
          f"{args.catalog_items + n} items ({took:.0f} s to set up)")  # fmt: skip
    env = settings_env(home, url, model_dir)
    everlook = str(Path(sys.executable).with_name("everlook"))
    try:
        # First: migrations brought to head, the data dir made (not what is timed).
        subprocess.run([everlook, "db", "upgrade"], env=env, check=True, capture_output=True)
        base = []
        for _ in range(args.runs):
            t = time.perf_counter()
            walked = tree_files(tree)
            base.append(time.perf_counter() - t)
        walls, inner = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            res = subprocess.run([everlook, "index", str(tree), "--json"], env=env,
                                 capture_output=True, text=True)  # fmt: skip
            walls.append(time.perf_counter() - t)
            if res.returncode != 0:
                sys.exit(f"everlook index failed ({res.returncode}): {res.stderr[-2000:]}")
            out = json.loads(res.stdout)
            if out["unchanged"] != n or out["new"] or out["changed"]:
                sys.exit(f"not an unchanged run: {out}")
            inner.append(out["seconds"])
        res = subprocess.run([sys.executable, __file__, "--probe", str(tree)], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        p = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        remove_tree_rows(url, tree)
    wall, b = statistics.median(walls), statistics.median(base)
    run_s = statistics.median(inner)
    print(f"baseline: os.scandir walk + stat of {len(walked)} files: {b:.2f} s "
          f"({len(walked) / b:,.0f} files/s)")  # fmt: skip
    print(f"everlook index (unchanged), median of {args.runs}: {wall:.2f} s wall "
          f"({n / wall:,.0f} files/s); runs {', '.join(f'{w:.2f}' for w in walls)} s")  # fmt: skip
    print(f"  split: start-up and exit {wall - run_s:.2f} s, scan and compare {run_s:.2f} s "
          f"(the command's own timer)")  # fmt: skip
    print(f"  probe: start-up {p['start_up_s']:.2f} s, catalog paths under the tree "
          f"{p['known_paths_s']:.2f} s ({p['known']} rows), walk with the scan rules "
          f"{p['scan_s']:.2f} s, whole run {p['run_s']:.2f} s; unchanged {p['unchanged']}, "
          f"new {p['new']}, failed {p['failed']}")  # fmt: skip
    print(f"  loaded: torch {p['torch']}, open_clip {p['open_clip']}, CLIP model "
          f"{p['model_loaded']}, vector index {p['index_loaded']}; file reads: none "
          f"(reads raise in the probe)")  # fmt: skip
    print(f"scan and compare / baseline walk: {run_s / b:.2f}x; whole command / baseline: "
          f"{wall / b:.2f}x")  # fmt: skip
    print(f"bar: wall = {wall:.2f} s (bar <= {BAR_S:.0f}) -> {'ok' if wall <= BAR_S else 'MISSED'}")


if __name__ == "__main__":
    main()
