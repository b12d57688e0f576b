"""One writer per data dir: `index`, `watch`, `enrich` and `serve` with library folders
take an exclusive lock (flock on $EVERLOOK_HOME/writer.lock) that records who holds
it. The kernel drops the lock when the holder dies, so a crash never leaves a stale
lock; a second writer is told who holds it instead of racing it for the index file.

Readers (`search`, `stats`, a `serve` without folders) take no lock: SQLite in WAL
mode lets them read while the writer writes."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any


class Busy(Exception):
    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(describe(holder))
        self.holder = holder


def describe(h: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
    return f"pid {h.get('pid', '?')} (`everlook {h.get('command', '?')}`, since {since})"


class WriterLock:
    def __init__(self, home: Path) -> None:
        self.path = home / "writer.lock"
        self._fd: int | None = None

    def acquire(self, command: str, roots: list[str] | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise Busy(holder) from None
        info = {"pid": os.getpid(), "command": command, "since": time.time(),
                "host": socket.gethostname(), "roots": roots or []}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        data = json.loads(raw) if raw else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


SERVER_FILE = "server.json"


def advertise(home: Path, url: str) -> Path:
    """Tell CLI commands on this data dir where the running server answers."""
    path = home / SERVER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "since": time.time()}))
    os.replace(tmp, path)
    return path


def withdraw(path: Path) -> None:
    """Remove the advertisement if it is still this process's (another server on the
    same data dir may have written its own since)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def running_server(home: Path) -> str | None:
    """The URL of a live `everlook serve` on this data dir, if there is one."""
    try:
        info = json.loads((home / SERVER_FILE).read_text())
        pid, url = int(info["pid"]), str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a server that was killed
    except PermissionError:
        pass  # alive, another user's
    return url
