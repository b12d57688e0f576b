"""Milvus backend (pymilvus): the vectors live in a Milvus collection that any number of
processes, on any number of machines, read and write at once.

One client API serves every deployment: ``uri`` is ``http://host:19530`` for a Milvus
standalone or cluster (or ``milvus-lite server``, which speaks the same gRPC protocol),
or a local ``.db`` file for Milvus Lite in-process.

Names. A store is addressed by an *alias* (``everlook_clip_<model hash>``, chosen by
everlook.wiring from EVERLOOK_MILVUS_COLLECTION), never by its collection: a build
fills a new collection ``<alias>_<random>`` beside the serving one, and ``save`` points
the alias at it and drops the old one, so searches never see a half-built index and
every process follows the switch on its next call. A store made without an alias
(tests, tools) is its own anonymous collection.

Files. ``save(path)`` writes a small JSON file, checksummed and renamed into place: where
the store is and what it holds (model, dim, the catalog mark of search.vectors.catalog_
sync). ``load`` reads it back, or, given the alias, opens the collection without it (a
second machine with a fresh data folder): the vectors themselves are never in a file.

Index kinds follow FAISS's (search.vectors.faiss_store): FLAT (exact) below
``exact_max`` vectors, else IVF_FLAT with 2*sqrt(n) lists and its probes per query tuned
on the collection itself to the recall target, measured and logged at every build.
Milvus trains each sealed segment's lists itself as the collection grows, so an IVF is
not rebuilt as it doubles, only when it crosses the exact/approximate line. The tuned
probe count is a property of the collection, so every process searches with it.

Filters keep exact top-k semantics: with an allow-list every list is probed, and the
ids go to Milvus as an ``id in [...]`` expression (pushed down, in chunks; the result
is the exact best k of each chunk, merged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.vectors import BuildOptions, IndexInfo, IndexUnusable, VectorSource, register

log = logging.getLogger(__name__)

FORMAT = "everlook-milvus/1"
ID, VEC = "id", "vec"
PAGE = 8192  # rows per upsert, query page or id chunk of a filter
TOPK_MAX = 16384  # Milvus refuses a larger limit on one search
# Probes that cover every list whatever a segment's list count (Milvus's largest nprobe;
# FAISS clamps it to the lists there are). Not the collection's own nlist: Milvus trains
# each segment's lists itself, and Milvus Lite builds them with its default of 128
# whatever the collection asked for.
ALL_LISTS = 65536
K, QUERIES = 10, 100  # recall@K measured over this many queries per family
_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


class MilvusUnavailable(RuntimeError):
    """The Milvus server cannot be reached or refused a call; the message says which."""


def client(uri: str, token: str | None = None) -> Any:
    """One MilvusClient per (uri, token) and process: its gRPC channel is thread-safe."""
    key = (uri, token or "")
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            from pymilvus import MilvusClient

            try:
                _CLIENTS[key] = MilvusClient(uri=uri, token=token or "", timeout=30)
            except Exception as exc:
                raise MilvusUnavailable(f"cannot connect to Milvus at {uri}: {exc}") from exc
        return _CLIENTS[key]


def alias_for(prefix: str, space: str, model_id: str) -> str:
    """A collection alias for a space's model: letters, digits and _ only (Milvus's rule)."""
    digest = hashlib.sha1(model_id.encode()).hexdigest()[:12]
    clean = "".join(c if c.isalnum() else "_" for c in f"{prefix}_{space}")
    return f"{clean}_{digest}"


def _ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _in(ids: np.ndarray) -> str:
    return f"{ID} in [{','.join(str(int(i)) for i in ids)}]"


def nlist_for(n: int, options: BuildOptions) -> int:
    if options.nlist:
        return max(1, options.nlist)
    return int(min(65536, max(16, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))))


class MilvusStore:
    """A VectorStore over one Milvus collection (or the alias in front of it)."""

    shared = True  # other processes write it too: readers need not catch it up

    def __init__(
        self, info: IndexInfo, uri: str, name: str, *, token: str | None = None,
        alias: str | None = None, meta: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.info = info
        self.uri, self.token = uri, token
        self.name = name  # the collection this store reads and writes (an alias, or not)
        self.alias = alias  # where save() publishes it, when name is a new collection
        self.client = client(uri, token)
        props = self._properties()
        self.meta: dict[str, Any] = {**props, **(meta or {})}
        self.dirty = False
        self._asked_at = -1e9  # when rebuild_reason last counted
        self._counted = 0  # what it counted then
        self._since = 0  # rows this process added (+) or removed (-) since

    # ---- the collection ----------------------------------------------------------
    def follow(self) -> None:
        """Take up the kind and probes of the collection the alias serves now (another
        process may have published a rebuild); the catalog mark stays this process's."""
        mark = self.meta.get("mark")
        self.meta = self._properties()
        if mark is not None:
            self.meta["mark"] = mark

    def _properties(self) -> dict[str, Any]:
        """What the collection says of itself (set at its build): kind, lists, probes."""
        desc = self._call("describe", self.client.describe_collection, self.name)
        raw = desc.get("properties") or {}
        try:
            return json.loads(raw.get("everlook", "{}"))
        except ValueError:
            return {}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            raise MilvusUnavailable(
                f"Milvus at {self.uri} refused {what} on {self.name!r}: {exc.message}"
            ) from exc

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "flat"))

    @property
    def nlist(self) -> int:
        return int(self.meta.get("nlist") or 1)

    # ---- changes -------------------------------------------------------------------
    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        self._write(ids, vectors, "upsert")

    def _write(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, how: str) -> None:
        """upsert: replace, never duplicate an id. insert: only into a collection being
        built, ids known new (an upsert is a delete and an insert: a bulk load of upserts
        leaves a delete record per row for every search to apply)."""
        arr = _ids(ids)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(arr), -1)
        if vecs.shape[1] != self.info.dim:
            raise ValueError(f"vector dimension {vecs.shape[1]} != index dimension {self.info.dim}")
        if not len(arr):
            return
        # The last vector of an id repeated in one batch wins, as it would one by one.
        last = len(arr) - 1 - np.unique(arr[::-1], return_index=True)[1]
        arr, vecs = arr[last], vecs[last]
        self._since += len(arr)  # an upsert of a present id overcounts: only an early recount
        call = self.client.upsert if how == "upsert" else self.client.insert
        for s in range(0, len(arr), PAGE):
            rows = [{ID: int(i), VEC: v} for i, v in zip(arr[s : s + PAGE], vecs[s : s + PAGE],
                                                        strict=True)]  # fmt: skip
            self._call(how, call, self.name, rows)
        self._changed()

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        arr = np.unique(_ids(ids))
        gone = 0
        for s in range(0, len(arr), PAGE):
            chunk = arr[s : s + PAGE]
            # Milvus's delete answers with the ids it was given, present or not: count first.
            found = self._call("query", self.client.query, self.name, filter=_in(chunk),
                               output_fields=[ID])  # fmt: skip
            present = [r[ID] for r in found]
            if present:
                self._call("delete", self.client.delete, self.name, ids=present)
                gone += len(present)
        self._since -= gone
        if gone:
            self._changed()
        return gone

    def _changed(self) -> None:
        self.dirty = True
        self.meta.pop("mark", None)  # the catalog mark saved no longer describes it

    # ---- reads ---------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, allow: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1, self.info.dim)
        allow_ids = None if allow is None else np.unique(_ids(allow))
        if allow_ids is not None and not len(allow_ids):
            return [[] for _ in range(len(q))]
        k = min(k, TOPK_MAX)
        if allow_ids is not None:
            k = min(k, len(allow_ids))
            rows: list[list[tuple[int, float]]] = [[] for _ in range(len(q))]
            for s in range(0, len(allow_ids), PAGE):  # every list probed: exact top k
                part = self._search(q, k, ALL_LISTS, _in(allow_ids[s : s + PAGE]))
                rows = [sorted(a + b, key=lambda p: -p[1])[:k] for a, b in
                        zip(rows, part, strict=True)]  # fmt: skip
            return rows
        if k <= 0:
            return [[] for _ in range(len(q))]
        rows = self._search(q, k, self.nprobe, "")
        if self.kind == "ivf" and min(len(r) for r in rows) < k:
            # The probed lists held fewer than k (or the collection does): probe them all,
            # never answer short. No count asked first: one round trip per query.
            rows = self._search(q, k, ALL_LISTS, "")
        return rows

    @property
    def nprobe(self) -> int:
        return int(self.meta.get("nprobe") or ALL_LISTS)

    def _search(
        self, q: np.ndarray, k: int, nprobe: int, expr: str
    ) -> list[list[tuple[int, float]]]:
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.kind == "ivf":
            params["params"] = {"nprobe": max(1, nprobe)}
        got = self._call("search", self.client.search, self.name, data=list(q), limit=k,
                         filter=expr, search_params=params, output_fields=[ID],
                         anns_field=VEC)  # fmt: skip
        return [[(int(h["id"]), float(h["distance"])) for h in row] for row in got]

    def count(self) -> int:
        got = self._call("count", self.client.query, self.name, filter="",
                         output_fields=["count(*)"])  # fmt: skip
        return int(got[0]["count(*)"]) if got else 0

    def ids(self) -> np.ndarray:
        return np.concatenate([np.zeros(0, dtype=np.int64), *self.id_pages()])

    def id_pages(self, lo: int | None = None, hi: int | None = None) -> Iterator[np.ndarray]:
        """The ids (with lo <= id <= hi when given), a page at a time: never all at once."""
        terms = [f"{ID} >= {int(lo)}" if lo is not None else f"{ID} >= {-(2**63)}"]
        if hi is not None:
            terms.append(f"{ID} <= {int(hi)}")
        it = self._call("query", self.client.query_iterator, self.name, batch_size=PAGE,
                        filter=" and ".join(terms), output_fields=[ID])  # fmt: skip
        try:
            while True:
                page = it.next()
                if not page:
                    return
                yield np.array([r[ID] for r in page], dtype=np.int64)
        finally:
            it.close()

    def describe(self) -> dict[str, Any]:
        keys = ("kind", "nlist", "nprobe", "recall_at_10", "recall", "trained_on")
        return {**{k: self.meta[k] for k in keys if k in self.meta}, "kind": self.kind,
                "vectors": self.count(), "milvus": self.uri, "collection": self.name,
                "alias": self.alias}  # fmt: skip

    def rebuild_reason(self, options: BuildOptions, recheck: bool = False) -> str | None:
        """Asked after every add. Counting the collection is a round trip, so it is done
        at most every 30 s (for what other processes wrote), or at once when this
        process's own adds and removals since the last count may have crossed a
        threshold, or when recheck (a rebuild confirming under its lock). The kind another
        process may have published is taken up first."""
        now = time.monotonic()
        top, low, was = max(options.exact_max, 1), options.exact_max // 2, self._counted
        guess = was + self._since  # crossed since the last count (not: still past it)
        crossing = (self.kind == "flat" and was < top <= guess) or (
            self.kind == "ivf" and guess < low <= was
        )
        if now - self._asked_at < 30 and not recheck and not crossing:
            return None
        self._asked_at = now
        self.follow()
        before = self._since
        n = self._counted = self.count()
        self._since -= before  # what was written during the count is left to the next
        if self.kind == "flat" and n >= top:
            return f"{n} vectors reached EVERLOOK_INDEX_EXACT_MAX ({options.exact_max})"
        if self.kind == "ivf" and n < low:
            return f"{n} vectors: back to exact search below {low}"
        return None

    # ---- publishing and files ------------------------------------------------------
    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        if self.alias is not None and self.name != self.alias:
            self._publish()
        self.meta.update(extra or {})
        body = {"format": FORMAT, "uri": self.uri, "name": self.name,
                "model_id": self.info.model_id, "dim": self.info.dim,
                "meta": self.meta}  # fmt: skip
        text = json.dumps(body, sort_keys=True, default=str)
        doc = json.dumps({"body": body, "sha256": hashlib.sha256(text.encode()).hexdigest()},
                         sort_keys=True, default=str)  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(doc)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.dirty = False

    def _publish(self) -> None:
        """Point the alias at this store's collection (a build) and drop the one it
        replaced; from then on this store, like every other process, goes by the alias."""
        assert self.alias is not None
        before = _aliased(self.client, self.alias)
        if before is None:
            self._call("alias", self.client.create_alias, self.name, self.alias)
        else:
            self._call("alias", self.client.alter_alias, self.name, self.alias)
            if before != self.name:
                self._call("drop", self.client.drop_collection, before)
        log.info("milvus: %s now serves %s", self.alias, self.name)
        self.name = self.alias


