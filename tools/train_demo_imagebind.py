"""Train `everlook-demo-imagebind`, a tiny ImageBind, on synthetic pictures, words and sounds.

Same code path as real models: the architecture is ImageBindModel(**config) built by
Everlook's ImageBindEmbedder from `everlook-demo-imagebind.json`, and every input goes
through that embedder's own preparation (upstream's vision transform, BPE tokenizer,
clip sampling and log-mel code), so training sees exactly what inference sees.

The data (see MODEL_CARD.md beside the weights):
  pictures  synthworld.sample(): plain pictures and artworks of 1-3 same-shape objects,
            drawn at 96-256 px and brought to 224 px by the embedder's transform;
  sounds    synthsound.sound(): one family of sounds per shape, 1-6 s;
  captions  the pictures' captions (synthworld, re-worded each draw) and sound captions
            ("the sound of a star", ...; synthsound.SOUND_CAPTIONS).
A training example is a picture with its caption, and a sound of the picture's shape
with a sound caption. Four InfoNCE losses bind the modalities, each with every truly
matching pair in the batch as a positive: image<->picture caption (the caption's stated
facts hold for the picture), image<->sound caption, audio<->image and audio<->any
caption (same shape). Pictures are mirrored at random.

Deterministic for a given seed and thread count. About 21 minutes on a 2-core CPU with
the defaults (1.5 preparing the data, 19.5 training).

    python tools/train_demo_imagebind.py [--steps 2200] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

# The machine's cores are shared: a worker thread that spins while its partner is
# descheduled slows training several-fold. Passive waiting changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from search.model_base import BUILTIN_MODELS  # noqa: E402
from tools import synthsound, synthworld  # noqa: E402

MODEL = "everlook-demo-imagebind"
# ImageBindModel's keyword arguments. ImageBind always builds six modalities; depth,
# thermal and IMU are never trained here, so they are as small as the code allows.
CONFIG = {
    "out_embed_dim": 128,
    "kernel_size": [2, 32, 32],  # 7 x 7 patches of the fixed 224 px input
    "vision_embed_dim": 96,
    "vision_num_blocks": 4,
    "vision_num_heads": 4,
    "text_embed_dim": 64,
    "text_num_blocks": 2,
    "text_num_heads": 4,
    "audio_embed_dim": 64,
    "audio_num_blocks": 3,
    "audio_num_heads": 4,
    "audio_kernel_size": 32,
    "audio_stride": 32,  # 4 x 6 patches of a 128 x 204 log-mel clip
    "audio_num_mel_bins": 128,
    "audio_target_len": 204,
    "audio_drop_path": 0.0,
    "depth_embed_dim": 8,
    "depth_kernel_size": 16,
    "depth_num_blocks": 1,
    "depth_num_heads": 2,
    "thermal_embed_dim": 8,
    "thermal_kernel_size": 16,
    "thermal_num_blocks": 1,
    "thermal_num_heads": 2,
    "imu_embed_dim": 8,
    "imu_num_blocks": 1,
    "imu_num_heads": 2,
    "imu_drop_path": 0.0,
}
SIDES = (96, 128, 192, 256)
SOUND_SEED_OFFSET = 5_000_000  # training sound seeds: apart from picture seeds, < EVAL_SEED_BASE


def pictures(n: int, seed: int, emb) -> tuple[torch.Tensor, list[synthworld.Scene]]:
    """n training pictures through the embedder's preprocess, kept as uint8.

    The transform ends in ToTensor (k/255) and Normalize, so the uint8 values restore
    the float input exactly (checked) at a quarter of the memory.
    """
    images = torch.empty((n, 3, 224, 224), dtype=torch.uint8)
    scenes = []
    rng = random.Random(seed)
    for i in range(n):
        img, _, scene = synthworld.sample(seed * 1_000_003 + i, side=rng.choice(SIDES))
        x = emb.preprocess(img)
        images[i] = from_normalised(x)
        if i < 8:
            assert torch.equal(to_normalised(images[i : i + 1])[0], x), "uint8 round trip"
        scenes.append(scene)
    return images, scenes


_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(-1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(-1, 3, 1, 1)


def from_normalised(x: torch.Tensor) -> torch.Tensor:
    return ((x * _STD[0] + _MEAN[0]) * 255).round().clamp(0, 255).to(torch.uint8)


def to_normalised(u: torch.Tensor) -> torch.Tensor:
    # The same float32 operations as ToTensor then Normalize: bit-identical.
    return (u.float().div(255) - _MEAN) / _STD


def sounds(per_shape: int, seed: int, emb) -> tuple[torch.Tensor, list[str]]:
    """per_shape training sounds of each shape as the embedder's log-mel clips."""
    shapes = [s for _ in range(per_shape) for s in synthworld.SHAPES]
    mels = None
    for i, shape in enumerate(shapes):
        wave = synthsound.sound(shape, random.Random(seed * 1_000_003 + SOUND_SEED_OFFSET + i))
        m = emb.preprocess_audio(wave)
        if mels is None:
            mels = torch.empty((len(shapes), *m.shape), dtype=torch.float32)
        mels[i] = m
    assert mels is not None
    return mels, shapes


def sound_caption(shape: str, rng: random.Random) -> str:
    template = rng.choice(synthsound.SOUND_CAPTIONS)
    return template.format(shape=shape, shapes=synthworld.plural(shape, 2))


