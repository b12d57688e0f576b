"""Concurrent load on `everlook serve`: 100k vectors, ViT-B-32, the watcher indexing a trickle.

Fills a catalog with N synthetic items (clustered unit vectors of the model's exact
model_id, so the server's index takes them as they are; paths under a fake folder;
detections on ~20%), starts the real `everlook serve` over a small real library folder
(ViT-B-32 with seeded random weights from a checkpoint file: same cost as real ones),
measures each query kind alone (one client, sequential: the baseline), then runs C
concurrent clients for S seconds of mixed text / image-upload / more-like-this /
filtered queries while a JPEG lands in the library every T seconds. Prints throughput,
p50/p95/p99 overall and per kind, loaded/baseline p50 ratios, errors, the server's RSS,
and how many trickled files became searchable. Bar: 0 errors, p99 <= 10 x p50.

    python bench/api_load.py [--clients 32] [--seconds 60] [--items 100000] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._synthetic import fill_catalog, save_checkpoint, small_jpeg  # noqa: E402
from tests.serving import serving  # noqa: E402

MODEL, CKPT = "ViT-B-32", "vit-b-32-seed0-random.pt"
MIX = {"text": 0.35, "image": 0.20, "similar": 0.25, "has_dog": 0.10, "dated": 0.10}
VOCAB = [
    "dog", "beach", "sunset", "mountain", "city", "street", "car", "person", "cat", "snow",
    "forest", "river", "red", "blue", "old", "portrait", "night", "bridge", "boat", "garden",
]  # fmt: skip
LIBRARY = 8  # real JPEGs in the watched folder
DATED = {"kind": "image", "after": "2020-01-01"}
Sample = tuple[str, float, float, int, str]  # kind, start (s), latency (ms), status, body


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def timed(c: httpx.AsyncClient, kind: str, rng: random.Random, uploads: list[bytes],
                n_items: int, t0: float, out: list[Sample]) -> None:  # fmt: skip
    """One request of this kind; appends (kind, start, ms, status, error body) to out."""
    k: dict[str, Any] = {"k": 24}
    words = " ".join(rng.sample(VOCAB, rng.randint(2, 4)))
    start = time.perf_counter()
    try:
        if kind == "text":
            r = await c.get("/api/search", params={"q": words, **k})
        elif kind == "image":
            files = {"file": ("query.jpg", rng.choice(uploads), "image/jpeg")}
            r = await c.post("/api/search/image", params=k, files=files)
        elif kind == "similar":
            r = await c.get(f"/api/items/{rng.randint(1, n_items)}/similar", params=k)
        else:
            more = {"has": "dog"} if kind == "has_dog" else DATED
            r = await c.get("/api/search", params={"q": words, **more, **k})
        status, body = r.status_code, "" if r.status_code == 200 else r.text[:300]
    except httpx.HTTPError as exc:
        status, body = -1, f"{type(exc).__name__}: {exc}"
    out.append((kind, start - t0, (time.perf_counter() - start) * 1e3, status, body))


async def baseline(url: str, uploads: list[bytes], n_items: int, reps: int) -> list[Sample]:
    out: list[Sample] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        rng = random.Random(1)
        for kind in MIX:  # warm-up: model load, first FAISS search, SQLite caches
            await timed(c, kind, rng, uploads, n_items, 0.0, [])
        for kind in MIX:
            for _ in range(reps):
                await timed(c, kind, rng, uploads, n_items, 0.0, out)
    return out


async def load(url: str, uploads: list[bytes], n_items: int, clients: int,
               seconds: float, t0: float) -> list[Sample]:  # fmt: skip
    out: list[Sample] = []
    kinds, weights = list(MIX), list(MIX.values())
    deadline = t0 + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def client(c: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            kind = rng.choices(kinds, weights)[0]
            await timed(c, kind, rng, uploads, n_items, t0, out)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await asyncio.gather(*(client(c, 100 + i) for i in range(clients)))
    return out


def trickle(lib: Path, files: list[bytes], every: float, stop: threading.Event,
            written: list[tuple[str, float]]) -> None:  # fmt: skip
    for i, data in enumerate(files):
        if stop.wait(every):
            return
        p = lib / f"trickle_{i:03d}.jpg"
        p.write_bytes(data)  # written and closed, as a copy lands
        written.append((p.name, time.perf_counter()))


def trickle_found(c: httpx.Client, n: int, before: int, timeout: float) -> tuple[int, int, float]:
    """How many trickled files a vector search returns (its filter admits only them) and
    how many new items the catalog has; polled until all n are searchable or timeout."""
    t0, q = time.monotonic(), {"q": "a photo", "path_glob": "*/trickle_*.jpg", "k": 200}
    while True:
        found = len(c.get("/api/search", params=q).json()["results"])
        if found >= n or time.monotonic() - t0 > timeout:
            added = c.get("/api/stats").json()["items"]["total"] - before
            return found, added, time.monotonic() - t0
        time.sleep(1)


def proc_mem(pid: int) -> dict[str, float]:
    fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}  # MiB


def cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def pct(ms: Sequence[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": len(ms), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(float(max(ms)), 1)}  # fmt: skip


def setup(base: Path, n: int) -> tuple[dict[str, str], Path, dict[str, float]]:
    from search.embedders.clip import OpenClipEmbedder

    times: dict[str, float] = {}
    t = time.perf_counter()
    ckpt = save_checkpoint(MODEL, base / "models" / CKPT)
    times["checkpoint_s"] = time.perf_counter() - t
    # The model_id the server's embedder will have: the index keeps only such vectors.
    model_id = OpenClipEmbedder(MODEL, str(ckpt)).model_id
    settings = {"EVERLOOK_HOME": str(base / "home"), "EVERLOOK_CLIP_MODEL": MODEL,
                "EVERLOOK_CLIP_PRETRAINED": str(ckpt), "EVERLOOK_DEVICE": "cpu",
                "EVERLOOK_STAGES": "[]"}  # fmt: skip
    marker = base / "filled.json"
    want = {"items": n, "model_id": model_id}
    if not marker.is_file() or json.loads(marker.read_text()) != want:
        if (base / "home").exists():
            raise SystemExit(f"{base / 'home'} holds another fill; use an empty --keep folder")
        t = time.perf_counter()
        fill_catalog(f"sqlite:///{base / 'home' / 'catalog.db'}", n, model_id)
        times["fill_s"] = time.perf_counter() - t
        marker.write_text(json.dumps(want))
    lib = base / "library"
    lib.mkdir(exist_ok=True)
    for old in lib.glob("trickle_*.jpg"):
        old.unlink()
    for i in range(LIBRARY):
        (lib / f"photo_{i}.jpg").write_bytes(small_jpeg(i))
    return settings, lib, times


def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    settings, lib, times = setup(base, args.items)
    log(f"setup: {json.dumps({k: round(v, 1) for k, v in times.items()})}")
    uploads = [small_jpeg(500 + i) for i in range(8)]
    trickled = [small_jpeg(1000 + i) for i in range(int(args.seconds / args.trickle) + 1)]
    t = time.perf_counter()
    with serving(settings, str(lib), cwd=base, ready_timeout=600) as srv:
        times["server_ready_s"] = time.perf_counter() - t
        pid = srv.proc.pid
        with srv.client() as c:
            ready = c.get("/api/ready").json()
            if ready["vectors"] < args.items:
                raise SystemExit(f"index has {ready['vectors']} vectors, not {args.items}+ "
                                 f"(model_id mismatch?):\n{srv.output()[-3000:]}")  # fmt: skip
            deadline = time.monotonic() + 300  # the watcher's first reconcile: the library
            while c.get("/api/ready").json()["vectors"] != args.items + LIBRARY:
                if time.monotonic() > deadline:
                    raise SystemExit(f"library not reconciled:\n{srv.output()[-3000:]}")
                time.sleep(0.5)
        log(f"server ready in {times['server_ready_s']:.1f} s: {ready}; baseline ...")
        base_samples = asyncio.run(baseline(srv.url, uploads, args.items, args.baseline))
        mem_idle = proc_mem(pid)
        with srv.client() as c:
            items_before = c.get("/api/stats").json()["items"]["total"]
        log(f"load: {args.clients} clients x {args.seconds:.0f} s, a file every {args.trickle} s")
        stop, written = threading.Event(), list[tuple[str, float]]()
        writer = threading.Thread(target=trickle, args=(lib, trickled, args.trickle, stop, written))
        cpu0, mine0, wall0 = cpu_s(pid), time.process_time(), time.perf_counter()
        writer.start()
        samples = asyncio.run(load(srv.url, uploads, args.items, args.clients, args.seconds, wall0))
        stop.set()
        writer.join()
        wall = time.perf_counter() - wall0
        cpu = {"server_cores": (cpu_s(pid) - cpu0) / wall,
               "client_cores": (time.process_time() - mine0) / wall}  # fmt: skip
        mem = proc_mem(pid)
        with srv.client() as c:
            found = trickle_found(c, len(written), items_before, 30)
        log_tail = srv.output()
    if args.dump:  # raw samples and trickle times, for looking into a tail
        rows = [
            dict(zip(("kind", "at_s", "ms", "status", "body"), s, strict=True)) for s in samples
        ]
        writes = [w[1] - wall0 for w in written]
        args.dump.write_text(json.dumps({"samples": rows, "trickle_at_s": writes}))
    return summarize(args, times, ready, base_samples, samples, wall, cpu, mem_idle, mem,
                     (len(written), *found), log_tail)  # fmt: skip


def summarize(args: argparse.Namespace, times: dict[str, float], ready: dict[str, Any],
              base_samples: list[Sample], samples: list[Sample], wall: float,
              cpu: dict[str, float], mem_idle: dict[str, float], mem: dict[str, float],
              tr: tuple[int, int, int, float], server_log: str) -> dict[str, Any]:  # fmt: skip
    ok = [s for s in samples if s[3] == 200]
    errors = [s for s in samples + base_samples if s[3] != 200]
    distinct = Counter(f"{e[0]} {e[3]} {e[4][:200]}" for e in errors)
    overall = pct([s[2] for s in ok])
    per_kind = {k: pct([s[2] for s in ok if s[0] == k]) for k in MIX}
    base_p50 = {k: pct([s[2] for s in base_samples if s[0] == k and s[3] == 200]).get("p50")
                for k in MIX}  # fmt: skip
    ratio = overall["p99"] / overall["p50"] if ok else float("inf")
    # fmt: off
    return {
        "setup": {**{k: round(v, 1) for k, v in times.items()}, "items": args.items,
                  "ready": ready},
        "load": {"clients": args.clients, "seconds": round(wall, 1), "requests": len(samples),
                 "throughput_rps": round(len(ok) / wall, 2), "errors": len(errors),
                 "error_samples": dict(distinct.most_common(5)),
                 "cpu_cores_used": {k: round(v, 2) for k, v in cpu.items()}},
        "latency_ms": {"all": overall, **per_kind},
        "baseline_p50_ms": base_p50,
        "loaded_over_baseline_p50": {
            k: round(per_kind[k]["p50"] / b, 1) if b and per_kind[k].get("p50") else None
            for k, b in base_p50.items()},
        "bar": {"p99_over_p50": round(ratio, 2), "errors": len(errors),
                "pass": not errors and ratio <= 10},
        "slowest": [{"kind": s[0], "at_s": round(s[1], 1), "ms": round(s[2])}
                    for s in sorted(ok, key=lambda s: -s[2])[:5]],
        "server_mib": {"rss_after_warmup": round(mem_idle["VmRSS"]),
                       "rss_after_load": round(mem["VmRSS"]), "peak_hwm": round(mem["VmHWM"])},
        "trickle": {"written": tr[0], "searchable": tr[1], "new_in_catalog": tr[2],
                    "polled_s": round(tr[3], 1)},
        "server_log_errors": [ln for ln in server_log.splitlines()
                              if any(w in ln for w in ("Traceback", "ERROR", "Exception"))][:5],
    }
    # fmt: on


def show(r: dict[str, Any]) -> None:
    ld, bar = r["load"], r["bar"]
    print(f"setup: {r['setup']}")
    print(f"load: {ld['requests']} requests in {ld['seconds']} s by {ld['clients']} clients: "
          f"{ld['throughput_rps']} req/s; errors {ld['errors']}; "
          f"cores used {ld['cpu_cores_used']}")  # fmt: skip
    for e, n in ld["error_samples"].items():
        print(f"  error x{n}: {e}")
    print(f"{'kind':8s} {'n':>6s} {'p50':>8s} {'p95':>8s} {'p99':>8s} {'max':>8s} "
          f"{'base p50':>9s} {'load/base':>9s}")  # fmt: skip
    for k, v in r["latency_ms"].items():
        if not v["n"]:
            continue
        b, x = r["baseline_p50_ms"].get(k), r["loaded_over_baseline_p50"].get(k)
        row = f"{k:8s} {v['n']:6d} " + " ".join(
            f"{v[p]:8.1f}" for p in ("p50", "p95", "p99", "max")
        )
        print(row + (f" {b:9.1f} {x:9.1f}" if b and x else ""))
    print(f"slowest: {r['slowest']}")
    print(f"server RSS (MiB): {r['server_mib']}")
    t = r["trickle"]
    print(f"trickle: {t['searchable']}/{t['written']} files searchable, {t['new_in_catalog']} "
          f"new items in the catalog (polled {t['polled_s']} s after the load)")  # fmt: skip
    if r["server_log_errors"]:
        print(f"server log: {r['server_log_errors']}")
    print(f"bar: 0 errors and p99 <= 10 x p50: errors {bar['errors']}, p99/p50 "
          f"{bar['p99_over_p50']} -> {'PASS' if bar['pass'] else 'FAIL'}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=30, help="requests per kind, one client")
    ap.add_argument("--trickle", type=float, default=2.0, help="seconds between new files")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (reused)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    ap.add_argument("--dump", type=Path, help="write every sample (JSON) here")
    args = ap.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="everlook-load-") as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
