"""FAISS backend: exact inner product search over an id map.

File format: ``EVLKFAIS`` magic, a 4-byte big-endian header length, a JSON header
(model id, dimension, count, SHA-256 of the payload), then FAISS's own serialisation.
Writes go to a temp file that is fsynced and renamed over the old one, so a crash
leaves either the old index or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from search.vectors import IndexInfo, IndexUnusable, register

MAGIC = b"EVLKFAIS"
FORMAT = 1


def _ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


class FaissStore:
    def __init__(self, info: IndexInfo, index: Any = None) -> None:
        self.info = info
        # IndexIDMap2 keeps id -> slot so vectors can be removed and reconstructed.
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(info.dim))

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        arr_ids = _ids(ids)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(arr_ids), -1)
        if vecs.shape[1] != self.info.dim:
            raise ValueError(f"vector dimension {vecs.shape[1]} != index dimension {self.info.dim}")
        if len(arr_ids) == 0:
            return
        self.remove(arr_ids)  # replace, never duplicate an id
        self.index.add_with_ids(vecs, arr_ids)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        arr_ids = _ids(ids)
        if len(arr_ids) == 0 or self.index.ntotal == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(arr_ids)))

    def search(
        self, query: np.ndarray, k: int, allow: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1, self.info.dim)
        n = self.index.ntotal
        if allow is not None:
            allow_ids = _ids(allow)
            n = min(n, len(allow_ids))
        k = min(k, n)
        if k <= 0:
            return [[] for _ in range(len(q))]
        params = None
        if allow is not None:
            # faiss's SWIG constructor takes keyword fields; its stubs don't say so.
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allow_ids))  # type: ignore[call-arg]
        scores, labels = self.index.search(q, k, params=params)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_s, strict=True) if i != -1]
            for row_ids, row_s in zip(labels, scores, strict=True)
        ]

    def count(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        if self.index.ntotal == 0:
            return np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def reconstruct(self, item_id: int) -> np.ndarray:
        return np.asarray(self.index.reconstruct(int(item_id)), dtype=np.float32)

    def save(self, path: Path) -> None:
        payload = faiss.serialize_index(self.index).tobytes()
        header = json.dumps(
            {
                "format": FORMAT,
                "model_id": self.info.model_id,
                "dim": self.info.dim,
                "count": self.count(),
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        ).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + len(header).to_bytes(4, "big") + header + payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header and the offset where FAISS's payload starts."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
            raise IndexUnusable(f"{path} is not an Everlook FAISS index")
        n = int.from_bytes(head[len(MAGIC) :], "big")
        try:
            header: dict[str, Any] = json.loads(fh.read(n))
        except ValueError as exc:
            raise IndexUnusable(f"{path}: corrupt header") from exc
    if not isinstance(header, dict):
        raise IndexUnusable(f"{path}: corrupt header")
    return header, len(MAGIC) + 4 + n


def load_faiss(path: Path, expect: IndexInfo) -> FaissStore:
    if not path.is_file():
        raise IndexUnusable(f"{path} does not exist")
    header, offset = read_header(path)
    if header.get("format") != FORMAT:
        raise IndexUnusable(f"{path}: unknown format {header.get('format')}")
    if header.get("model_id") != expect.model_id or header.get("dim") != expect.dim:
        raise IndexUnusable(
            f"{path} was built by {header.get('model_id')} (dim {header.get('dim')}), "
            f"not {expect.model_id} (dim {expect.dim})"
        )
    payload = path.read_bytes()[offset:]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise IndexUnusable(f"{path}: checksum mismatch (corrupt or truncated)")
    try:
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
    except RuntimeError as exc:
        raise IndexUnusable(f"{path}: FAISS could not read it: {exc}") from exc
    if index.d != expect.dim or index.ntotal != header.get("count"):
        raise IndexUnusable(f"{path}: contents disagree with its header")
    return FaissStore(expect, index)


def _create(info: IndexInfo, **_: Any) -> FaissStore:
    return FaissStore(info)


def describe_faiss(path: Path) -> dict[str, Any]:
    header, _ = read_header(path)
    return {
        "bytes": path.stat().st_size, "vectors": header.get("count"),
        "model_id": header.get("model_id"), "dim": header.get("dim"),
    }  # fmt: skip


register("faiss", _create, load_faiss, describe_faiss)