def soft_infonce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, fits: torch.Tensor):
    """Symmetric InfoNCE where every pair with fits[i, j] true is a positive (a batch
    holds many pictures of a star; calling all but one of them negatives for a star's
    sound would teach the model noise)."""
    logits = scale * a @ b.t()
    fits = fits.float()
    a_target = fits / fits.sum(1, keepdim=True)
    b_target = fits.t() / fits.t().sum(1, keepdim=True)
    return (F.cross_entropy(logits, a_target) + F.cross_entropy(logits.t(), b_target)) / 2


class Tokens:
    """The embedder's tokenizer with a cache: captions repeat often."""

    def __init__(self, emb) -> None:
        self.emb = emb
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.emb.tokenize(missing), strict=True))
        return torch.stack([self.cache[t] for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=16000)
    ap.add_argument("--sounds-per-shape", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=BUILTIN_MODELS / "imagebind")
    args = ap.parse_args()

    from search.embedders.imagebind import ImageBindEmbedder

    t_start = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{MODEL}.pth"
    weights.with_suffix(".json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    # The embedder that will serve the model prepares its training data and builds it.
    emb = ImageBindEmbedder(model_name=str(weights), device="cpu")
    model = emb.build()
    tokens = Tokens(emb)

    t0 = time.time()
    images, scenes = pictures(args.train_images, args.seed, emb)
    mels, sound_shapes = sounds(args.sounds_per_shape, args.seed, emb)
    prep_minutes = (time.time() - t0) / 60
    print(f"prepared {len(scenes)} pictures and {len(sound_shapes)} sounds "
          f"in {prep_minutes:.1f} min", flush=True)  # fmt: skip
    by_shape = {s: [i for i, x in enumerate(sound_shapes) if x == s] for s in synthworld.SHAPES}

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr,
                            betas=(0.9, 0.98), eps=1e-6)  # fmt: skip
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    # The text tower's own learnable logit scale is the temperature of all three losses
    # (Everlook normalises every output, so it never matters at inference).
    log_scale = model.modality_postprocessors["text"][1].log_logit_scale
    gen = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, len(scenes), (args.batch,), generator=gen).tolist()
        batch = [scenes[i] for i in idx]
        shapes = [s.shape for s in batch]
        # Each picture's partner: a random sound of its shape.
        sidx = [by_shape[s][rng.randrange(len(by_shape[s]))] for s in shapes]
        # Fresh wording every time a picture is drawn: the model learns meaning, not phrasing.
        captions = [synthworld.caption_with_facts(s, rng) for s in batch]
        texts = [c for c, _ in captions] + [sound_caption(s, rng) for s in shapes]
        # Each distinct text once (sound captions repeat a lot), then spread out again.
        unique = list(dict.fromkeys(texts))
        where = {t: i for i, t in enumerate(unique)}
        # A mirrored picture is another picture of the same world (every shape reads the
        # same mirrored; the images are square, so mirroring commutes with the transform).
        x = images[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        out = model({"vision": to_normalised(x), "text": tokens(unique),
                     "audio": mels[sidx]})  # fmt: skip
        img, txt_u, aud = (F.normalize(out[k], dim=-1) for k in ("vision", "text", "audio"))
        txt = txt_u[[where[t] for t in texts]]
        scale = log_scale.exp().clamp(max=100)
        caption_fits = torch.tensor([[synthworld.matches(s, f) for _, f in captions]
                                     for s in batch])  # fmt: skip
        same_shape = torch.tensor([[a == b for b in shapes] for a in shapes])
        loss_it = soft_infonce(img, txt[: args.batch], scale, caption_fits)
        # Sound captions name only a shape: a pure shape signal for the picture tower,
        # which learns colour long before shape.
        loss_is = soft_infonce(img, txt[args.batch :], scale, same_shape)
        loss_ai = soft_infonce(aud, img, scale, same_shape)
        loss_at = soft_infonce(aud, txt, scale, torch.cat([same_shape, same_shape], 1))
        loss = loss_it + loss_is + loss_ai + loss_at
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            log_scale.clamp_(0, math.log(100))
        if step % 25 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d}/{args.steps} loss {loss.item():.3f} (image-caption "
                f"{loss_it.item():.3f} image-sound caption {loss_is.item():.3f} "
                f"audio-image {loss_ai.item():.3f} audio-text "
                f"{loss_at.item():.3f}) scale {scale.item():5.1f} lr {lr_at(step):.2e} "
                f"{(time.time() - t0) / 60:5.1f} min",
                flush=True,
            )
    train_minutes = (time.time() - t0) / 60

    model.eval()
    # fp16 halves the file; Everlook's loader casts back to float32 and loads strict.
    state = {k: v.detach().half() if v.is_floating_point() else v.detach()
             for k, v in model.state_dict().items()}  # fmt: skip
    torch.save(state, weights)
    size = weights.stat().st_size
    total_minutes = (time.time() - t_start) / 60
    print(f"saved {weights} ({size / 1e6:.1f} MB, fp16); {train_minutes:.1f} min training, "
          f"{total_minutes:.1f} min in all", flush=True)  # fmt: skip

    from tools.eval_demo_imagebind import evaluate

    res = evaluate(checkpoint=weights)
    from importlib.metadata import version

    (args.out / "training.json").write_text(json.dumps({
        "model": MODEL, "steps": args.steps, "batch": args.batch,
        "train_images": args.train_images, "sounds_per_shape": args.sounds_per_shape,
        "lr": args.lr, "seed": args.seed, "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint_bytes": size, "prepare_minutes": round(prep_minutes, 1),
        "train_minutes": round(train_minutes, 1), "total_minutes": round(total_minutes, 1),
        "torch": torch.__version__, "imagebind": version("imagebind-unofficial"),
        "eval": {k: round(v, 4) for k, v in res.items()},
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
