"""Evaluate `everlook-demo` on held-out synthetic pictures; one figure per line.

Loads the model exactly as Everlook does (OpenClipEmbedder: open_clip config registry,
weights resolution, open_clip's transform). Held-out pictures use seeds training never
touches (synthworld.EVAL_SEED_BASE and up).

  recall@1, recall@5   text->image for "<colour> <shape>" queries over pairs seen in
                       training: fraction of queries with a matching picture in the top K
  shape_accuracy       zero-shot: each picture against the six shapes, each shape being
                       the mean of 7 prompt templates (CLIP's prompt ensembling);
                       shape_accuracy_single_prompt uses "a photo of a <shape>" alone
  style_accuracy       zero-shot: each artwork against "a <style> artwork" prompts
  unseen_recall@1/@5   the same recall for colour-shape pairs never seen in training

and `everlook-demo-yolo` (loaded as Everlook does: YoloDetector, weights resolution,
ultralytics' own prediction) on held-out pictures and artworks with known boxes:

  detection_map50      mean over the six shapes of AP at IoU 0.5 (COCO-style matching
                       as ultralytics' validator does, AP from its ap_per_class)
  detection_map50_95   the same averaged over IoU 0.50:0.95
  detection_count_accuracy  pictures whose detections at the default threshold are
                       exactly their objects: the right shape, as many as there are
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import synthworld  # noqa: E402

BARS = {"recall@1": 0.90, "recall@5": 0.98, "shape_accuracy": 0.95, "style_accuracy": 0.90,
        "detection_map50": 0.80}  # fmt: skip
DETECTION_SEED_BASE = synthworld.EVAL_SEED_BASE + 700_000  # apart from the ranges above


def held_out_pictures(n: int, side_choices: tuple[int, ...] = (96, 128, 256)):
    """n object pictures cycling through every colour-shape pair (seen and unseen)."""
    pairs = [(c, s) for c in synthworld.COLOURS for s in synthworld.SHAPES]
    out = []
    for i in range(n):
        seed = synthworld.EVAL_SEED_BASE + i
        rng = random.Random(seed)
        colour, shape = pairs[i % len(pairs)]
        scene = synthworld.random_scene(rng, shape=shape, colour=colour)
        out.append((synthworld.render(scene, seed, rng.choice(side_choices)), scene))
    return out


def held_out_artworks(per_style: int):
    out = []
    for k, style in enumerate(synthworld.STYLES):
        for i in range(per_style):
            seed = synthworld.EVAL_SEED_BASE + 500_000 + k * 10_000 + i
            rng = random.Random(seed)
            scene = synthworld.random_scene(rng, style=style, allow_held_out=True)
            out.append((synthworld.render(scene, seed, rng.choice((128, 256))), scene))
    return out


def embed(embedder, images) -> np.ndarray:
    vecs = [embedder.embed_images(images[i : i + 64]) for i in range(0, len(images), 64)]
    return np.concatenate(vecs)


# Zero-shot classification as CLIP evaluates it: each class is the mean embedding of a
# fixed set of prompt templates (a "prompt ensemble"). The first template alone is also
# reported.
SHAPE_TEMPLATES = ("a photo of a {shape}", "a picture of a {shape}", "an image of a {shape}",
                   "a {shape}", "one {shape}", "two {shapes}", "three {shapes}")  # fmt: skip


def zero_shot(img_vecs: np.ndarray, scenes, emb, templates) -> float:
    classes = []
    for shape in synthworld.SHAPES:
        texts = [t.format(shape=shape, shapes=synthworld.plural(shape, 2)) for t in templates]
        mean = emb.embed_texts(texts).mean(axis=0)
        classes.append(mean / np.linalg.norm(mean))
    pred = np.argmax(img_vecs @ np.stack(classes).T, axis=1)
    return float(
        np.mean([synthworld.SHAPES[p] == s.shape for p, s in zip(pred, scenes, strict=True)])
    )


def recall(sim: np.ndarray, queries: list[tuple[str, str]], scenes, k: int) -> float:
    hits = 0
    for qi, (colour, shape) in enumerate(queries):
        top = np.argsort(-sim[qi])[:k]
        hits += any(scenes[j].colour == colour and scenes[j].shape == shape for j in top)
    return hits / len(queries)


def evaluate(
    model_dir_override: Path | None = None,
    n: int = 576,
    per_style: int = 60,
    model: str = "everlook-demo",
    tag: str = "v1",
) -> dict[str, float]:
    from search.embedders.clip import OpenClipEmbedder

    t0 = time.time()
    pretrained = tag
    if model_dir_override is not None:
        pretrained = str(model_dir_override / "open_clip_model.safetensors")
    emb = OpenClipEmbedder(model, pretrained, device="cpu")
    pics = held_out_pictures(n)
    arts = held_out_artworks(per_style)
    img_vecs = embed(emb, [p for p, _ in pics])
    scenes = [s for _, s in pics]

    pairs = [(c, s) for c in synthworld.COLOURS for s in synthworld.SHAPES]
    seen = [p for p in pairs if p not in synthworld.HELD_OUT_PAIRS]
    unseen = [p for p in pairs if p in synthworld.HELD_OUT_PAIRS]
    q_seen = emb.embed_texts([f"a {c} {s}" for c, s in seen]) @ img_vecs.T
    q_unseen = emb.embed_texts([f"a {c} {s}" for c, s in unseen]) @ img_vecs.T

    shape_acc = zero_shot(img_vecs, scenes, emb, SHAPE_TEMPLATES)
    shape_acc_single = zero_shot(img_vecs, scenes, emb, SHAPE_TEMPLATES[:1])

    art_vecs = embed(emb, [a for a, _ in arts])
    style_txt = emb.embed_texts([f"a {s} artwork" for s in synthworld.STYLES])
    style_pred = np.argmax(art_vecs @ style_txt.T, axis=1)
    style_acc = float(
        np.mean(
            [synthworld.STYLES[p] == s.style for p, (_, s) in zip(style_pred, arts, strict=True)]
        )
    )

    res = {
        "recall@1": recall(q_seen, seen, scenes, 1),
        "recall@5": recall(q_seen, seen, scenes, 5),
        "shape_accuracy": shape_acc,
        "shape_accuracy_single_prompt": shape_acc_single,
        "style_accuracy": style_acc,
        "unseen_recall@1": recall(q_unseen, unseen, scenes, 1),
        "unseen_recall@5": recall(q_unseen, unseen, scenes, 5),
    }
    print(
        f"evaluated {len(pics)} held-out pictures and {len(arts)} artworks "
        f"with {emb.model_id} in {time.time() - t0:.0f}s"
    )
    report(res)
    return res


def report(res: dict[str, float]) -> None:
    for name, value in res.items():
        bar = BARS.get(name)
        verdict = (
            "" if bar is None else f"  (bar >= {bar:.2f}: {'ok' if value >= bar else 'MISSED'})"
        )
        print(f"{name} {value:.4f}{verdict}")


def held_out_boxes(n: int) -> list[tuple[Image.Image, synthworld.Scene, np.ndarray]]:
    """n pictures and artworks from training's distribution, held-out seeds, with boxes."""
    from tools.train_demo_yolo import scene_for

    out = []
    for i in range(n):
        seed = DETECTION_SEED_BASE + i
        scene, side = scene_for(seed)
        img, boxes = synthworld.render_with_boxes(scene, seed, side)
        out.append((img, scene, np.array(boxes, dtype=np.float64) / side))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), xyxy."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a, area_b = (np.prod(x[:, 2:] - x[:, :2], axis=1) for x in (a, b))
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match(
    pred_boxes: np.ndarray,
    pred_cls: np.ndarray,
    true_boxes: np.ndarray,
    true_cls: np.ndarray,
    iouv: np.ndarray,
) -> np.ndarray:
    """Which detections (sorted by confidence, highest first) are true positives at each
    IoU threshold: each takes the best target of its class not yet claimed, as
    ultralytics' DetectionValidator.match_predictions does."""
    correct = np.zeros((len(pred_cls), len(iouv)), dtype=bool)
    if not len(pred_cls) or not len(true_cls):
        return correct
    iou = box_iou(true_boxes, pred_boxes) * (true_cls[:, None] == pred_cls[None, :])
    claimed = np.zeros((len(true_cls), len(iouv)), dtype=bool)
    for j in range(len(pred_cls)):
        available = np.where(claimed, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, range(len(iouv))] >= iouv
        claimed[k, range(len(iouv))] |= correct[j]
    return correct


