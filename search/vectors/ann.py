"""The approximate FAISS index: an inverted file (IVF) with flat codes, trained on the
library's own vectors, its probes per query tuned to a measured recall@10.

Why IVF and not HNSW (measured at 1M x 512 on this project's 2-core box): an IVF over
2048 lists trains on an 80k sample in ~14 s and files the million vectors in ~13 s; an
HNSW graph (M=32) took 18.5 s for 100k vectors alone, i.e. many minutes at a million,
cannot remove vectors, and its graph must be read into memory, where an IVF file is
memory-mapped and a query touches only the lists it probes. Flat codes keep exact
scores for what is found (the engine shows and compares scores); SQ8 would scan 4x
fewer bytes but return rounded scores.

The heavy algebra runs in NumPy: FAISS's own k-means and list assignment reach about
10-15 GFLOP/s in this wheel against ~60 for NumPy's BLAS on the same cores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np

from search.vectors import BuildOptions, VectorSource

log = logging.getLogger(__name__)

K = 10  # recall@K is what is tuned and reported
QUERIES = 100  # per query family, for tuning: recall within about +-0.01
SAMPLE_PER_LIST = 40  # training points per list (FAISS warns below 39)
NITER = 10


def nlist_for(n: int, options: BuildOptions) -> int:
    """Lists for n vectors: the setting, else 2*sqrt(n) as a power of two. Measured at
    1M (random-direction queries, recall@10 ~0.95): 1024 lists 13 ms/query, 2048 lists
    11.5 ms, 4096 lists 27 ms and 3x the build time; FAISS's usual 4-16*sqrt(n) pays
    off on many cores, not on two."""
    if options.nlist:
        return max(1, min(options.nlist, n))
    target = 2 * math.sqrt(max(n, 1))
    return int(min(65536, max(16, 2 ** round(math.log2(target)))))


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray, batch: int = 16384) -> np.ndarray:
    """The nearest centroid (inner product) of each row."""
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), batch):
        out[s : s + batch] = np.argmax(x[s : s + batch] @ centroids.T, axis=1)
    return out


def train(x: np.ndarray, nlist: int, seed: int = 0, niter: int = NITER) -> np.ndarray:
    """Spherical k-means: unit centroids, so inner-product assignment is by angle."""
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), nlist, replace=False)].copy()
    for _ in range(niter):
        labels = assign(x, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        empty = np.bincount(labels, minlength=nlist) == 0
        # An empty list would never be probed usefully: reseed it on a random point.
        sums[empty] = x[rng.choice(len(x), int(empty.sum()), replace=False)]
        centroids = _unit(sums)
    return centroids


def empty_ivf(centroids: np.ndarray) -> Any:
    nlist, dim = centroids.shape
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    # FAISS's Python wrapper keeps the quantizer alive as long as the IVF.
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    return ivf


def centroids_of(ivf: Any) -> np.ndarray:
    return np.asarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)


def add_assigned(ivf: Any, ids: np.ndarray, vecs: np.ndarray, centroids: np.ndarray) -> None:
    """File vectors in their lists, assigned here (see the module note on speed)."""
    if not len(ids):
        return
    x = np.ascontiguousarray(vecs, dtype=np.float32)
    xids = np.ascontiguousarray(ids, dtype=np.int64)
    lists = np.ascontiguousarray(assign(x, centroids), dtype=np.int64)
    ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(xids), faiss.swig_ptr(lists))


def file_all(ivf: Any, source: VectorSource, centroids: np.ndarray) -> None:
    """Every vector of source into its list, in two passes: the first assigns them all
    and sizes each list exactly, the second files them. Lists grown batch by batch
    double their capacity as they go: a 2 GB index at 1M peaked at 3.2 GB that way (and
    at 3.9 GB with lists sized from the sample's shares, which miss by +-15 %)."""
    parts_ids, parts_lists = [], []
    for ids, vecs in source.batches():
        parts_ids.append(np.asarray(ids, dtype=np.int64))
        parts_lists.append(assign(vecs, centroids))
    if not parts_ids:
        return
    known_ids, known_lists = np.concatenate(parts_ids), np.concatenate(parts_lists)
    order = np.argsort(known_ids, kind="stable")
    known_ids, known_lists = known_ids[order], known_lists[order]
    lists: Any = faiss.downcast_InvertedLists(ivf.invlists)
    for lno, size in enumerate(np.bincount(known_lists, minlength=ivf.nlist)):
        lists.resize(lno, int(size))  # the capacity stays when the size goes back to 0
        lists.resize(lno, 0)
    for ids, vecs in source.batches():
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(known_ids, ids), len(known_ids) - 1)
        seen = known_ids[at] == ids
        lnos = np.where(seen, known_lists[at], 0)
        if not seen.all():  # written between the passes: assigned now
            lnos[~seen] = assign(vecs[~seen], centroids)
        x = np.ascontiguousarray(vecs, dtype=np.float32)
        lnos = np.ascontiguousarray(lnos, dtype=np.int64)
        ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lnos))


