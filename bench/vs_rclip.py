"""Everlook beside rclip 4.0.8, in one run, on this machine: same photos, same model.

rclip (https://github.com/yurijmikhalevich/rclip) is the peer issue [8] names: ONNX
Runtime, no torch at run time. Both tools get ViT-B-32-256 (rclip's architecture) with the
same seeded random weights: Everlook loads them as an offline user's checkpoint, rclip as
its own ONNX files (exported here from the same state dict, under the names rclip reads:
visual.onnx / textual.onnx, input "input", output "output"), so nothing is downloaded.

Rounds alternate between the tools (machines here are noisy), each on fresh state:
  index:  rclip indexes only as part of a query (`rclip -f QUERY` in the folder), so it
          is timed doing exactly that; Everlook does the same work as two commands,
          `everlook index DIR` then `everlook search QUERY`, and its `index` alone is
          printed too (the rate issue [8] asks of it).
  query:  a cold query over the indexed folder: `rclip -n -f QUERY` against
          `everlook search QUERY`.
Each line: the median wall time of the whole process(es), start-up included, and the
median peak RSS (GNU time's, per process), then Everlook / rclip. Everlook runs in its
default fp32 (ONNX Runtime) and, on a CPU that multiplies bf16 natively, also with
EVERLOOK_CPU_BF16=true (OpenVINO, opt-in).

rclip 4.x needs Python >= 3.12: the bench makes a venv for it with the first such Python
it finds (--python, python3.12/3.13 on PATH, pyenv's versions) and pip (PyPI). It exits
with a message when there is none.

    python bench/vs_rclip.py [--files 64] [--rounds 3] [--queries 5] [--data DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.index_throughput import make_data  # noqa: E402

MODEL, TAG = "ViT-B-32-256", "bench-random"
RCLIP = "rclip==4.0.8"
RCLIP_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # where rclip 4.0.8 looks for its files
QUERY = "a dog on a beach"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, the process's own peak RSS in MB (GNU time), stdout."""
    t0 = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "PEAK_RSS_KB %M", *cmd], env=env, cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    peak = [ln for ln in done.stderr.splitlines() if ln.startswith("PEAK_RSS_KB ")][-1]
    return wall, int(peak.split()[1]) / 1024, done.stdout


