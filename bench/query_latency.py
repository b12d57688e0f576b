"""Warm text-query latency and recall at a million vectors: the approximate index against
the exact one, in the same run.

A catalog of --n synthetic items (clustered unit vectors, bench/_synthetic.cached_catalog:
built once and kept under --data; benches given the same --data share it) is searched the
way the app does it: everything comes from ``everlook.wiring.Parts(Settings())`` with
ViT-B-32 (seeded random weights: the real architecture and cost) running the text tower.
Prints:

- the index build (a fresh process opening with no index file: it reads the catalog,
  trains, files, tunes, saves): seconds and that process's peak RSS;
- warm ``SearchEngine.by_text`` p50/p95 end to end (encode + search + catalog lookup of
  paths) over --queries varied queries, for the approximate index (as built for the
  catalog's size) and an exact flat index over the same vectors, with the ratio; the
  text encoding timed apart, so the figures mean the same whichever backend runs it;
- the same with a filter matching about 1 % (a 55-day window of the 15 years the catalog
  spans): the search with the filter's allow-list in hand, and end to end, where the
  catalog's filter query (not the index) takes most of the time;
- recall@10 of the approximate index against the exact one on those queries;
- a fresh process that opens the saved index and answers one query: open time, query
  time, RSS (file-backed pages counted: a memory-mapped index shows what it touched).

The index lives in a temporary home under /dev/shm when there is one (2 GB at a million,
and a save writes a second copy before its rename): file reads there are RAM's.

    python bench/query_latency.py [--n 1000000] [--data /tmp/everlook-bench-1m]
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._synthetic import cached_catalog, save_checkpoint  # noqa: E402

MODEL, TAG = "ViT-B-32", "bench-random"
MODEL_ID = f"open_clip/{MODEL}/{TAG}"
SUBJECTS = ["a dog", "two cats", "a red bicycle", "an old man", "a child", "a bowl of fruit",
            "a sailing boat", "a city street", "a mountain lake", "a wedding couple",
            "a yellow taxi", "a horse", "a birthday cake", "a lighthouse", "a snowy forest",
            "a bridge", "a guitar", "a market stall", "a tractor", "a cathedral"]  # fmt: skip
PLACES = ["on a beach", "at night", "in the rain", "against a brick wall", "in autumn",
          "from above", "in black and white", "at sunset", "in a kitchen",
          "in the snow"]  # fmt: skip
AFTER = datetime(2017, 3, 1)
WINDOW = timedelta(days=15 * 365.25 / 100)  # 1 % of the 15 years fill_catalog spans


def env_for(home: Path, db: Path, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env.update(EVERLOOK_HOME=str(home), EVERLOOK_DATABASE_URL=f"sqlite:///{db}",
               EVERLOOK_MODEL_DIR=str(model_dir), EVERLOOK_CLIP_MODEL=MODEL,
               EVERLOOK_CLIP_PRETRAINED=TAG, EVERLOOK_DEVICE="cpu",
               EVERLOOK_STAGES="[]")  # fmt: skip
    return env


CHILD = r"""
import json, sys, time
import numpy as np
from everlook.settings import Settings
from everlook.wiring import open_catalog
from search.index_sync import VectorIndex
from search.vectors import BuildOptions, IndexInfo
import search.vectors.faiss_store  # FAISS's own import, timed apart from the open

def rss():  # this process's own figures (ru_maxrss would count the parent's, from fork)
    out = {}
    for line in open("/proc/self/status"):
        key, value = line.split(":", 1)
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / 1024
    return out

s = Settings()
catalog = open_catalog(s)
options = BuildOptions(s.index_exact_max, s.index_recall, s.index_nlist)
index = VectorIndex(catalog, "faiss", s.index_dir / "clip.faiss", "clip",
                    IndexInfo(sys.argv[2], int(sys.argv[3])), options)
index.read_only = sys.argv[1] == "query"  # the query process writes nothing
before = rss()
t = time.perf_counter()
report = index.open()
out = {"open_s": time.perf_counter() - t, "rebuilt": report.rebuilt_because,
       "before": before, "after_open": rss(), "index": index.describe()}
if sys.argv[1] == "query":
    q = np.load(sys.argv[4])
    t = time.perf_counter()
    out["hits"] = index.search(q[None, :], 10)[0]
    out["search_s"] = time.perf_counter() - t
