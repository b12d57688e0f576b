"""Where CLIP's exported ONNX towers live, and how they are written so that no reader
ever sees half a file.

    <models cache>/onnx/<model id, made filesystem-safe>/ort-<onnxruntime version>/
        text.onnx  text.onnx.<id>.data  text.json  image.onnx  image.onnx.<id>.data
        image.json  [text.int8.onnx  text.int8.json  image.int8.onnx  image.int8.json]

Each ``.json`` sidecar is written after its files and says what they are: the model id,
the weights they came from, the exporter and opset, when, the cosines measured against
open_clip's own reference and whether they passed. Files count only when their sidecar
does and their sizes are the ones recorded, so a half-written, truncated or stale file is
exported again instead of crashing a query. Every file is written to a temporary name in
the same folder, fsynced and renamed; one exporter per folder runs at a time (a lock
file), so a second process waits and then finds the work done. Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def runtime_version() -> str | None:
    """onnxruntime's version, without importing it (~0.1 s): from the dist-info folder
    beside the package (importlib.metadata alone costs ~0.03 s of a cold query)."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(next(iter(spec.submodule_search_locations))).parent
    for info in sorted(site.glob("onnxruntime*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        if name.lower().replace("-", "_").startswith("onnxruntime") and version:
            return version
    from importlib import metadata  # another layout (a system package, an egg)

    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return "unknown"


def cache_folder(models_cache: Path, model_id: str, version: str | None = None) -> Path:
    """Where one model's exported towers live for one onnxruntime version. The model id
    keeps its readable characters and gains a short hash, so two ids that differ only in
    characters a file system refuses never share a folder."""
    readable = re.sub(r"[^A-Za-z0-9._+-]+", "_", model_id).strip("._")[:120]
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:10]
    return models_cache / "onnx" / f"{readable}-{digest}" / f"ort-{version or runtime_version()}"


def weights_stamp(path: Path | None) -> dict[str, Any] | None:
    """What identifies a checkpoint file cheaply (a query must not hash 600 MB)."""
    if path is None or not path.is_file():
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def temp_beside(path: Path) -> Path:
    """A temp name in path's folder (a rename within one file system is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def publish(tmp: Path, path: Path) -> None:
    """A finished temp file moved into place, durably: fsync, rename, fsync the folder
    (the rename itself must survive a power cut; Windows cannot open folders)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = temp_beside(path)
    try:
        tmp.write_bytes(data)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_root(prefix: str) -> Iterator[None]:
    """Drop one warning a library logs to the root logger (users would see it on stderr
    every time) while a block runs."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One exporter per folder across processes (a second waits, then finds the files).
    Files are replaced atomically anyway; the lock only saves doing the work twice."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: atomic renames alone keep the files whole
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class Artifact:
    """One tower of one model in one precision: its .onnx file and its .json sidecar."""

    folder: Path
    tower: str
    precision: str = "fp32"

    @property
    def path(self) -> Path:
        suffix = "" if self.precision == "fp32" else f".{self.precision}"
        return self.folder / f"{self.tower}{suffix}.onnx"

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def valid(self, weights: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The sidecar when it still describes this model's weights and, for a passing
        export, files of the recorded sizes; else None (export again)."""
        info = self.read()
        if info is None or info.get("status") not in ("ok", "fallback"):
            return None
        if weights is not None and info.get("weights") not in (None, weights):
            return None  # the checkpoint changed under the same model id
        if info["status"] == "ok":
            files = [(self.path, info.get("size"))]
            if info.get("data"):
                files.append((self.folder / str(info["data"]), info.get("data_size")))
            try:
                if any(path.stat().st_size != size for path, size in files):
                    return None
            except OSError:
                return None
        return info

    def commit(
        self, tmp: Path | None, info: dict[str, Any], data: Path | None = None
    ) -> dict[str, Any]:
        """Move a finished export into place, then its sidecar (which makes it count).
        ``data``: its weights file (external data), named uniquely per export, so the
        graph file switches atomically from the old weights to the new ones."""
        info = {**info, "tower": self.tower, "precision": self.precision}
        info.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        info.setdefault("export_id", uuid.uuid4().hex)
        if data is not None:
            info.update(data=data.name, data_size=data.stat().st_size)
            publish(data, self.folder / data.name)
        if tmp is not None:
            info.update(file=self.path.name, size=tmp.stat().st_size)
            publish(tmp, self.path)
        write_atomic(self.sidecar, json.dumps(info, indent=2, sort_keys=True).encode())
        for old in self.folder.glob(f"{self.path.name}.*.data"):
            if old.name != info.get("data"):
                old.unlink(missing_ok=True)  # an earlier export's weights (mapped ones stay)
        return info

    def forget(self) -> None:
        self.sidecar.unlink(missing_ok=True)

    def temp(self) -> Path:
        return temp_beside(self.path)
