"""What each enrichment stage costs per picture, and what it does to the index rate.

All models at real size with random weights (the cost of trained ones), loaded through
Everlook's own loading paths from a temporary EVERLOOK_MODEL_DIR; nothing downloaded.

  per stage, ms/image:   embed/clip (ViT-B-32, the baseline: every item pays it),
                         detect/yolo (yolo11n at 640), panoptic (Detectron2 Panoptic FPN
                         R50, and Mask2Former Swin-Tiny), style and labels (a product
                         with cached prompt embeddings: no pixels)
  end to end, images/s:  `Pipeline.run` + backfill over 1600x1200 camera JPEGs with
                         embedding only, with the default stages, and with panoptic too

Every figure is also printed as a ratio of embed/clip measured in the same run.
    python bench/enrich_cost.py [--images 8] [--files 16] [--skip-panoptic]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.detect_cost import best_ms  # noqa: E402
from bench.index_throughput import MODEL, TAG, camera_jpeg, save_random_weights  # noqa: E402
from bench.segment_cost import CONFIG, M2F_REPO, save_detectron2, save_mask2former  # noqa: E402

ROUNDS = 3  # best of 3 after a warm-up call (lazy loads, caches)


def parts_for(home: Path, model_dir: Path, stages: list[str], **extra: str) -> Any:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    env = {
        "EVERLOOK_HOME": str(home), "EVERLOOK_MODEL_DIR": str(model_dir),
        "EVERLOOK_CLIP_MODEL": MODEL, "EVERLOOK_CLIP_PRETRAINED": TAG, "EVERLOOK_DEVICE": "cpu",
        "EVERLOOK_STAGES": json.dumps(stages), "EVERLOOK_YOLO_MODEL": "yolo11n.yaml",
        "EVERLOOK_BATCH_SIZE": "16", **{f"EVERLOOK_{k.upper()}": v for k, v in extra.items()},
    }  # fmt: skip
    for k in [k for k in os.environ if k.startswith("EVERLOOK_")]:
        del os.environ[k]
    os.environ.update(env)
    return Parts(Settings())


def per_stage(model_dir: Path, home: Path, n: int, panoptic: bool) -> dict[str, float]:
    from PIL import Image

    from indexer.stages import Work, shrink

    pics = [Image.open(io.BytesIO(camera_jpeg(900 + i, (1600, 1200)))).convert("RGB")
            for i in range(n)]  # fmt: skip
    parts = parts_for(home, model_dir, [])
    emb = parts.embedder
    out = {"embed/clip": best_ms(lambda: emb.embed_images(pics), ROUNDS, n)}
    vecs = emb.embed_images(pics)
    clip_works = [Work(i + 1, vector=v) for i, v in enumerate(vecs)]
    names = ["detect/yolo", "style", "labels"]
    backends = ["detectron2", "mask2former"] if panoptic else []
    for name in names + [f"panoptic/{b}" for b in backends]:
        if name.startswith("panoptic/"):
            backend = name.split("/")[1]
            model = CONFIG if backend == "detectron2" else M2F_REPO
            p = parts_for(home, model_dir, ["panoptic"], panoptic_backend=backend,
                          panoptic_model=model)  # fmt: skip
            stage = p.stage("panoptic")
        else:
            stage = parts.stage(name)
        if stage.needs == "image":
            works = [Work(i + 1, image=shrink(im, stage.image_side)) for i, im in enumerate(pics)]
        else:
            works = clip_works
        out[name] = best_ms(lambda s=stage, w=works: s.run(w), ROUNDS, n)
        print(f"  {name:<22} {out[name]:9.1f} ms/image", flush=True)
    return out


def prompt_cost(model_dir: Path, home: Path) -> None:
    """The labels stage embeds 1,000 ImageNet classes x 7 templates once per model: time
    a sample of those prompts padded to 77 tokens (open_clip's encode_text) and trimmed
    after the end-of-text token (Everlook's), and scale to the 7,000."""
    import torch

    from enrich.zeroshot import imagenet_labels, simple_imagenet_templates
    from search.embedders.clip import encode_text_trimmed

    parts = parts_for(home, model_dir, [])
    model, _, tokenizer = parts.embedder.load()
    prompts = [t.format(c) for c in imagenet_labels()[:40] for t in simple_imagenet_templates()]
    tokens = tokenizer(prompts)
    timed = {}
    for name, fn in (("padded to 77", lambda: model.encode_text(tokens, normalize=True)),
                     ("trimmed", lambda: encode_text_trimmed(model, tokens))):  # fmt: skip
        with torch.inference_mode():
            timed[name] = best_ms(fn, 2, len(prompts))
    print(f"\nImageNet prompt embeddings, first run per model ({len(prompts)} timed, x7000):")
    for name, ms in timed.items():
        print(f"  {name:<22} {ms:7.2f} ms/prompt -> {ms * 7:6.1f} s for 7,000 prompts")
    print(f"  trimmed/padded         {timed['trimmed'] / timed['padded to 77']:7.2f}")


def end_to_end(model_dir: Path, base: Path, files: int, panoptic: bool) -> dict[str, float]:
    lib = base / "lib"
    lib.mkdir(exist_ok=True)
    for i in range(files):
        (lib / f"IMG_{i:04d}.jpg").write_bytes(camera_jpeg(i, (1600, 1200)))
    configs = {"embedding only": [], "default stages": ["detect/yolo", "style", "labels"]}
    if panoptic:
        configs["default + panoptic"] = [*configs["default stages"], "panoptic"]
    rates = {}
    for label, stages in configs.items():
        home = Path(tempfile.mkdtemp(dir=base))
        parts = parts_for(home, model_dir, stages, panoptic_model=CONFIG)
        parts.embedder.load()  # model load is not indexing: as in a running watcher
        pipeline = parts.pipeline()
        if pipeline.stages is not None:
            from PIL import Image

            from indexer.stages import Work

            warm = Image.open(lib / "IMG_0000.jpg").convert("RGB")
            for st in pipeline.stages.stages:  # ... nor is each stage's model load
                st.run([Work(0, image=warm, vector=parts.embedder.embed_images([warm])[0])])
        t0 = time.perf_counter()
        pipeline.run([str(lib)])
        if pipeline.stages is not None:
            pipeline.stages.backfill()
        rates[label] = files / (time.perf_counter() - t0)
        print(f"  {label:<22} {rates[label]:9.2f} images/s", flush=True)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8, help="pictures per stage timing")
    ap.add_argument("--files", type=int, default=16, help="files for the end-to-end run")
    ap.add_argument("--skip-panoptic", action="store_true")
    args = ap.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}, CPU cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model_dir = base / "models"
        save_random_weights(model_dir)
        panoptic = not args.skip_panoptic
        if panoptic:
            save_detectron2(model_dir)
            save_mask2former(model_dir, 800)
        prompt_cost(model_dir, base / "home")
        print("\nper stage (1600x1200 camera pictures, random weights):")
        ms = per_stage(model_dir, base / "home", args.images, panoptic)
        base_ms = ms["embed/clip"]
        print(f"\n  {'stage':<22} {'ms/image':>9} {'x embed/clip':>13}")
        for name, v in ms.items():
            print(f"  {name:<22} {v:9.1f} {v / base_ms:13.2f}")
        print(f"\nend to end ({args.files} files, 1600x1200 JPEG, scan to stored results):")
        rates = end_to_end(model_dir, base, args.files, panoptic)
        first = rates["embedding only"]
        for label, r in rates.items():
            print(f"  {label:<22} {r:9.2f} images/s  ({r / first:.2f} x embedding only)")


if __name__ == "__main__":
    main()