out["after"] = rss()
print(json.dumps(out, default=str))
"""


def child(env: dict[str, str], what: str, *args: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", CHILD, what, MODEL_ID, "512", *args]
    done = subprocess.run(argv, env=env, cwd=REPO,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class TimedEmbedder:
    """The engine's embedder, timing each text encoding."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.last = inner, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_texts(self, texts: Any) -> Any:
        t = time.perf_counter()
        out = self.inner.embed_texts(texts)
        self.last = time.perf_counter() - t
        return out


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, p))


def line(name: str, xs: list[float]) -> str:
    return f"{name}: p50 {pct(xs, 50):.1f} ms, p95 {pct(xs, 95):.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench-1m")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--exact-max",
        type=int,
        default=None,
        help="EVERLOOK_INDEX_EXACT_MAX (default: the setting's), to run small",
    )
    ap.add_argument(
        "--filtered-e2e",
        type=int,
        default=10,
        help="filtered queries timed end to end (each runs the catalog's filter)",
    )
    args = ap.parse_args()
    print(f"load average at start: {load()} (2 cores: timings inflate above ~1)")
    t = time.perf_counter()
    db = cached_catalog(args.data, args.n, MODEL_ID)  # built once (minutes at a million)
    print(f"catalog: {db} ({time.perf_counter() - t:.0f} s to find or build)")
    model_dir = args.data / "models"
    save_checkpoint(MODEL, model_dir / "open_clip" / MODEL / TAG / "open_clip_model.pt")
    where = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        env = env_for(Path(tmp) / "home", db, model_dir)
        if args.exact_max is not None:
            env["EVERLOOK_INDEX_EXACT_MAX"] = str(args.exact_max)
        built = child(env, "build")
        print(f"index build (fresh process, no index file): {built['open_s']:.1f} s, "
              f"peak RSS {built['after']['VmHWM']:.0f} MB ({built['before']['VmRSS']:.0f} MB "
              f"before it began)")  # fmt: skip
        idx = built["index"]
        print(f"index: {idx.get('kind')}, {idx.get('vectors')} vectors, "
              f"{idx.get('nlist', '-')} lists, {idx.get('nprobe', '-')} probed, "
              f"recall@10 at build {idx.get('recall_at_10')} {idx.get('recall', '')}, "
              f"{idx['bytes'] / 2**20:.0f} MB")  # fmt: skip
        os.environ.clear()
        os.environ.update(env)
        measure(args, Path(tmp), env)


