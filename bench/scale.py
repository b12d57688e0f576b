"""Scale-out figures (issue [9] point 9), all servers real, in one run:

1. Indexing rate of the same library (--files photo-like JPEGs, ViT-B-32 with seeded
   random weights: the real cost) three ways, process start and model load included:
   - embedded: `everlook index` on SQLite + FAISS (one process);
   - PostgreSQL (pgserver) + Milvus (`milvus-lite server`) with 1 `everlook worker`,
     then with 2, the library queued first as `watch --enqueue-only` queues it;
   and the ratios to the embedded run. On this 2-core machine two workers share the two
   cores the one already used (ONNX Runtime runs a batch on both): what this measures is
   the cost of the servers and the queue, not a speed-up, which needs more cores or
   machines.
2. Query latency with --vectors clustered unit vectors (512-d, as ViT-B-32's) in FAISS
   (IVF, in process) and in Milvus (IVF_FLAT behind its gRPC server), both built by
   Everlook's own builders (lists from the size, probes tuned to recall@10 0.97): single
   queries, k=10, p50/p95 over --queries, recall@10 of each against exact search, and
   the build times. Milvus here is `milvus-lite server`: Milvus's protocol over a Python
   engine with a FAISS index per 100k-row segment (128 lists each, whatever the
   collection asks), so its figures say what Milvus Lite does, not a standalone's C++
   engine: give --milvus-uri to measure one.

    python bench/scale.py [--files 96] [--vectors 1000000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._synthetic import small_jpeg  # noqa: E402
from bench.index_throughput import MODEL, TAG, save_random_weights  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MilvusServer:
    def __init__(self, data: Path) -> None:
        self.port = free_port()
        exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
        cmd = [exe, "server", "--data-dir", str(data), "--host", "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("milvus-lite server did not start") from None
                time.sleep(0.1)
        self.uri = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def base_env(home: Path, model_dir: Path, onnx: Path) -> dict[str, str]:
    (home / "models").mkdir(parents=True, exist_ok=True)
    link = home / "models" / "onnx"
    if not link.exists():
        link.symlink_to(onnx, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env.update(EVERLOOK_HOME=str(home), EVERLOOK_MODEL_DIR=str(model_dir),
               EVERLOOK_CLIP_MODEL=MODEL, EVERLOOK_CLIP_PRETRAINED=TAG,
               EVERLOOK_DEVICE="cpu", EVERLOOK_STAGES="[]",
               EVERLOOK_STYLIZE_CONCURRENCY="0")  # fmt: skip
    return env


def count_vectors(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM embeddings")).scalar() or 0)
    finally:
        engine.dispose()


def index_embedded(lib: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "everlook", "index", str(lib), "--json"], env=env,
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def index_workers(lib: Path, n_files: int, workers: int, env: dict[str, str], tmp: Path) -> float:
    """Queue the library (as `watch --enqueue-only` does), then time `workers` workers
    from their start until every file's vector is in the catalog (and so in Milvus)."""
    import migrations
    from catalog import make_engine
    from catalog.jobs import JobQueue
    from everlook.settings import Settings
    from everlook.wiring import Parts

    os.environ.update({k: v for k, v in env.items() if k.startswith("EVERLOOK_")})
    parts = Parts(Settings())
    migrations.ensure_head(make_engine(env["EVERLOOK_DATABASE_URL"]))
    todo, _gone, _problems, _ = parts.pipeline(parts.scan_rules()).plan([str(lib)])
    now = time.time()
    JobQueue(parts.catalog.engine).put_many([(f.path, "index", now - 1, f.size, f.mtime_ns)
                                             for f in todo])  # fmt: skip
    procs = []
    t0 = time.perf_counter()
    for i in range(workers):
        home = tmp / f"worker{i}"
        wenv = {**env, **base_env(home, Path(env["EVERLOOK_MODEL_DIR"]),
                                  Path(env["EVERLOOK_HOME"]) / "models" / "onnx")}  # fmt: skip
        wenv["EVERLOOK_HOME"] = str(home)
        cmd = [sys.executable, "-m", "everlook", "worker"]
        procs.append(subprocess.Popen(cmd, env=wenv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
    try:
        while count_vectors(env["EVERLOOK_DATABASE_URL"]) < n_files:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker stopped")
            time.sleep(0.2)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p))