def _aliased(cl: Any, alias: str) -> str | None:
    """The collection an alias points at, or None (asked without provoking an error)."""
    for coll in cl.list_collections():
        if alias in (cl.list_aliases(collection_name=coll).get("aliases") or []):
            return str(coll)
    return None


def _new_collection(cl: Any, info: IndexInfo, name: str, props: dict[str, Any]) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.INT64, is_primary=True)
    schema.add_field(VEC, DataType.FLOAT_VECTOR, dim=info.dim)
    index = cl.prepare_index_params()
    if props["kind"] == "ivf":
        index.add_index(field_name=VEC, index_type="IVF_FLAT", metric_type="IP",
                        params={"nlist": int(props["nlist"])})  # fmt: skip
    else:
        index.add_index(field_name=VEC, index_type="FLAT", metric_type="IP")
    everlook = {**props, "model_id": info.model_id, "dim": info.dim}
    # Strong consistency: a search sees every write acknowledged before it, as FAISS does.
    cl.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                         properties={"everlook": json.dumps(everlook)})  # fmt: skip


def _fresh_name(alias: str | None) -> str:
    return f"{alias or 'everlook'}_{uuid.uuid4().hex[:12]}"


def create_milvus(
    info: IndexInfo, uri: str = "", token: str | None = None, alias: str | None = None,
    options: BuildOptions | None = None, **_: Any,
) -> MilvusStore:  # fmt: skip
    """An empty exact store in a new collection (published under alias at its save)."""
    if not uri:
        raise ValueError("the milvus vector backend needs a uri (EVERLOOK_MILVUS_URI)")
    name = _fresh_name(alias)
    exact_max = (options or BuildOptions()).exact_max
    _new_collection(client(uri, token), info, name, {"kind": "flat", "exact_max": exact_max})
    return MilvusStore(info, uri, name, token=token, alias=alias)


