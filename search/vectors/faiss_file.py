"""The FAISS index file, format 2: FAISS's own file (``faiss.write_index``), then a
trailer: a JSON header (format, model id, dimension, count, kind and its parameters, the
FAISS part's size, the recall measured at its build, the catalog mark it reflects), its
length (8 bytes, little endian) and the magic ``EVLKIDX2``. FAISS reads its part and
ignores what follows, so the file opens with ``faiss.read_index(path, IO_FLAG_MMAP)``,
and one write + rename commits the index and its header together: unlike a sidecar
file, no crash or second writer can pair an index with another's header. Writes go to a
temp file in the same folder, fsynced, renamed over the old one, and the folder is
fsynced. Format-1 files (``EVLKFAIS``, a SHA-256 over the whole payload) are rebuilt.

Why no SHA-256 any more: hashing meant reading the whole file at every open, 2 GB at
1M x 512 (seconds), and a memory-mapped index is never read whole. What still guards:
the trailer parses and names this model and dimension; the file's size equals the
FAISS part plus the trailer (truncation, appended garbage, a torn copy); FAISS parses
its part; ntotal, the dimension and the lists' sizes agree with the header. A bit flipped
inside the vectors themselves goes unseen (it moves one score); the disk's own checks
are the guard there, and the catalog still holds every vector.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss

from search.vectors import IndexInfo, IndexUnusable

MAGIC = b"EVLKIDX2"
OLD_MAGIC = b"EVLKFAIS"
FORMAT = 2
TAIL = 16  # length + magic
KINDS = ("flat", "ivf")


def write(path: Path, write_faiss: Callable[[str], None], meta: dict[str, Any]) -> None:
    """Atomically: FAISS's part (written by write_faiss to the temp path), the trailer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_faiss(tmp)
        with open(tmp, "r+b") as fh:
            meta = {**meta, "format": FORMAT, "faiss_bytes": fh.seek(0, os.SEEK_END)}
            header = json.dumps(meta).encode()
            fh.write(header + len(header).to_bytes(8, "little") + MAGIC)
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


def copy_faiss_part(src_fd: int, size: int, dest: str) -> None:
    """FAISS's part of a file already open (the one a store was read from, even if it
    has been replaced since), for a save that changes only the header."""
    with open(dest, "wb") as out:
        done = 0
        while done < size:
            chunk = os.pread(src_fd, min(8 << 20, size - done), done)
            if not chunk:
                raise OSError("the index file being copied is shorter than its header says")
            out.write(chunk)
            done += len(chunk)


def read_header(path: Path) -> dict[str, Any]:
    """The trailer's JSON header (checked against the file's size)."""
    with open(path, "rb") as fh:
        return _header(fh.fileno(), os.fstat(fh.fileno()).st_size, path)


def _header(fd: int, size: int, path: Path) -> dict[str, Any]:
    if size >= len(OLD_MAGIC) and os.pread(fd, len(OLD_MAGIC), 0) == OLD_MAGIC:
        raise IndexUnusable(f"{path} is in the old format 1: rebuilt in format {FORMAT}")
    tail = os.pread(fd, TAIL, max(0, size - TAIL)) if size >= TAIL else b""
    if len(tail) < TAIL or tail[8:] != MAGIC:
        raise IndexUnusable(f"{path} is not an Everlook FAISS index (or is truncated)")
    n = int.from_bytes(tail[:8], "little")
    if not 0 < n <= min(size - TAIL, 1 << 20):
        raise IndexUnusable(f"{path}: corrupt header length")
    try:
        header = json.loads(os.pread(fd, n, size - TAIL - n))
    except ValueError as exc:
        raise IndexUnusable(f"{path}: corrupt header") from exc
    if not isinstance(header, dict):
        raise IndexUnusable(f"{path}: corrupt header")
    if header.get("faiss_bytes") != size - TAIL - n:
        raise IndexUnusable(f"{path}: its size does not match its header (truncated or torn)")
    return header


def open_mapped(path: Path, expect: IndexInfo) -> tuple[Any, dict[str, Any], int]:
    """The index in the file, memory-mapped, its header, and the file left open (closed
    by the caller): IndexUnusable when it cannot serve expect."""
    if not path.is_file():
        raise IndexUnusable(f"{path} does not exist")
    for _ in range(3):  # read the file we opened, even if it is replaced meanwhile
        fd = os.open(path, os.O_RDONLY)
        try:
            index, header = _load(fd, path, expect)
        except BaseException:
            os.close(fd)
            raise
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return index, header, fd
        os.close(fd)
    raise IndexUnusable(f"{path} kept changing while it was read")


def _load(fd: int, path: Path, expect: IndexInfo) -> tuple[Any, dict[str, Any]]:
    header = _header(fd, os.fstat(fd).st_size, path)
    if header.get("format") != FORMAT or header.get("kind") not in KINDS:
        raise IndexUnusable(f"{path}: unknown format {header.get('format')}")
    if header.get("model_id") != expect.model_id or header.get("dim") != expect.dim:
        raise IndexUnusable(
            f"{path} was built by {header.get('model_id')} (dim {header.get('dim')}), "
            f"not {expect.model_id} (dim {expect.dim})"
        )
    ivf = header["kind"] == "ivf"
    # IVF: the lists stay in the file, mapped (FAISS's OnDiskInvertedLists over it);
    # flat: the vectors are mapped (IO_FLAG_MMAP_IFC), the id map read.
    flags = faiss.IO_FLAG_MMAP if ivf else faiss.IO_FLAG_MMAP_IFC
    try:
        raw: Any = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise IndexUnusable(f"{path}: FAISS could not read it: {exc}") from exc
    index: Any = faiss.downcast_index(raw)
    raw.thisown, index.thisown = False, True  # the typed proxy frees it, not the first
    expected: Any = faiss.IndexIVFFlat if ivf else faiss.IndexIDMap2
    if not isinstance(index, expected) or index.d != expect.dim:
        raise IndexUnusable(f"{path}: holds a {type(index).__name__}, not its header's kind")
    if index.ntotal != header.get("count"):
        raise IndexUnusable(f"{path}: contents disagree with its header")
    if ivf:
        lists: Any = faiss.downcast_InvertedLists(index.invlists)
        sizes = sum(int(lists.list_size(i)) for i in range(index.nlist))
        if sizes != index.ntotal or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexUnusable(f"{path}: its inverted lists disagree with its header")
        index.nprobe = int(header.get("nprobe") or index.nprobe)
        # FAISS would start threads to read ahead the probed lists at every query:
        # ~9 ms more per query here, for pages the query touches anyway.
        if hasattr(lists, "prefetch_nthread"):
            lists.prefetch_nthread = 0
    return index, header
