"""`everlook search` answered by a running `everlook serve` versus in-process.

ViT-B-32 with seeded random weights (the real architecture, so the real load cost),
a small library; each way runs the same queries as fresh processes, as a user would
type them. Prints the median wall time of each way and their ratio (same run, same
machine), and checks the two outputs are identical.

    python bench/cli_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._synthetic import save_checkpoint, small_jpeg  # noqa: E402
from tests.serving import run_cli, serving  # noqa: E402

QUERIES = [["a dog on a beach", "-k", "10"], ["red car -night", "-k", "20"]]


def timed(settings: dict[str, str], cwd: Path, runs: int) -> tuple[list[float], list[str]]:
    walls, outs = [], []
    for i in range(runs):
        q = QUERIES[i % len(QUERIES)]
        t0 = time.perf_counter()
        done = run_cli(settings, "search", *q, "--json", cwd=cwd)
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"search failed: {done.stderr}")
        outs.append(done.stdout)
    return walls, outs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="everlook-cli-"))
    ckpt = save_checkpoint("ViT-B-32", base / "vit-b-32-seed0-random.pt")
    settings = {"EVERLOOK_HOME": str(base / "home"), "EVERLOOK_CLIP_MODEL": "ViT-B-32",
                "EVERLOOK_CLIP_PRETRAINED": str(ckpt), "EVERLOOK_DEVICE": "cpu",
                "EVERLOOK_STAGES": "[]"}  # fmt: skip
    lib = base / "library"
    lib.mkdir()
    for i in range(40):
        (lib / f"photo-{i:03d}.jpg").write_bytes(small_jpeg(i))
    assert run_cli(settings, "index", str(lib), cwd=base).returncode == 0
    with serving(settings, str(lib), cwd=base) as served:
        run_cli(settings, "search", "warm up", cwd=base)  # the server loads its model once
        remote, remote_out = timed(settings, base, args.runs)
        served.proc.terminate()
        served.proc.wait(timeout=30)
    local, local_out = timed(settings, base, args.runs)
    same = remote_out == local_out
    r, x = statistics.median(remote), statistics.median(local)
    print(f"everlook search, {args.runs} runs each, median wall time of the whole command:")
    print(f"  answered by the running server: {r:.3f} s   (min {min(remote):.3f})")
    print(f"  in-process (loads the model):   {x:.3f} s   (min {min(local):.3f})")
    print(f"  ratio in-process / server: {x / r:.1f}x; identical output: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