def build_milvus(
    info: IndexInfo, source: VectorSource, options: BuildOptions, uri: str = "",
    token: str | None = None, alias: str | None = None, **_: Any,
) -> MilvusStore:  # fmt: skip
    """A new collection of the kind the source's size calls for, filled from it; the
    alias, if none serves yet, is taken at once (a first start), else at save."""
    if not uri:
        raise ValueError("the milvus vector backend needs a uri (EVERLOOK_MILVUS_URI)")
    t0 = time.perf_counter()
    cl = client(uri, token)
    n = source.count()
    props: dict[str, Any] = {"kind": "flat", "exact_max": options.exact_max}
    if n >= max(options.exact_max, 1):
        props.update(kind="ivf", nlist=nlist_for(n, options), recall_target=options.recall)
    name = _fresh_name(alias)
    first = alias is not None and _aliased(cl, alias) is None  # nothing serves yet
    _new_collection(cl, info, name, props)
    store = MilvusStore(info, uri, name, token=token, alias=alias)
    for ids, vecs in source.batches():  # each id once: a catalog's (item, model) is unique
        store._write(ids, vecs, "insert")
    # Sealed segments get their index now, rather than growing ones searched by brute
    # force until Milvus seals them on its own.
    store._call("flush", cl.flush, name)
    store.meta.update(trained_on=store.count(), built_at=_now_iso())
    if store.kind == "ivf":
        _tune(store, source, options)
    else:
        store.meta["recall_at_10"] = 1.0
    store.meta["build_seconds"] = round(time.perf_counter() - t0, 2)
    _set_properties(store)
    if first:
        # A first start: publish at once, unless another process (every one starts
        # together in a new deployment) published its build meanwhile; then use that
        # one and drop ours, never serve a private copy no one else writes to.
        try:
            if _aliased(cl, alias) is not None:  # type: ignore[arg-type]
                raise MilvusUnavailable("published meanwhile")
            store._publish()
        except MilvusUnavailable:
            cl.drop_collection(name)
            return MilvusStore(info, uri, alias, token=token, alias=alias)  # type: ignore[arg-type]
    return store