def list_views(ivf: Any) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(list number, ids, vectors) of each non-empty list: views, no copies (valid while
    the index lives; memory-mapped lists are read only as they are touched)."""
    invlists, dim = ivf.invlists, ivf.d
    for lno in range(ivf.nlist):
        size = invlists.list_size(lno)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lno), size)
            codes = faiss.rev_swig_ptr(invlists.get_codes(lno), size * dim * 4)
            yield lno, ids, codes.view(np.float32).reshape(size, dim)


def exact_top(ivf: Any, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k ids of each query over every vector in the lists (BLAS, chunks
    of ~64k vectors), -1 where there are fewer than k."""
    nq = len(queries)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    parts_i: list[np.ndarray] = []
    parts_x: list[np.ndarray] = []

    def flush() -> None:
        nonlocal best_s, best_i
        if not parts_i:
            return
        ids, x = np.concatenate(parts_i), np.concatenate(parts_x)
        parts_i.clear()
        parts_x.clear()
        scores = queries @ x.T
        m = min(k, len(ids))
        top = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
        cand_i = np.concatenate([best_i, ids[top]], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)

    held = 0
    for _, ids, x in list_views(ivf):
        parts_i.append(ids)
        parts_x.append(x)
        held += len(ids)
        if held >= 65536:
            flush()
            held = 0
    flush()
    return best_i


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits, total = 0, 0
    for f, t in zip(found, truth, strict=True):
        want = {int(i) for i in t if i >= 0}
        hits += len(want & {int(i) for i in f if i >= 0})
        total += len(want)
    return hits / total if total else 1.0


class Tuner:
    """Recall@K of an IVF at a given probe count, for two families of queries: vectors of
    the library itself (their own id left out: held out), and random unit directions,
    i.e. queries unlike anything in the library. Text queries sit between the two (CLIP
    puts text and pictures apart), and the random-weight text tower of the benches is
    the second kind, so the index is tuned to reach the target on both."""

    def __init__(self, ivf: Any, ids: np.ndarray, vecs: np.ndarray, seed: int) -> None:
        self.ivf = ivf
        rng = np.random.default_rng(seed + 1)
        pick = rng.choice(len(ids), min(QUERIES, len(ids)), replace=False)
        self.own_ids = ids[pick]
        random = _unit(rng.standard_normal((QUERIES, ivf.d)).astype(np.float32))
        self.families = {"library": vecs[pick], "unrelated": random}
        raw = exact_top(ivf, self.families["library"], K + 1)
        self.truth = {
            "library": self._drop_own(raw),
            "unrelated": exact_top(ivf, random, K),
        }
        self.cache: dict[int, dict[str, float]] = {}

    def _drop_own(self, found: np.ndarray) -> np.ndarray:
        return np.array([[i for i in row if i != own][:K] for row, own in
                         zip(found, self.own_ids, strict=True)])  # fmt: skip

    def recalls(self, nprobe: int) -> dict[str, float]:
        if nprobe not in self.cache:
            params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
            out = {}
            for name, q in self.families.items():
                extra = 1 if name == "library" else 0
                _, found = self.ivf.search(q, K + extra, params=params)
                found = self._drop_own(found) if extra else found
                out[name] = round(_recall(found, self.truth[name]), 4)
            self.cache[nprobe] = out
        return self.cache[nprobe]

    def worst(self, nprobe: int) -> float:
        return min(self.recalls(nprobe).values())

    def tune(self, target: float) -> int:
        """The fewest probes reaching target (recall grows with the lists probed):
        doubling, then bisection down to an eighth of the bracket."""
        nlist = self.ivf.nlist
        hi = 1
        while hi < nlist and self.worst(hi) < target:
            hi *= 2
        hi = min(hi, nlist)
        lo = hi // 2
        while hi - lo > max(1, hi // 8):
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.worst(mid) >= target else (mid, hi)
        return hi


def build_ivf(dim: int, source: VectorSource, options: BuildOptions) -> tuple[Any, dict[str, Any]]:
    """Train on a sample, file every vector, tune the probes; the index and its metadata."""
    t0 = time.perf_counter()
    n = source.count()
    nlist = nlist_for(n, options)
    ids, sample = source.sample(max(SAMPLE_PER_LIST * nlist, QUERIES), options.seed)
    nlist = min(nlist, len(ids))
    centroids = train(_unit(sample), nlist, options.seed)
    ivf = empty_ivf(centroids)
    file_all(ivf, source, centroids)
    trained = time.perf_counter() - t0
    tuner = Tuner(ivf, ids, sample, options.seed)
    ivf.nprobe = tuner.tune(options.recall)
    recalls = tuner.recalls(ivf.nprobe)
    meta = {
        "kind": "ivf", "codes": "flat", "nlist": nlist, "nprobe": int(ivf.nprobe),
        "trained_on": int(ivf.ntotal), "recall_target": options.recall,
        "recall_at_10": min(recalls.values()), "recall": recalls,
        "build_seconds": round(time.perf_counter() - t0, 2), "built_at": now_iso(),
    }  # fmt: skip
    log.info(
        "vector index: IVF over %d vectors, %d lists, %d probed per query; recall@10 %.3f "
        "(library pictures %.3f, unrelated queries %.3f; target %.2f); built in %.1f s "
        "(%.1f s training and filing)", ivf.ntotal, nlist, ivf.nprobe,
        meta["recall_at_10"], recalls["library"], recalls["unrelated"], options.recall,
        meta["build_seconds"], trained,
    )  # fmt: skip
    return ivf, meta


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