def measure(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> None:
    from catalog.filters import Filters
    from everlook.settings import Settings
    from everlook.wiring import Parts
    from search.engine import SearchEngine
    from search.index_sync import VectorIndex
    from search.vectors import BuildOptions

    parts = Parts(Settings())
    approx = parts.engine()
    embedder = TimedEmbedder(parts.embedder)
    approx.embedder = embedder
    info = parts.index.info
    t = time.perf_counter()
    flat = VectorIndex(parts.catalog, "faiss", tmp / "exact.faiss", "clip", info,
                       BuildOptions(exact_max=args.n + 1))  # fmt: skip
    flat.read_only = True  # in memory only: never saved
    flat.open()
    print(f"exact baseline built in memory in {time.perf_counter() - t:.1f} s")
    exact = SearchEngine(embedder, flat, parts.catalog)
    texts = [f"{s} {p}" for p in PLACES for s in SUBJECTS][: args.queries]
    for text in texts[:5]:  # warm-up: the model, the mapped lists' first pages
        approx.by_text(text)
        exact.by_text(text)
    runs: dict[str, list[float]] = {k: [] for k in ("enc", "a", "e", "a_", "e_", "fa", "fe")}
    recall, f_recall = [], []
    f = Filters(after=AFTER, before=AFTER + WINDOW)
    t = time.perf_counter()
    allow = set(parts.catalog.filter_ids(f))
    filter_s = time.perf_counter() - t
    for n, text in enumerate(texts):
        # The embedder keeps recent query vectors: the engine that asks second finds the
        # text encoded. So each engine's search + lookup is its time less its own
        # encoding, and end to end is the first (real) encoding plus that; who goes
        # first alternates.
        got, miss = {}, 0.0
        order = [("a", approx), ("e", exact)][:: 1 if n % 2 == 0 else -1]
        for i, (key, eng) in enumerate(order):
            t = time.perf_counter()
            got[key] = [h.item_id for h in eng.by_text(text, k=10)]
            runs[key + "_"].append(time.perf_counter() - t - embedder.last)
            miss = embedder.last if i == 0 else miss
        runs["enc"].append(miss)
        for key in ("a", "e"):
            runs[key].append(miss + runs[key + "_"][-1])
        recall.append(len(set(got["a"]) & set(got["e"])) / max(1, len(got["e"])))
        vec, _ = approx.text_vector(text, 0.5)
        fgot = {}
        for key, eng in (("fa", approx), ("fe", exact)):
            t = time.perf_counter()
            pairs = eng.ranked(vec, 11, filters=f, allow=allow)[:10]
            parts.catalog.paths_for([i for i, _ in pairs])
            runs[key].append(time.perf_counter() - t)
            fgot[key] = [i for i, _ in pairs]
        f_recall.append(len(set(fgot["fa"]) & set(fgot["fe"])) / max(1, len(fgot["fe"])))
    e2e_f = []
    for text in texts[: args.filtered_e2e]:
        t = time.perf_counter()
        approx.by_text(text, k=10, filters=f)
        e2e_f.append(time.perf_counter() - t)
    report(args, runs, recall, f_recall, e2e_f, filter_s, len(allow), env)


def report(
    args: argparse.Namespace, runs: dict[str, list[float]], recall: list[float],
    f_recall: list[float], e2e_f: list[float], filter_s: float, allowed: int,
    env: dict[str, str],
) -> None:  # fmt: skip
    enc, a_search, e_search = runs["enc"], runs["a_"], runs["e_"]
    print(f"\n{len(recall)} text queries, warm, k=10, {args.n} vectors")
    print(line("text encoding alone", enc))
    print(line("approximate, end to end", runs["a"]))
    print(line("exact, end to end      ", runs["e"]))
    print(f"  search + lookup only: approximate p50 {pct(a_search, 50):.1f} ms, "
          f"exact p50 {pct(e_search, 50):.1f} ms")  # fmt: skip
    ratio = statistics.median(runs["e"]) / statistics.median(runs["a"])
    print(f"  exact / approximate (p50, end to end): {ratio:.1f}x")
    share = 100 * allowed / args.n
    print(f"\nfilter matching {allowed} items ({share:.2f} %), its allow-list in hand:")
    print(line("approximate, search + lookup", runs["fa"]))
    print(line("exact, search + lookup      ", runs["fe"]))
    print(f"  exact / approximate (p50): "
          f"{statistics.median(runs['fe']) / statistics.median(runs['fa']):.1f}x")  # fmt: skip
    print(f"  end to end with the catalog's filter query ({filter_s * 1000:.0f} ms of it): "
          f"{line('approximate', e2e_f)} over {len(e2e_f)} queries")  # fmt: skip
    print(f"\nrecall@10 vs exact: {np.mean(recall):.3f} unfiltered (min {min(recall):.1f}), "
          f"{np.mean(f_recall):.3f} filtered")  # fmt: skip
    q = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    qfile = Path(env["EVERLOOK_HOME"]).parent / "q.npy"
    np.save(qfile, q / np.linalg.norm(q))
    cold = child(env, "query", str(qfile))
    grew = cold["after"]["VmRSS"] - cold["before"]["VmRSS"]
    print(f"\nfresh process, index file present: open {cold['open_s'] * 1000:.1f} ms, one query "
          f"{cold['search_s'] * 1000:.1f} ms; RSS {cold['before']['VmRSS']:.0f} MB after "
          f"imports -> {cold['after']['VmRSS']:.0f} MB (+{grew:.0f} MB, file-backed "
          f"{cold['after'].get('RssFile', 0) + cold['after'].get('RssShmem', 0):.0f} MB), "
          f"peak {cold['after']['VmHWM']:.0f} MB")  # fmt: skip
    print(f"load average at the end: {load()}")
    print(f"\np50 = {pct(runs['a'], 50):.1f} ms (bar <= 30)")
    print(f"recall@10 = {np.mean(recall):.3f} (bar >= 0.95)")


if __name__ == "__main__":
    main()