def evaluate_detection(n: int = 400, weights: str = "everlook-demo-yolo.pt") -> dict[str, float]:
    from enrich.detect import YoloDetector

    t0 = time.time()
    default = YoloDetector(weights, device="cpu")
    # AP needs the whole precision-recall curve: keep nearly everything, as ultralytics'
    # validator does (conf 0.001); the default threshold is applied for the counts.
    det = YoloDetector(weights, conf=0.001, device="cpu")
    det.load()  # first: it points ultralytics at Everlook's folder before it is imported
    from ultralytics.utils.metrics import ap_per_class

    pics = held_out_boxes(n)
    iouv = np.linspace(0.5, 0.95, 10)
    names = {s: i for i, s in enumerate(synthworld.SHAPES)}
    tps: list[np.ndarray] = []
    confs: list[np.ndarray] = []
    pcls: list[np.ndarray] = []
    tcls: list[np.ndarray] = []
    exact = 0
    for start in range(0, n, 32):
        chunk = pics[start : start + 32]
        for (_, scene, truth), found in zip(chunk, det.detect([p for p, _, _ in chunk]),
                                            strict=True):  # fmt: skip
            true_cls = np.full(len(truth), names[scene.shape])
            pred_cls = np.array([names.get(d.label, -1) for d in found])
            boxes = np.array([d.box for d in found]).reshape(-1, 4)
            tps.append(match(boxes, pred_cls, truth, true_cls, iouv))
            confs.append(np.array([d.confidence for d in found]))
            pcls.append(pred_cls)
            tcls.append(true_cls)
            kept = [d.label for d in found if d.confidence >= default.conf]
            exact += kept == [scene.shape] * scene.count
    ap = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls),
                      np.concatenate(tcls))[5]  # fmt: skip
    res = {
        "detection_map50": float(ap[:, 0].mean()),
        "detection_map50_95": float(ap.mean()),
        "detection_count_accuracy": exact / n,
    }
    print(f"evaluated {n} held-out pictures and artworks with {det.model_id} "
          f"(imgsz {det.imgsz}) in {time.time() - t0:.0f}s")  # fmt: skip
    report(res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=576, help="held-out object pictures (>= 500)")
    ap.add_argument("--per-style", type=int, default=60)
    ap.add_argument("--checkpoint-dir", type=Path, default=None)
    ap.add_argument("--detection-images", type=int, default=400)
    ap.add_argument("--yolo-weights", default="everlook-demo-yolo.pt",
                    help="a name Everlook resolves, or a path to a .pt file")  # fmt: skip
    ap.add_argument("--only", choices=("clip", "detection"), default=None)
    args = ap.parse_args()
    res: dict[str, float] = {}
    if args.only != "detection":
        res.update(evaluate(args.checkpoint_dir, args.images, args.per_style))
    if args.only != "clip":
        res.update(evaluate_detection(args.detection_images, args.yolo_weights))
    sys.exit(0 if all(res[k] >= v for k, v in BARS.items() if k in res) else 1)


if __name__ == "__main__":
    main()
