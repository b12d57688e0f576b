"""The shipped `everlook-demo-imagebind` model gives sound search real meaning.

A random model ranks at chance (1 in 6 shapes); these tests load the trained model
through the registry, as Everlook does, and check it on held-out sounds and pictures.
"""

from __future__ import annotations

import numpy as np
import pytest

from search.model_base import BUILTIN_MODELS
from tools.eval_demo_imagebind import (
    MODEL,
    embed_pictures,
    embed_sounds,
    held_out_sounds,
    load,
    sound_to_image,
    text_to_sound,
)
from tools.eval_demo_model import held_out_pictures

WEIGHTS = BUILTIN_MODELS / "imagebind" / f"{MODEL}.pth"


@pytest.fixture(scope="module")
def held_out() -> tuple:
    # About 5 s in all (loading, 48 sounds, 96 pictures): no need to mark these slow.
    emb = load()
    sounds = held_out_sounds(per_shape=8)
    pictures = held_out_pictures(96)  # two of every colour-shape pair
    snd = embed_sounds(emb, [w for w, _ in sounds])
    img = embed_pictures(emb, [p for p, _ in pictures])
    return emb, sounds, pictures, snd, img


def test_shipped_checkpoint_is_at_most_25_mb() -> None:
    assert WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size <= 25_000_000
    assert WEIGHTS.with_suffix(".json").is_file()


def test_the_registry_loads_the_demo_model_in_its_own_space(held_out) -> None:
    emb, _, _, snd, img = held_out
    assert emb.model_id == f"imagebind/{MODEL}"
    assert snd.shape[1] == img.shape[1] == emb.dim
    assert np.allclose(np.linalg.norm(snd, axis=1), 1, atol=1e-4)


def test_a_sound_finds_a_picture_of_its_shape_first(held_out) -> None:
    emb, sounds, pictures, snd, img = held_out
    res = sound_to_image(emb, sounds, pictures, snd, img)
    assert res["sound_to_image_recall@1"] >= 0.9


def test_a_caption_naming_a_shape_finds_a_sound_of_that_shape_first(held_out) -> None:
    emb, sounds, _, snd, _ = held_out
    assert text_to_sound(emb, sounds, snd)["text_to_sound_recall@1"] >= 0.9
