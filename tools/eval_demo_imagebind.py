"""Evaluate `everlook-demo-imagebind` on held-out pictures and sounds; one figure per line.

Loads the model exactly as Everlook does (the registry's `imagebind` embedder, which
finds everlook-demo-imagebind.json/.pth among the weights Everlook ships, and prepares
every input with upstream's code). Nothing here was seen in training: pictures use
synthworld.EVAL_SEED_BASE and up (as tools/eval_demo_model.py), sounds a range of their
own above it.

  sound_to_image_recall@1   a held-out sound as the query, held-out pictures of every
                            colour-shape pair as the gallery: a hit when the top picture
                            shows the sound's shape
  sound_to_image_precision@10  the share of the top 10 pictures that show it
  text_to_sound_recall@1    a caption naming a shape as the query (the sound captions
                            of training, "a {shape}" and "{shapes}"), held-out sounds of
                            every shape as the gallery: a hit when the top sound is that
                            shape's
  sound_zero_shot_accuracy  each sound against "the sound of a <shape>" for six shapes
  text_to_image_recall@1    "<colour> <shape>" queries over the pictures, as for CLIP:
                            a hit when the top picture has that colour and shape
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import synthsound, synthworld  # noqa: E402
from tools.eval_demo_model import held_out_pictures  # noqa: E402

MODEL = "everlook-demo-imagebind"
BARS = {"sound_to_image_recall@1": 0.90, "text_to_sound_recall@1": 0.90}
SOUND_SEED_BASE = synthworld.EVAL_SEED_BASE + 800_000  # apart from the picture ranges
QUERY_TEMPLATES = (*synthsound.SOUND_CAPTIONS, "a {shape}", "{shapes}")


def held_out_sounds(per_shape: int) -> list[tuple[np.ndarray, str]]:
    """per_shape sounds of each shape, from seeds training never uses."""
    shapes = [s for _ in range(per_shape) for s in synthworld.SHAPES]
    return [(synthsound.sound(s, random.Random(SOUND_SEED_BASE + i)), s)
            for i, s in enumerate(shapes)]  # fmt: skip


def shape_queries() -> list[tuple[str, str]]:
    return [(t.format(shape=s, shapes=synthworld.plural(s, 2)), s)
            for s in synthworld.SHAPES for t in QUERY_TEMPLATES]  # fmt: skip


def load(checkpoint: Path | None = None):
    from search import embedders

    name = MODEL if checkpoint is None else str(checkpoint)
    return embedders.create("imagebind", model_name=name, device="cpu")


def embed_pictures(emb, images) -> np.ndarray:
    return np.concatenate([emb.embed_images(images[i : i + 64]) for i in range(0, len(images), 64)])


def embed_sounds(emb, waves) -> np.ndarray:
    return np.concatenate([emb.embed_audio(waves[i : i + 32]) for i in range(0, len(waves), 32)])


def top1_hits(sim: np.ndarray, query_labels: list, gallery_labels: list) -> float:
    best = np.argmax(sim, axis=1)
    return float(np.mean([gallery_labels[j] == q for j, q in zip(best, query_labels, strict=True)]))


def precision_at(sim: np.ndarray, query_labels: list, gallery_labels: list, k: int) -> float:
    top = np.argsort(-sim, axis=1)[:, :k]
    return float(np.mean([[gallery_labels[j] == q for j in row]
                          for row, q in zip(top, query_labels, strict=True)]))  # fmt: skip


def sound_to_image(emb, sounds, pictures, snd_vecs=None, img_vecs=None) -> dict[str, float]:
    snd_vecs = embed_sounds(emb, [w for w, _ in sounds]) if snd_vecs is None else snd_vecs
    img_vecs = embed_pictures(emb, [p for p, _ in pictures]) if img_vecs is None else img_vecs
    sim = snd_vecs @ img_vecs.T
    q, g = [s for _, s in sounds], [sc.shape for _, sc in pictures]
    return {"sound_to_image_recall@1": top1_hits(sim, q, g),
            "sound_to_image_precision@10": precision_at(sim, q, g, 10)}  # fmt: skip


def text_to_sound(emb, sounds, snd_vecs=None) -> dict[str, float]:
    snd_vecs = embed_sounds(emb, [w for w, _ in sounds]) if snd_vecs is None else snd_vecs
    queries = shape_queries()
    sim = emb.embed_texts([t for t, _ in queries]) @ snd_vecs.T
    return {"text_to_sound_recall@1": top1_hits(sim, [s for _, s in queries],
                                                [s for _, s in sounds])}  # fmt: skip


def evaluate(
    checkpoint: Path | None = None, n_pictures: int = 576, sounds_per_shape: int = 20
) -> dict[str, float]:
    t0 = time.time()
    emb = load(checkpoint)
    pictures = held_out_pictures(n_pictures)
    sounds = held_out_sounds(sounds_per_shape)
    snd_vecs = embed_sounds(emb, [w for w, _ in sounds])
    img_vecs = embed_pictures(emb, [p for p, _ in pictures])
    res = sound_to_image(emb, sounds, pictures, snd_vecs, img_vecs)
    res.update(text_to_sound(emb, sounds, snd_vecs))

    prompts = emb.embed_texts([f"the sound of a {s}" for s in synthworld.SHAPES])
    guess = np.argmax(snd_vecs @ prompts.T, axis=1)
    res["sound_zero_shot_accuracy"] = float(
        np.mean([synthworld.SHAPES[g] == s for g, (_, s) in zip(guess, sounds, strict=True)])
    )
    pairs = [(c, s) for c in synthworld.COLOURS for s in synthworld.SHAPES
             if (c, s) not in synthworld.HELD_OUT_PAIRS]  # fmt: skip
    sim = emb.embed_texts([f"a {c} {s}" for c, s in pairs]) @ img_vecs.T
    res["text_to_image_recall@1"] = top1_hits(
        sim, pairs, [(sc.colour, sc.shape) for _, sc in pictures]
    )
    print(f"evaluated {len(sounds)} held-out sounds and {len(pictures)} held-out pictures "
          f"with {emb.model_id} in {time.time() - t0:.0f}s")  # fmt: skip
    for name, value in res.items():
        print(f"{name} {value:.4f}")
    missed = [k for k, bar in BARS.items() if res[k] < bar]
    bars = ", ".join(f"{k} >= {v:.2f}" for k, v in BARS.items())
    print(f"bars ({bars}): {'MISSED ' + ', '.join(missed) if missed else 'ok'}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pictures", type=int, default=576)
    ap.add_argument("--sounds-per-shape", type=int, default=20)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a .pth, its .json beside it (default: the shipped model)")  # fmt: skip
    args = ap.parse_args()
    res = evaluate(args.checkpoint, args.pictures, args.sounds_per_shape)
    sys.exit(0 if all(res[k] >= v for k, v in BARS.items()) else 1)


if __name__ == "__main__":
    main()
