"""Walking folders: include/exclude globs, hidden names, symlink loops, odd file types."""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Found:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


@dataclass(frozen=True)
class ScanRules:
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()
    include_hidden: bool = False
    # Folders never walked nor watched: Everlook's own data dir (thumbnails, style-transfer
    # previews and results), should it lie inside a library folder. What is indexed from
    # there on purpose (a style result added to the library) is not removed by a scan.
    skip_under: Sequence[str] = ()

    def skipped(self, path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.skip_under)

    def wants_name(self, name: str) -> bool:
        return _any_of(tuple(self.include)).match(name.lower()) is not None

    def excluded(self, path: str, name: str) -> bool:
        if self.skip_under and self.skipped(path):
            return True
        return self.excluded_name(path, name)

    def excluded_name(self, path: str, name: str) -> bool:
        """excluded() but for skip_under, which a walk checks on folders only (by
        identity): a file in a folder it walks is never under a skipped folder."""
        if not self.include_hidden and name.startswith("."):
            return True
        return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(path, pat) for pat in self.exclude)


@functools.lru_cache(maxsize=32)
def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regular expression for case-insensitive globs: a scan asks it of every name,
    and a pattern at a time (20-odd image and audio extensions) cost 5 us a name."""
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns) or "(?!)")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _file(
    path: str, rules: ScanRules | None, explicit: bool = False, name: str | None = None
) -> Found | Problem | None:
    name = os.path.basename(path) if name is None else name
    if not explicit and rules is not None and not rules.wants_name(name):
        return None
    try:
        st = os.stat(path)  # follows symlinks: a link to a photo is a photo
    except FileNotFoundError:
        if os.path.islink(path):
            return Problem(path, f"broken symbolic link (target {os.readlink(path)!r} is missing)")
        return None  # vanished while we looked: nothing to index, nothing to report
    except OSError as exc:
        return Problem(path, f"cannot stat: {exc.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        return Problem(path, f"not a regular file ({_kind(st.st_mode)})")
    return Found(path, st.st_size, st.st_mtime_ns)


def check_file(path: str, rules: ScanRules | None = None) -> Found | Problem | None:
    """One path as the scanner would see it; None when it does not exist (or is a
    folder, or a name the rules do not want)."""
    return _file(path, rules)


def scan(roots: Sequence[str], rules: ScanRules) -> Iterator[Found | Problem]:
    """Yield every wanted file under roots (absolute paths), and every problem met.

    Directory symlinks are followed, but each directory (device, inode) is entered at
    most once, so loops and repeated links cannot make the walk endless.
    """
    visited: set[tuple[int, int]] = set()
    # Skipped folders also by identity: reached through a symlinked root, the data dir's
    # path matches neither of its spellings in rules.skip_under.
    skipped = set()
    for d in rules.skip_under:
        try:
            st = os.stat(d)
        except OSError:
            continue
        skipped.add((st.st_dev, st.st_ino))
    for root in roots:
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            got = _file(root, rules, explicit=True)
            if got is not None:
                yield got
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited or key in skipped:
                continue
            visited.add(key)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield Problem(folder, f"cannot list folder: {exc.strerror}")
                continue
            subdirs = []
            for entry in entries:
                if rules.excluded_name(entry.path, entry.name):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if is_dir:
                    if not (rules.skip_under and rules.skipped(entry.path)):
                        subdirs.append(entry.path)
                    continue
                got = _file(entry.path, rules, name=entry.name)
                if got is not None:
                    yield got
            stack.extend(reversed(subdirs))
