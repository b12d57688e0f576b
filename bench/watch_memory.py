"""Resident memory of `everlook watch` on a tree of 100k files, no model loaded.

Builds a tree of N empty placeholder files (default 100,000 in 1,000 folders), runs the
real `everlook watch` command on it, waits until it has reconciled the tree and started
following events, then reads its RSS (VmRSS/VmHWM from /proc). Baseline in the same run:
the same command watching an empty folder. Bar: RSS under 300 MB for 100k files.

    python bench/watch_memory.py [--files 100000] [--poll]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def make_tree(root: Path, n: int, per_folder: int = 100) -> None:
    for i in range(n):
        folder = root / f"album{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{i:06d}.jpg").touch()


def measure(tree: Path, home: Path, extra: list[str]) -> tuple[float, float, float]:
    env = {**os.environ, "EVERLOOK_HOME": str(home), "EVERLOOK_CLIP_MODEL": "everlook-demo",
           "EVERLOOK_CLIP_PRETRAINED": "v1"}  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "everlook", "watch", str(tree), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "watching" in line and "Ctrl-C" in line:
            break
    ready = time.monotonic() - t0
    time.sleep(3)  # let it settle into following events
    now, peak = rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    return now, peak, ready


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--poll", action="store_true", help="measure the polling observer")
    args = ap.parse_args()
    extra = ["--poll"] if args.poll else []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "empty").mkdir()
        t = time.monotonic()
        make_tree(base / "tree", args.files)
        print(
            f"tree: {args.files} empty files in {args.files // 100} folders "
            f"({time.monotonic() - t:.0f}s to create)"
        )
        b_now, b_peak, b_ready = measure(base / "empty", base / "home-empty", extra)
        now, peak, ready = measure(base / "tree", base / "home-tree", extra)
    mode = "polling" if args.poll else "inotify"
    print(
        f"baseline (empty folder, {mode}): RSS {b_now:6.1f} MB, peak {b_peak:6.1f} MB, "
        f"ready in {b_ready:.1f}s"
    )
    print(
        f"{args.files} files ({mode}):       RSS {now:6.1f} MB, peak {peak:6.1f} MB, "
        f"ready in {ready:.1f}s (reconciling the tree)"
    )
    print(f"RSS ratio tree/baseline = {now / b_now:.2f}; extra for the tree = {now - b_now:.1f} MB")
    print(f"bar: RSS < 300 MB -> {'ok' if now < 300 else 'MISSED'} (peak {peak:.1f} MB)")


if __name__ == "__main__":
    main()