def _set_properties(store: MilvusStore) -> None:
    keep = {k: v for k, v in store.meta.items() if k != "mark"}
    everlook = {**keep, "model_id": store.info.model_id, "dim": store.info.dim}
    store._call("alter", store.client.alter_collection_properties, store.name,
                properties={"everlook": json.dumps(everlook, default=str)})  # fmt: skip


def _tune(store: MilvusStore, source: VectorSource, options: BuildOptions) -> None:
    """The fewest probes reaching the recall target, measured against every list probed,
    on two families of queries (the library's own vectors, their own id left out, and
    random directions), as search.vectors.ann does for FAISS."""
    rng = np.random.default_rng(options.seed + 1)
    own, lib = source.sample(QUERIES, options.seed)
    rand = rng.standard_normal((QUERIES, store.info.dim)).astype(np.float32)
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    families = {"library": (lib, own), "unrelated": (rand, None)}

    def top(q: np.ndarray, drop: np.ndarray | None, nprobe: int) -> list[set[int]]:
        rows = store._search(q, K + 1, nprobe, "")
        if drop is None:
            return [{i for i, _ in r[:K]} for r in rows]
        return [set([i for i, _ in r if i != d][:K]) for r, d in zip(rows, drop, strict=True)]

    truth = {f: top(q, d, ALL_LISTS) for f, (q, d) in families.items()}
    cache: dict[int, dict[str, float]] = {}

    def recalls(nprobe: int) -> dict[str, float]:
        if nprobe not in cache:
            out = {}
            for f, (q, d) in families.items():
                got = top(q, d, nprobe)
                hits = sum(len(a & b) for a, b in zip(got, truth[f], strict=True))
                out[f] = round(hits / max(1, sum(len(b) for b in truth[f])), 4)
            cache[nprobe] = out
        return cache[nprobe]

    nprobe = 1
    while nprobe < ALL_LISTS and min(recalls(nprobe).values()) < options.recall:
        nprobe *= 2
    got = recalls(nprobe)
    store.meta.update(nprobe=nprobe, recall=got, recall_at_10=min(got.values()))
    log.info("milvus index %s: IVF_FLAT over %d vectors, %d lists, %d probed per query; "
             "recall@10 %.3f (library %.3f, unrelated %.3f; target %.2f)", store.name,
             store.meta["trained_on"], store.nlist, nprobe, min(got.values()),
             got["library"], got["unrelated"], options.recall)  # fmt: skip


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def read_file(path: Path) -> dict[str, Any]:
    """The body of a saved store's file; IndexUnusable when missing, damaged or foreign."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        body, digest = doc["body"], doc["sha256"]
    except FileNotFoundError as exc:
        raise IndexUnusable(f"no index file at {path}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexUnusable(f"{path} is not a Milvus index file: {exc}") from exc
    text = json.dumps(body, sort_keys=True, default=str)
    if hashlib.sha256(text.encode()).hexdigest() != digest or body.get("format") != FORMAT:
        raise IndexUnusable(f"{path} is damaged (checksum or format)")
    return dict(body)


def load_milvus(
    path: Path, expect: IndexInfo, uri: str = "", token: str | None = None,
    alias: str | None = None, **_: Any,
) -> MilvusStore:  # fmt: skip
    """The store a file describes; or, with an alias, the collection behind it even
    without a file (another machine published it). IndexUnusable: build again."""
    try:
        body = read_file(path)
        meta = dict(body.get("meta") or {})
        name = str(body["name"])
        if uri and uri != body["uri"]:
            meta = {}  # its catalog mark is another server's: reconcile, never trust it
        uri = uri or str(body["uri"])
        if alias is not None and name != alias:
            raise IndexUnusable(f"{path} names {name!r}, not the configured {alias!r}")
    except IndexUnusable:
        if alias is None or not uri:
            raise
        meta, name = {}, alias  # no file here: what the alias serves, with no mark
    cl = client(uri, token)
    if not cl.has_collection(name):
        raise IndexUnusable(f"Milvus at {uri} has no collection {name!r}")
    store = MilvusStore(expect, uri, name, token=token, alias=alias)
    made_by = (store.meta.get("model_id"), store.meta.get("dim"))
    if made_by != (expect.model_id, expect.dim):
        raise IndexUnusable(
            f"{name} holds vectors of {made_by[0]} (dim {made_by[1]}), "
            f"not {expect.model_id} (dim {expect.dim})"
        )
    store.meta.update({k: v for k, v in meta.items() if k == "mark"})
    return store


def describe_milvus(path: Path) -> dict[str, Any]:
    body = read_file(path)
    meta = body.get("meta") or {}
    keys = ("kind", "nlist", "nprobe", "recall_at_10", "recall", "trained_on", "built_at")
    return {"milvus": body.get("uri"), "collection": body.get("name"),
            "model_id": body.get("model_id"), "dim": body.get("dim"),
            **{k: meta[k] for k in keys if k in meta}}  # fmt: skip


register("milvus", create_milvus, load_milvus, describe_milvus, build_milvus)
