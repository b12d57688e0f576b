"""Files by catalog id only: an item's path is served if it still lies inside a
configured library root (after resolving symlinks), and thumbnails are derived data,
made once per (content, size) and rebuilt whenever the cached file is missing."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from api.errors import ApiError
from indexer.audio import audio_thumbnail
from indexer.media import Limits, MediaError, decode_image, read_file

SIZES = [256, 512, 1024]


def _within(real: str, roots: Sequence[str]) -> bool:
    for root in roots:
        try:
            if os.path.commonpath([real, root]) == root:
                return True
        except ValueError:  # mixed absolute/relative: never inside
            continue
    return False


def inside(path: str, roots: Sequence[str]) -> bool:
    return _within(os.path.realpath(path), roots)


def _opened_path(fd: int, path: str) -> str:
    """Where the file behind fd really is. On Linux the kernel says, for the file
    actually opened; elsewhere the path is resolved again (weaker: a race remains)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def open_servable(paths: Sequence[str], roots: Sequence[str]) -> BinaryIO:
    """The first of an item's files that lies inside a library root, opened. The check
    is made on the opened file, so a symlink swapped in between a check and an open
    cannot send a file from outside the roots; callers read only from this handle."""
    if not roots:
        raise ApiError(403, "no library folders are configured, so no files are served "
                       "(give folders to `everlook serve` or set EVERLOOK_LIBRARY)")  # fmt: skip
    for p in paths:
        try:
            # O_NONBLOCK: a FIFO put in a file's place must not hang the request.
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode) and _within(_opened_path(fd, p), roots):
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise ApiError(404, "none of this item's files is inside a library folder any more")


def fd_path(f: BinaryIO) -> str:
    """A path that opens exactly this already-open file (Linux's /proc magic link)."""
    return f"/proc/self/fd/{f.fileno()}"


class Thumbnails:
    """WebP thumbnails on disk, keyed by content hash and size: a moved file keeps its
    thumbnails, a changed file (a new item, a new hash) gets new ones."""

    def __init__(self, folder: Path, limits: Limits) -> None:
        self.folder = folder
        self.limits = limits
        # Striped locks: two requests for the same thumbnail make it once, without a
        # lock per item kept forever.
        self._locks = [threading.Lock() for _ in range(64)]

    def path_for(self, sha256: str, size: int) -> Path:
        return self.folder / str(size) / sha256[:2] / f"{sha256}.webp"

    def get(self, sha256: str, source: str, size: int, kind: str = "image") -> Path:
        if size not in SIZES:
            raise ApiError(422, f"size must be one of {', '.join(map(str, SIZES))}")
        dest = self.path_for(sha256, size)
        if dest.is_file():
            return dest
        lock = self._locks[int(hashlib.sha1(dest.name.encode()).hexdigest()[:8], 16) % 64]
        with lock:
            if dest.is_file():
                return dest
            try:
                raw = read_file(source, self.limits)
                if kind == "audio":  # the sound's waveform, 4:1 like a player's
                    img = audio_thumbnail(raw.data, self.limits, size, size // 4)
                else:
                    img = decode_image(raw.data, self.limits, draft_side=size).image
            except MediaError as exc:
                raise ApiError(422, f"cannot make a thumbnail: {exc}") from exc
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    img.save(f, "WEBP", quality=82, method=4)
                os.replace(tmp, dest)  # readers see the old state or the whole file
            except BaseException:
                os.unlink(tmp)
                raise
        return dest