def query_part(args: argparse.Namespace, milvus_uri: str) -> None:
    from search import vectors
    from search.vectors import BuildOptions, IndexInfo

    n, dim = args.vectors, 512
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((200, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    class Source:
        def count(self) -> int:
            return n

        def _chunk(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            r = np.random.default_rng(start)
            v = centroids[r.integers(0, 200, stop - start)] + r.standard_normal(
                (stop - start, dim)).astype(np.float32) * 0.04  # fmt: skip
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            return np.arange(start + 1, stop + 1, dtype=np.int64), v.astype(np.float32)

        def batches(self) -> Any:
            for s in range(0, n, 20_000):
                yield self._chunk(s, min(n, s + 20_000))

        def sample(self, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
            """k vectors: 2000 drawn from each of enough blocks of 20k chosen at random."""
            r = np.random.default_rng(seed)
            blocks = max(1, n // 20_000)
            ids, vecs = [], []
            for b in r.choice(blocks, min(blocks, k // 2000 + 1), replace=False):
                i, v = self._chunk(int(b) * 20_000, min(n, (int(b) + 1) * 20_000))
                pick = r.choice(len(i), min(len(i), 2000), replace=False)
                ids.append(i[pick])
                vecs.append(v[pick])
            return np.concatenate(ids)[:k], np.concatenate(vecs)[:k]

    info = IndexInfo(f"open_clip/{MODEL}/{TAG}", dim)
    opts = BuildOptions()
    q = rng.standard_normal((args.queries, dim)).astype(np.float32) * 0.5
    q += centroids[rng.integers(0, 200, args.queries)]  # between a cluster and anywhere
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    print(f"\nquery latency, {n} vectors x {dim}, {args.queries} single queries, k=10")
    # Exact answers for recall, computed blockwise over the same vectors.
    best = np.full((len(q), 10), -2.0, dtype=np.float32)
    best_ids = np.zeros((len(q), 10), dtype=np.int64)
    for ids, vecs in Source().batches():
        sc = q @ vecs.T
        allsc = np.concatenate([best, sc], axis=1)
        allid = np.concatenate([best_ids, np.broadcast_to(ids, sc.shape)], axis=1)
        top = np.argsort(-allsc, axis=1)[:, :10]
        best, best_ids = np.take_along_axis(allsc, top, 1), np.take_along_axis(allid, top, 1)
    for name, where in (("faiss", {}), ("milvus", {"uri": milvus_uri, "alias": "bench_scale"})):
        t0 = time.perf_counter()
        store: Any = vectors.build(name, info, Source(), opts, **where)
        built = time.perf_counter() - t0
        times, hits = [], 0
        for i, qv in enumerate(q):
            t = time.perf_counter()
            row = store.search(qv, 10)[0]
            times.append((time.perf_counter() - t) * 1000)
            hits += len({j for j, _ in row} & set(best_ids[i].tolist()))
        d = store.describe()
        print(f"  {name:6s} build {built:7.1f} s ({d.get('kind')}, {d.get('nlist')} lists, "
              f"{d.get('nprobe')} probed)  p50 {pct(times, 50):6.2f} ms  p95 "
              f"{pct(times, 95):6.2f} ms  recall@10 {hits / (10 * len(q)):.3f}")  # fmt: skip
        del store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=96)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    ap.add_argument("--skip-indexing", action="store_true")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument(
        "--milvus-uri",
        default="",
        help="a Milvus standalone or cluster to "
        "measure instead of a milvus-lite server started here",
    )
    args = ap.parse_args()

    import pgserver

    model_dir = args.data / "models"
    save_random_weights(model_dir)
    onnx = args.data / "onnx-cache"
    onnx.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="everlook-scale-") as t:
        tmp = Path(t)
        milvus = MilvusServer(tmp / "milvus")
        pg = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        try:
            if not args.skip_indexing:
                lib = tmp / "lib"
                lib.mkdir()
                for i in range(args.files):
                    (lib / f"p{i:04d}.jpg").write_bytes(small_jpeg(i, (1024, 768)))
                print(f"indexing {args.files} photo-like JPEGs 1024x768, ViT-B-32, "
                      f"{os.cpu_count()} cores (start-up and model load included)")  # fmt: skip
                env = base_env(tmp / "embedded", model_dir, onnx)
                index_embedded(lib, base_env(tmp / "warm", model_dir, onnx))  # the export, once
                base = index_embedded(lib, env)
                print(f"  SQLite + FAISS, `everlook index`:  {base:6.1f} s  "
                      f"{args.files / base:5.1f} img/s  (baseline)")  # fmt: skip
                for workers in (1, 2):
                    db = f"w{workers}"
                    pg.psql(f"CREATE DATABASE {db};")
                    wenv = base_env(tmp / f"queue{workers}", model_dir, onnx)
                    wenv.update(EVERLOOK_DATABASE_URL=f"postgresql+psycopg://postgres@/{db}"
                                f"?host={pg.pgdata}", EVERLOOK_VECTOR_BACKEND="milvus",
                                EVERLOOK_MILVUS_URI=milvus.uri,
                                EVERLOOK_MILVUS_COLLECTION=f"bench_{db}")  # fmt: skip
                    took = index_workers(lib, args.files, workers, wenv, tmp / db)
                    print(f"  PostgreSQL + Milvus, {workers} worker{'s' if workers > 1 else ''}:"
                          f"   {took:6.1f} s  {args.files / took:5.1f} img/s  "
                          f"({base / took:.2f}x the embedded rate)")  # fmt: skip
            if not args.skip_queries:
                query_part(args, args.milvus_uri or milvus.uri)
        finally:
            milvus.stop()
            pg.cleanup()
    print(json.dumps({"note": "ratios are within this run; see the docstring"}))


if __name__ == "__main__":
    main()