def python_312(given: str | None) -> str | None:
    found = [given] if given else []
    found += [shutil.which(n) for n in ("python3.13", "python3.12")]
    home = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found += sorted(glob.glob(f"{home}/versions/3.1[2-9]*/bin/python"), reverse=True)
    for exe in filter(None, found):
        ok = subprocess.run([exe, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                            capture_output=True)  # fmt: skip
        if ok.returncode == 0:
            return exe
    return None


def rclip_venv(base: Path, python: str | None) -> Path:
    exe = base / "rclip-venv" / "bin" / "rclip"
    if exe.exists():
        return exe
    py = python_312(python)
    if py is None:
        raise SystemExit("rclip 4.x needs Python >= 3.12 and none was found (--python PATH)")
    print(f"installing {RCLIP} into {base / 'rclip-venv'} with {py} ...", flush=True)
    subprocess.run([py, "-m", "venv", str(base / "rclip-venv")], check=True)
    pip = base / "rclip-venv" / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", RCLIP], check=True)
    return exe


def models(base: Path) -> tuple[Path, Path]:
    """(Everlook's model dir, rclip's data dir): one seeded ViT-B-32-256, both forms."""
    import warnings

    import open_clip
    import torch

    ev = base / "everlook-models"
    ckpt = ev / "open_clip" / MODEL / TAG / "open_clip_model.pt"
    rc = base / "rclip-data"
    files = rc / RCLIP_SUBDIR
    if ckpt.exists() and (files / "visual.onnx").exists() and (files / "textual.onnx").exists():
        return ev, rc
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL).eval()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt)

    class Tower(torch.nn.Module):
        def __init__(self, fn: object) -> None:
            super().__init__()
            self.model, self.fn = model, fn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fn(x)  # type: ignore[operator]

    files.mkdir(parents=True, exist_ok=True)
    side = model.visual.image_size[0]
    torch.backends.mha.set_fastpath_enabled(False)  # the legacy exporter cannot trace it
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn, example in (
            ("visual.onnx", model.encode_image, torch.zeros(2, 3, side, side)),
            ("textual.onnx", model.encode_text, torch.zeros(2, 77, dtype=torch.long)),
        ):
            torch.onnx.export(Tower(fn), (example,), str(files / name), dynamo=False,
                              opset_version=18, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})  # fmt: skip
    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    (rc / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(vocab, rc / "tokenizer" / vocab.name)
    for legal in ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md"):
        (rc / legal).write_text("bench: random weights, no licence terms\n")
    return ev, rc


def median_line(name: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
    wall = statistics.median(r[0] for r in runs)
    rss = statistics.median(r[1] for r in runs)
    print(f"  {name:<44} {wall:6.2f} s  {rss:6.0f} MB   "
          f"(walls {', '.join(f'{r[0]:.2f}' for r in runs)})")  # fmt: skip
    return wall, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "everlook-bench")
    ap.add_argument("--python", help="a Python >= 3.12 for rclip's venv")
    args = ap.parse_args()

    photos = args.data / "photos"
    files = make_data(photos, args.files)
    if len(list(photos.iterdir())) != len(files):
        raise SystemExit(f"{photos} holds other files than the bench's {len(files)} photos")
    rclip = rclip_venv(args.data, args.python)
    ev_models, rc_data = models(args.data)
    onnx = args.data / "onnx-cache"
    onnx.mkdir(parents=True, exist_ok=True)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EVERLOOK_", "RCLIP_"))}
    base_env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(os.cpu_count() or 2))
    everlook = [sys.executable, "-m", "everlook"]

    def ev_env(home: Path) -> dict[str, str]:
        (home / "models").mkdir(parents=True, exist_ok=True)
        if not (home / "models" / "onnx").exists():
            (home / "models" / "onnx").symlink_to(onnx)  # exported once, as rclip's are
        return {**base_env, "EVERLOOK_HOME": str(home), "EVERLOOK_MODEL_DIR": str(ev_models),
                "EVERLOOK_CLIP_MODEL": MODEL, "EVERLOOK_CLIP_PRETRAINED": TAG,
                "EVERLOOK_DEVICE": "cpu", "EVERLOOK_STAGES": "[]"}  # fmt: skip

    rc_env = {**base_env, "RCLIP_DATADIR": str(rc_data)}
    from search.embedders.clip_bf16 import available

    # Everlook's default (ONNX Runtime, fp32), and where this CPU multiplies bf16 natively,
    # its opt-in bf16 (OpenVINO; vectors close to fp32's, not equal).
    kinds = {"fp32": {}} | ({"bf16": {"EVERLOOK_CPU_BF16": "true"}} if available() else {})
    with tempfile.TemporaryDirectory() as tmp:
        for kind, extra in kinds.items():  # untimed: exports, the bf16 gate (rclip's are ready)
            warm = {**ev_env(Path(tmp) / f"warm-{kind}"), **extra}
            timed([*everlook, "index", str(photos)], warm, photos)
            timed([*everlook, "search", QUERY], warm, photos)

        rc_runs: list[tuple[float, float]] = []
        ev_index: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        ev_both: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        answers: dict[str, set[str]] = {"rclip": set(), **{k: set() for k in kinds}}
        for r in range(args.rounds):
            for db in rc_data.glob("db.sqlite3*"):
                db.unlink()
            wall, rss, out = timed([str(rclip), "-f", QUERY], rc_env, photos)
            rc_runs.append((wall, rss))
            answers["rclip"].add(out)
            line = f"round {r + 1}: rclip {wall:.2f} s"
            for kind, extra in kinds.items():
                env = {**ev_env(Path(tmp) / f"round{r}-{kind}"), **extra}
                w1, m1, _ = timed([*everlook, "index", str(photos)], env, photos)
                w2, m2, out = timed([*everlook, "search", QUERY], env, photos)
                ev_index[kind].append((w1, m1))
                ev_both[kind].append((w1 + w2, max(m1, m2)))
                answers[kind].add(out)
                line += f", everlook {kind} index {w1:.2f} s + search {w2:.2f} s"
            print(line, flush=True)
        rc_q, ev_q = [], []
        env = ev_env(Path(tmp) / "round0-fp32")
        for _ in range(args.queries):
            rc_q.append(timed([str(rclip), "-n", "-f", QUERY], rc_env, photos)[:2])
            ev_q.append(timed([*everlook, "search", QUERY], env, photos)[:2])

    n = len(files)
    print(f"\n{n} JPEGs 4000x3000, {MODEL} (same seeded weights), {os.cpu_count()} cores, medians:")
    rw, rm = median_line("rclip -f QUERY (index + query)", rc_runs)
    for kind in kinds:
        ew, em = median_line(f"everlook {kind}: index + search", ev_both[kind])
        iw, _ = median_line(f"everlook {kind}: index alone", ev_index[kind])
        print(
            f"    {kind}: everlook/rclip wall {ew / rw:.2f}x, peak RSS {em / rm:.2f}x for the same "
            f"work (rclip {n / rw:.2f} img/s, everlook {n / ew:.2f}); `everlook index` alone "
            f"{n / iw:.2f} img/s = {rw / iw:.2f}x rclip's rate"
        )
    qw, qm = median_line("rclip -n -f QUERY (cold query)", rc_q)
    sw, sm = median_line("everlook search (cold query)", ev_q)
    print(f"    cold query: everlook/rclip wall {sw / qw:.2f}x, peak RSS {sm / qm:.2f}x")
    for tool, outs in answers.items():
        if len(outs) != 1:
            print(f"note: {tool} answered differently between rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
