"""Cost of panoptic segmentation per picture, for both segmenter backends at real size.

Both architectures are built randomly initialised from their configs (random weights cost
what trained ones do), saved into a temporary EVERLOOK_MODEL_DIR and loaded through the
segmenters' real loading path, then timed on photo-like 640x480 pictures, one at a time
and as one batch. Prints ms/picture with the torch thread count, and Mask2Former as a
ratio of Panoptic FPN measured in the same run (the baseline).

- detectron2: Panoptic FPN R50 from its model zoo config, test size 800/1333;
- mask2former: Swin-Tiny backbone, COCO panoptic head (133 labels, 100 queries), its
  image processor at ``--m2f-size`` (shortest edge) / 1333.

    python bench/segment_cost.py [--images 5] [--m2f-size 384] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.index_throughput import camera_jpeg  # noqa: E402

CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"
M2F_REPO = "bench/mask2former-swin-tiny-coco-panoptic"


def pictures(n: int) -> list[Any]:
    from PIL import Image

    return [
        Image.open(io.BytesIO(camera_jpeg(500 + i, (640, 480)))).convert("RGB") for i in range(n)
    ]


def save_detectron2(model_dir: Path) -> None:
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    dest = model_dir / "detectron2" / Path(CONFIG).stem
    dest.mkdir(parents=True)
    DetectionCheckpointer(build_model(cfg), save_dir=str(dest)).save("model_final")


def save_mask2former(model_dir: Path, short_side: int) -> None:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    id2label = {i: c["name"] for i, c in enumerate(COCO_CATEGORIES)}
    swin = SwinConfig(  # Swin-Tiny, as in facebook/mask2former-swin-tiny-coco-panoptic
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=swin, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    dest = model_dir / "transformers" / M2F_REPO
    Mask2FormerForUniversalSegmentation(config).save_pretrained(dest)
    size = {"shortest_edge": short_side, "longest_edge": 1333}
    Mask2FormerImageProcessor(size=size).save_pretrained(dest)


def timed(segmenter: Any, images: list[Any]) -> tuple[float, float, float]:
    """(load s, ms/picture one at a time, ms/picture as one batch)."""
    start = time.perf_counter()
    segmenter.load()
    load = time.perf_counter() - start
    segmenter.segment(images[:1])  # warm-up
    start = time.perf_counter()
    for image in images:
        segmenter.segment([image])
    single = (time.perf_counter() - start) / len(images) * 1000
    start = time.perf_counter()
    segmenter.segment(images)
    batched = (time.perf_counter() - start) / len(images) * 1000
    return load, single, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--m2f-size", type=int, default=384)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if importlib.util.find_spec("detectron2") is None:
        sys.exit("needs detectron2 (its COCO table names Mask2Former's labels too)")

    import torch

    from enrich import panoptic

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = pictures(args.images)
    print(f"{args.images} pictures of 640x480, cpu, torch threads: {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        save_detectron2(model_dir)
        save_mask2former(model_dir, args.m2f_size)
        for backend, kwargs, what in (
            ("detectron2", {}, "Panoptic FPN R50, 800/1333"),
            ("mask2former", {"repo": M2F_REPO}, f"Mask2Former Swin-T, {args.m2f_size}/1333"),
        ):
            seg = panoptic.create(backend, model_dir=model_dir, device="cpu", **kwargs)
            rows.append((backend, what, *timed(seg, images)))
    base = rows[0][3]
    print(f"{'backend':<12} {'model':<30} {'load s':>7} {'ms/pic':>8} {'batched':>8} {'ratio':>6}")
    for backend, what, load, single, batched in rows:
        ratio = single / base
        print(f"{backend:<12} {what:<30} {load:7.1f} {single:8.0f} {batched:8.0f} {ratio:6.2f}")


if __name__ == "__main__":
    main()
