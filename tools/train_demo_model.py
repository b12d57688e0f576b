"""Train `everlook-demo`, a small open_clip model, contrastively on the synthetic world.

Same code path as real models: the architecture is a config JSON registered with
open_clip's add_model_config (search/embedders/model_configs/everlook-demo.json), the
model is built by open_clip.create_model, images go through open_clip's own eval
transform, text through open_clip's tokenizer. Deterministic for a given seed and
thread count. About 25 minutes on a 2-core CPU with the defaults.

    python tools/train_demo_model.py [--steps 1100] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from search.embedders.clip import BUILTIN_CONFIGS, BUILTIN_MODELS  # noqa: E402
from tools import synthworld  # noqa: E402

MODEL, TAG = "everlook-demo", "v1"


def make_dataset(n: int, seed: int, side_choices: tuple[int, ...], transform) -> tuple:
    """Pre-render n training pictures as uint8 tensors at the model's input size.

    Pictures are drawn at several sizes and brought to the input size by open_clip's
    transform, as at inference time, so the model sees the same resampling it will meet.
    """
    images = torch.empty((n, 3, 64, 64), dtype=torch.uint8)
    scenes = []
    rng = random.Random(seed)
    for i in range(n):
        side = rng.choice(side_choices)
        img, _, scene = synthworld.sample(seed * 1_000_003 + i, side=side)
        x = transform(img)  # float in [0, 1], C x 64 x 64 (no normalisation yet)
        images[i] = (x * 255).round().clamp(0, 255).to(torch.uint8)
        scenes.append(scene)
    return images, scenes


def soft_clip_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    scale: torch.Tensor,
    scenes: list[synthworld.Scene],
    facts: list[dict],
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, where every picture a caption truly describes counts as
    a positive for it (a batch of 256 over 48 colour-shape pairs holds many pictures that
    "two red stars" fits; calling them negatives would teach the model to ignore words)."""
    logits = scale * img @ txt.t()  # [image, caption]
    fits = torch.tensor([[synthworld.matches(s, f) for f in facts] for s in scenes],
                        dtype=torch.float32)  # fmt: skip
    img_target = fits / fits.sum(1, keepdim=True)
    txt_target = fits.t() / fits.t().sum(1, keepdim=True)
    return (F.cross_entropy(logits, img_target) + F.cross_entropy(logits.t(), txt_target)) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--train-images", type=int, default=40_000)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=BUILTIN_MODELS / "open_clip" / MODEL / TAG)
    args = ap.parse_args()

    import open_clip

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    open_clip.add_model_config(str(BUILTIN_CONFIGS))
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    tokenizer = open_clip.get_tokenizer(MODEL)
    mean = torch.tensor(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    to_unit = preprocess.transforms[:-1]  # open_clip's transform without Normalize

    t0 = time.time()
    from torchvision.transforms import Compose

    images, scenes = make_dataset(
        args.train_images, args.seed, (64, 96, 128, 192), Compose(to_unit)
    )
    print(f"rendered {len(scenes)} training pictures in {time.time() - t0:.0f}s", flush=True)

    params_decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    params_rest = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    opt = torch.optim.AdamW([{"params": params_decay, "weight_decay": 0.05},
                             {"params": params_rest, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.98), eps=1e-6)  # fmt: skip
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    gen = torch.Generator().manual_seed(args.seed)
    cap_rng = random.Random(args.seed)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, len(scenes), (args.batch,), generator=gen)
        x = (images[idx].float() / 255 - mean) / std
        batch_scenes = [scenes[i] for i in idx.tolist()]
        # Fresh wording every time a picture is drawn: the model learns meaning, not phrasing.
        captions = [synthworld.caption_with_facts(s, cap_rng) for s in batch_scenes]
        img_f, txt_f, scale = model(x, tokenizer([c for c, _ in captions]))
        loss = soft_clip_loss(img_f, txt_f, scale, batch_scenes, [f for _, f in captions])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 25 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(
                f"step {step:4d}/{args.steps} loss {loss.item():.3f} "
                f"scale {scale.item():5.1f} lr {lr_at(step):.2e} {el / 60:5.1f} min",
                flush=True,
            )

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "open_clip_model.safetensors"))
    (args.out / "training.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "train_images": args.train_images,
        "lr": args.lr, "seed": args.seed, "threads": args.threads,
        "minutes": round((time.time() - t0) / 60, 1), "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }, indent=2) + "\n")  # fmt: skip
    size = (args.out / "open_clip_model.safetensors").stat().st_size
    print(f"saved {args.out} ({size / 1e6:.1f} MB, fp16)", flush=True)

    from tools.eval_demo_model import evaluate

    evaluate(model_dir_override=args.out)


if __name__ == "__main__":
    main()
