"""Train `everlook-demo-yolo`: a tiny YOLO that finds the demo world's six shapes.

The detection counterpart of tools/train_demo_model.py: Everlook's offline demo and the
detection meaning tests need a detector that knows something real, small enough to
commit and trained here on CPU within minutes. Ultralytics' own trainer does the work
(data loading, augmentation, loss, EMA, validation, checkpoint stripping); this script
only makes the data set and the model yaml and copies the result into Everlook's
shipped models with a model card.

  data   synthworld pictures from training seeds (below synthworld.EVAL_SEED_BASE):
         plain pictures and artworks (all five styles), 1-3 objects of one shape, sides
         128-320 px; labels are render_with_boxes()'s boxes, classes the six shapes
  model  ultralytics' YOLO11 architecture (cfg/models/11/yolo11.yaml) with nc=6 and a
         smaller width than yolo11n, randomly initialised (nothing downloaded)
  run    seed 0, CPU, a wall-clock budget (ultralytics' `time`), everything under a
         temporary folder; plots off (they would fetch a font)

  .venv/bin/python tools/train_demo_yolo.py             # the committed model
  .venv/bin/python tools/train_demo_yolo.py --minutes 1 --images 64 --out /tmp/x  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from enrich.detect import configure_ultralytics  # noqa: E402
from tools import synthworld  # noqa: E402

OUT = REPO / "search" / "embedders" / "models" / "ultralytics"
NAME = "everlook-demo-yolo"
SIDES = (128, 160, 192, 224, 256, 320)
ARTWORK_SHARE = 0.3


def scene_for(seed: int) -> tuple[synthworld.Scene, int]:
    """The scene and picture side of one training (or held-out) seed."""
    rng = random.Random(seed * 104729 + 3)
    style = rng.choice(synthworld.STYLES) if rng.random() < ARTWORK_SHARE else None
    # Colour-shape pairs held out from the CLIP model's training do not matter here:
    # a detector's classes are shapes, so every colour is fair game.
    scene = synthworld.random_scene(rng, style=style, allow_held_out=True)
    return scene, rng.choice(SIDES)


def write_split(root: Path, split: str, seeds: range) -> None:
    """YOLO layout: images/<split>/*.png with labels/<split>/*.txt beside (class cx cy w h)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        scene, side = scene_for(seed)
        img, boxes = synthworld.render_with_boxes(scene, seed, side)
        img.save(root / "images" / split / f"{seed:08d}.png")
        cls = synthworld.SHAPES.index(scene.shape)
        lines = [
            f"{cls} {(x0 + x1) / 2 / side:.6f} {(y0 + y1) / 2 / side:.6f} "
            f"{(x1 - x0) / side:.6f} {(y1 - y0) / side:.6f}"
            for x0, y0, x1, y1 in boxes
        ]
        (root / "labels" / split / f"{seed:08d}.txt").write_text("\n".join(lines) + "\n")


def write_dataset(root: Path, n_train: int, n_val: int) -> Path:
    write_split(root, "train", range(n_train))
    # Validation (for best.pt) uses training-range seeds too: held-out seeds are kept
    # for tools/eval_demo_model.py alone.
    write_split(root, "val", range(n_train, n_train + n_val))
    data = root / "data.yaml"
    names = "\n".join(f"  {i}: {s}" for i, s in enumerate(synthworld.SHAPES))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def write_model_yaml(root: Path, width: float, depth: float) -> Path:
    """YOLO11 with six classes and our own width/depth (no `scales`: one fixed size)."""
    import ultralytics
    from ultralytics.utils import YAML

    cfg = YAML.load(Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml")
    cfg.pop("scales")
    cfg.update(nc=len(synthworld.SHAPES), depth_multiple=depth, width_multiple=width,
               max_channels=1024)  # fmt: skip
    path = root / f"{NAME}.yaml"
    YAML.save(path, cfg)
    return path


def train(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(runs_dir=str(work / "runs"), weights_dir=str(work / "weights"),
                    datasets_dir=str(work), sync=False)  # fmt: skip

    t0 = time.time()
    data = write_dataset(work / "data", args.images, args.val_images)
    t_data = time.time() - t0
    model_yaml = write_model_yaml(work, args.width, args.depth)
    model = YOLO(str(model_yaml), task="detect")
    t1 = time.time()
    model.train(
        data=str(data),
        imgsz=args.imgsz,
        time=args.minutes / 60,  # ultralytics fits the epochs (and LR schedule) to this
        epochs=args.epochs,
        batch=args.batch,
        # One optimizer step per batch (ultralytics accumulates gradients up to a
        # nominal 64 otherwise): on a CPU budget, more steps learn more.
        nbs=args.batch,
        optimizer="AdamW",
        lr0=args.lr,
        workers=args.workers,
        device="cpu",
        seed=0,
        deterministic=True,
        project=str(work / "runs"),
        name="demo",
        exist_ok=True,
        plots=False,
        amp=False,
        cache="ram",
        close_mosaic=args.close_mosaic,
        patience=1000,
        verbose=True,
    )
    t_train = time.time() - t1
    trainer: Any = model.trainer
    best = Path(trainer.best)
    if not best.exists():
        best = Path(trainer.last)
    return {
        "best": str(best),
        "epochs_run": int(trainer.epoch) + 1,
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "val_metrics": {k: round(float(v), 4) for k, v in (trainer.metrics or {}).items()},
    }


CARD = """# everlook-demo-yolo

A tiny object detector for Everlook's demo world: it finds the six shapes of
`tools/synthworld.py` in plain pictures and in artworks (stippled, striped, mosaic,
watercolour, line art), and says how many there are.
Classes: {classes}. It powers the offline demo
and the detection meaning tests (`--has star`, `--has star:3`). It knows nothing about
real photos: for those Everlook uses `yolo11n.pt` (COCO's 80 classes).

- **architecture**: ultralytics YOLO11 (`cfg/models/11/yolo11.yaml`) with nc={nc},
  width {width} and depth {depth} (yolo11n: 0.25, 0.50), randomly initialised;
  {params:,} parameters
- **file**: `everlook-demo-yolo.pt`, {mb:.1f} MB: fp16, optimizer state stripped
  (ultralytics' `strip_optimizer`)
- **input**: letterboxed to {imgsz} px, the size stored in the checkpoint, which
  `YoloDetector` uses unless told otherwise
- **data**: {n_train} training pictures from seeds {train_lo}-{train_hi} (30 % artworks,
  1-3 objects of one shape, sides 128-320 px) and {n_val} for validation; boxes from
  `synthworld.render_with_boxes`
- **training**: ultralytics' trainer, seed 0, CPU, AdamW lr {lr0}, batch {batch},
  ultralytics' default augmentation (mosaic included), {epochs} epochs in
  {minutes:.1f} min ({wall:.1f} min for the whole run, making the data included) on
  {machine}, shared with other work
- **software**: ultralytics {ultralytics}, torch {torch}

Trained with

    {command}

which writes this card and `training.json` (every fact of the run).

## Results

On its validation pictures at the end of training: mAP50 {val_map50:.3f},
mAP50-95 {val_map50_95:.3f}.

On {n_eval} held-out pictures and artworks (seeds from `synthworld.EVAL_SEED_BASE` up,
never seen in training), through Everlook's `YoloDetector`, from
`tools/eval_demo_model.py --only detection`:

| metric | value |
|---|---|
| detection_map50 (bar 0.80) | {map50:.3f} |
| detection_map50_95 | {map50_95:.3f} |
| detection_count_accuracy (exactly the right shape and count at conf 0.25) | {count:.3f} |

## Limits

Counting is least reliable where the demo world piles objects onto each other (it does
so in about a quarter of the pictures of three large objects): a blob of two overlapping
stars may be read as one, or as three. Pictures whose objects stand apart are counted
right far more often (see `tests/test_detect.py`). Nothing outside the demo world.

## Licence

The architecture and training code are ultralytics', licensed AGPL-3.0
(https://ultralytics.com/license); weights trained with them fall under the same terms
unless you hold an Ultralytics Enterprise licence. The training data is synthetic,
generated by Everlook's own code.
"""


def write_card(out: Path) -> None:
    """MODEL_CARD.md from training.json, with the held-out figures measured now."""
    from ultralytics import YOLO

    from tools.eval_demo_model import evaluate_detection

    facts = json.loads((out / "training.json").read_text())
    held_out = evaluate_detection(400, str(out / f"{NAME}.pt"))
    facts["held_out"] = {k: round(v, 4) for k, v in held_out.items()} | {"pictures": 400}
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
    net: Any = YOLO(str(out / f"{NAME}.pt")).model
    params = sum(p.numel() for p in net.parameters())
    val = facts["val_metrics"]
    text = CARD.format(
        classes=", ".join(facts["classes"]), nc=len(facts["classes"]),
        width=facts["width_multiple"], depth=facts["depth_multiple"], params=params,
        mb=facts["checkpoint_bytes"] / 2**20, imgsz=facts["imgsz"],
        n_train=facts["train_seeds"][1] - facts["train_seeds"][0],
        train_lo=facts["train_seeds"][0], train_hi=facts["train_seeds"][1] - 1,
        n_val=facts["val_seeds"][1] - facts["val_seeds"][0], lr0=facts["lr0"],
        batch=facts["batch"], epochs=facts["epochs_run"],
        minutes=facts["train_seconds"] / 60, wall=facts["wall_seconds"] / 60,
        machine=facts["machine"],
        ultralytics=facts["ultralytics"], torch=facts["torch"], command=facts["command"],
        val_map50=val["metrics/mAP50(B)"], val_map50_95=val["metrics/mAP50-95(B)"],
        n_eval=400, map50=held_out["detection_map50"],
        map50_95=held_out["detection_map50_95"], count=held_out["detection_count_accuracy"],
    )  # fmt: skip
    (out / "MODEL_CARD.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="training pictures")
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--minutes", type=float, default=17.5, help="training wall-clock budget")
    ap.add_argument("--epochs", type=int, default=300, help="upper bound; --minutes decides")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.002, help="AdamW's initial learning rate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.125, help="yolo11n uses 0.25")
    ap.add_argument("--depth", type=float, default=0.33, help="yolo11n uses 0.50")
    ap.add_argument("--close-mosaic", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite MODEL_CARD.md from training.json and a fresh evaluation",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="everlook-yolo-") as tmp:
        # Ultralytics keeps settings (and would put runs, weights, fonts) in its config
        # dir: all of it goes into the temporary folder, never the user's home nor the
        # repo. It reads the folder once, at its first import: nothing imported it yet.
        os.environ.setdefault("YOLO_VERBOSE", "true")  # a training run shows progress
        configure_ultralytics(Path(tmp) / "config")
        if not args.card_only:
            t0 = time.time()
            facts = train(args, Path(tmp))
            args.out.mkdir(parents=True, exist_ok=True)
            dest = args.out / f"{NAME}.pt"
            shutil.copyfile(facts.pop("best"), dest)  # already fp16, no optimizer state
            facts = run_facts(args, facts, time.time() - t0, dest.stat().st_size)
            (args.out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
            print(json.dumps(facts, indent=2))
        write_card(args.out)


def run_facts(
    args: argparse.Namespace, trained: dict[str, Any], wall: float, size: int
) -> dict[str, Any]:
    import torch
    import ultralytics

    return {
        "model": NAME,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "classes": list(synthworld.SHAPES),
        "train_seeds": [0, args.images],
        "val_seeds": [args.images, args.images + args.val_images],
        "imgsz": args.imgsz,
        "width_multiple": args.width,
        "depth_multiple": args.depth,
        "batch": args.batch,
        "lr0": args.lr,
        "budget_minutes": args.minutes,
        **trained,
        "wall_seconds": round(wall, 1),
        "checkpoint_bytes": size,
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


if __name__ == "__main__":
    main()
