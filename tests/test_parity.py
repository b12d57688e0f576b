"""Everlook's embeddings equal open_clip's reference path on the same model.

Reference: ``open_clip.create_model_and_transforms`` -> its ``preprocess`` on the image
as Pillow gives it (EXIF orientation applied) -> ``encode_image`` -> L2 normalise.

Draft decoding (JPEGs decoded by libjpeg at 1/2..1/8 scale, never below twice the
model's input side) is not bit-identical by design. Tolerance: on ViT-B-32 the
preprocessed tensors differ by <= 0.04 mean absolute (normalised units, about 2-3 grey
levels out of 255) and the embeddings by cosine >= 0.9995. Why that is enough: libjpeg's
DCT-domain scaling is itself a low-pass filter, and the bicubic antialiased resize from
>= 2x the input side to the input side averages 4+ source pixels per output pixel, so
what reaches the model differs only in sub-pixel detail. Measured on the shared photos
and generated 12 MP JPEGs: worst cosine 0.99995, worst tensor difference 0.029.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from indexer.media import Limits, decode_image
from tests.conftest import TINY, TINY_TAG
from tests.helpers import picture, save


def reference_model(model_dir: Path) -> tuple[Any, Any]:
    import open_clip

    weights = model_dir / "open_clip" / TINY / TINY_TAG / "open_clip_model.pt"
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=str(weights))
    return model.eval(), preprocess


def reference_embedding(model: Any, preprocess: Any, path: Path) -> np.ndarray:
    import torch

    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    with torch.no_grad():
        out = model.encode_image(preprocess(img).unsqueeze(0))
        out = out / out.norm(dim=-1, keepdim=True)
    return out[0].numpy()


def pipeline_embeddings(parts: Any, lib: Path) -> dict[str, np.ndarray]:
    report = parts.pipeline().run([str(lib)])
    assert report.failed == []
    out = {}
    for path in sorted(lib.rglob("*")):
        if path.is_file():
            item = parts.catalog.item_id_for_path(str(path))
            model_id, blob = parts.catalog.embedding(item, "clip")
            assert model_id == f"open_clip/{TINY}/{TINY_TAG}"
            out[path.name] = np.frombuffer(blob, dtype=np.float32)
    return out


def assert_parity(parts: Any, lib: Path, model_dir: Path) -> int:
    model, preprocess = reference_model(model_dir)
    got = pipeline_embeddings(parts, lib)
    for name, vec in got.items():
        ref = reference_embedding(model, preprocess, lib / name)
        assert abs(np.linalg.norm(vec) - 1) < 1e-5
        cos = float(vec @ ref)
        assert cos >= 0.99999, f"{name}: cosine {cos:.7f} with open_clip's reference"
    return len(got)


def test_generated_images_embed_exactly_as_open_clip_does(parts, tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("EVERLOOK_DRAFT_DECODE", "false")
    lib = tmp_path / "lib"
    for i in range(6):
        save(picture(i, (300 + 37 * i, 200 + 23 * i)), lib / f"g{i}.png")
    save(picture(10, (900, 700)), lib / "big.jpg", quality=92)
    save(picture(11, (64, 64)), lib / "small.webp")
    from everlook.settings import Settings
    from everlook.wiring import Parts

    assert assert_parity(Parts(Settings()), lib, model_dir) == 8


def _plain_rgb(path: Path) -> bool:
    """Images whose correct RGB is simply Pillow's convert('RGB')."""
    try:
        with Image.open(path) as im:
            return (
                im.mode == "RGB"
                and "icc_profile" not in im.info
                and im.format in ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
            )
    except Exception:
        return False


def test_shared_photos_embed_exactly_as_open_clip_does(
    parts, tmp_path, model_dir, shared_images, monkeypatch
):
    monkeypatch.setenv("EVERLOOK_DRAFT_DECODE", "false")
    lib = tmp_path / "lib"
    lib.mkdir()
    chosen = [p for p in sorted(shared_images.iterdir()) if _plain_rgb(p)]
    assert len(chosen) >= 10
    for p in chosen:
        shutil.copy(p, lib / p.name)
    from everlook.settings import Settings
    from everlook.wiring import Parts

    assert assert_parity(Parts(Settings()), lib, model_dir) >= 10


def _draft_pairs(shared: Path | None) -> list[bytes]:
    datas = []
    for seed in range(2):
        buf = io.BytesIO()
        picture(seed, (4000, 3000)).save(buf, "JPEG", quality=90)
        datas.append(buf.getvalue())
    if shared is not None:
        datas += [
            p.read_bytes() for p in sorted(shared.glob("*.jpg")) if p.stat().st_size > 300_000
        ]
    return datas


@pytest.mark.slow
def test_draft_decoding_stays_within_the_stated_tolerance_on_vit_b_32():
    import open_clip
    import torch

    from tests.conftest import SHARED_MEDIA

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    model.eval()
    shared = SHARED_MEDIA / "images"
    datas = _draft_pairs(shared if shared.is_dir() else None)
    limits, checked = Limits(), 0
    for data in datas:
        full = decode_image(data, limits).image
        drafted = decode_image(data, limits, draft_side=2 * 224).image
        assert min(drafted.size) >= 448 or drafted.size == full.size
        a, b = preprocess(full), preprocess(drafted)
        with torch.no_grad():
            ea, eb = model.encode_image(torch.stack([a, b]), normalize=True)
        assert (a - b).abs().mean().item() <= 0.04
        assert float(ea @ eb) >= 0.9995
        checked += drafted.size != full.size
    assert checked >= 2


def test_a_local_copy_of_a_tagged_checkpoint_is_preprocessed_as_the_tag(tmp_path, monkeypatch):
    """The openai tag needs QuickGELU; a local copy of its weights must get it too."""
    import open_clip
    import torch

    from search.embedders.clip import OpenClipEmbedder

    model, tag = "ViT-B-32", "openai"  # the tag that needs QuickGELU and OpenAI stats
    dest = tmp_path / "open_clip" / model / tag
    dest.mkdir(parents=True)
    torch.manual_seed(0)
    ref = open_clip.create_model(model, force_quick_gelu=True)
    torch.save(ref.state_dict(), dest / "open_clip_model.pt")
    emb = OpenClipEmbedder(model, tag, model_dir=tmp_path, device="cpu")
    act = emb.model.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"
    img = picture(3, (300, 200))
    x = emb.preprocess(img)
    with torch.no_grad():
        want = ref.eval().encode_image(x.unsqueeze(0), normalize=True)[0].numpy()
    assert float(emb.embed_images([img])[0] @ want) >= 0.99999


def test_text_embeddings_trimmed_after_the_end_of_text_token_equal_the_padded_ones(parts):
    """Exact under CLIP's causal mask: cutting the padding changes no result."""
    import torch

    from search.embedders.clip import encode_text_trimmed

    model, _, tokenizer = parts.embedder.load()
    texts = ["a dog", "a photo of a very small red bicycle leaning on a brick wall", "x"]
    tokens = tokenizer(texts)
    with torch.inference_mode():
        padded = model.encode_text(tokens, normalize=True)
        trimmed = encode_text_trimmed(model, tokens)
    assert int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1] / 4, "it did trim"
    assert torch.allclose(padded, trimmed, atol=1e-6)
    got = parts.embedder.embed_texts(texts)
    assert np.allclose(got, padded.numpy(), atol=1e-6)
