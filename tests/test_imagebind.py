"""The ImageBind embedder against upstream's own reference path (imagebind.data + the
model's forward), on the tiny seeded model of the session's model dir.

Tolerances:
- preprocessing (image, 16 kHz mono audio): bit-for-bit. Both sides run the same torch
  operations on the same numbers; only decoding differs, and the tests decode both sides
  with the same library.
- embeddings: cosine >= 0.99999 against upstream's forward. Ours normalises again after
  upstream's logit scaling and clip averaging; float rounding of that is ~1e-7.
- a 44.1 kHz stereo file decoded Everlook's way vs upstream's: a bound on the cosine,
  not equality (see that test for why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from search.embedders import create
from search.embedders.imagebind import (
    DEFAULT_MEL_BINS,
    DEFAULT_OUT_DIM,
    DEFAULT_TARGET_LEN,
    HUGE_CONFIG,
    ImageBindEmbedder,
    upstream,
)
from search.model_base import ModelUnavailable, WeightsUnavailable
from tests.conftest import TINY_IMAGEBIND
from tests.helpers import python_alone

SR = 16000
COSINE = 0.99999


@pytest.fixture(scope="module")
def tiny(model_dir: Path) -> ImageBindEmbedder:
    return ImageBindEmbedder(TINY_IMAGEBIND, model_dir=model_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    """Upstream's ImageBindModel with the same weights, built the upstream way."""
    import torch

    folder = model_dir / "imagebind"
    cfg = json.loads((folder / f"{TINY_IMAGEBIND}.json").read_text())
    net = upstream().models.ImageBindModel(**cfg)
    net.load_state_dict(torch.load(folder / f"{TINY_IMAGEBIND}.pth", weights_only=True))
    return net.eval()


@pytest.fixture
def soundfile_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchaudio.load needs torchcodec on this torchaudio: upstream decodes through
    soundfile instead, into the (channels, samples) float32 tensor torchaudio returns."""
    import torch

    def load(path: Any) -> tuple[Any, int]:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    monkeypatch.setattr(upstream().data.torchaudio, "load", load)


def photo(path: Path, size: tuple[int, int] = (333, 250)) -> Path:
    """A JPEG with edges and gradients (a flat picture would hide resampling errors)."""
    rng = np.random.default_rng(1)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 // w, yy * 255 // h, (xx ^ yy) & 255], axis=-1)
    pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def sound(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    """A chirp with noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.4 * np.sin(2 * np.pi * (220 + 300 * t) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def wav(path: Path, samples: np.ndarray, rate: int = SR) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def decoded(path: Path) -> np.ndarray:
    """Everlook's decoding of a 16 kHz mono file (what the indexer hands in)."""
    data, rate = sf.read(path, dtype="float32")
    assert rate == SR and data.ndim == 1
    return np.asarray(data)


def cosines(a: np.ndarray, b: Any) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def test_image_preprocessing_is_upstreams_transform_bit_for_bit(
    tiny: ImageBindEmbedder, tmp_path: Path
) -> None:
    import torch

    files = [photo(tmp_path / "wide.jpg"), photo(tmp_path / "tall.jpg", (199, 401))]
    theirs = upstream().data.load_and_transform_vision_data([str(f) for f in files], "cpu")
    ours = torch.stack([tiny.preprocess(Image.open(f).convert("RGB")) for f in files])
    assert ours.shape == (2, 3, 224, 224)
    assert torch.equal(ours, theirs)


def test_audio_preprocessing_is_upstreams_on_a_16khz_mono_wav(
    tiny: ImageBindEmbedder, tmp_path: Path, soundfile_loader: None
) -> None:
    import torch

    # 5.3 s: clips overlap (upstream centres each one in place, a later one sees it);
    # 1 s: shorter than a clip; 12 s: clips far apart.
    files = [wav(tmp_path / f"{s}.wav", sound(s, seed=i)) for i, s in enumerate((5.3, 1.0, 12))]
    theirs = upstream().data.load_and_transform_audio_data([str(f) for f in files], "cpu")
    ours = torch.stack([tiny.preprocess_audio(decoded(f)) for f in files])
    assert ours.shape == (3, 3, 1, 128, 204)
    assert torch.equal(ours, theirs)


def test_a_44khz_stereo_file_decoded_our_way_embeds_close_to_upstreams(
    tiny: ImageBindEmbedder, reference: Any, tmp_path: Path, soundfile_loader: None
) -> None:
    import soxr
    import torch

    # A stereo recording whose right channel is the left one quieter, plus noise.
    left = sound(6.0, rate=44100, seed=3)
    right = 0.7 * left + 0.1 * sound(6.0, rate=44100, seed=4)
    path = wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), rate=44100)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    with torch.inference_mode():
        x = upstream().data.load_and_transform_audio_data([str(path)], "cpu")
        theirs = reference({"audio": x})["audio"]

    def ours(samples: np.ndarray) -> np.ndarray:
        return tiny.embed_audio([soxr.resample(samples, rate, SR).astype(np.float32)])

    # Not equal by design, for two reasons measured apart. Upstream resamples with
    # torchaudio's windowed sinc, Everlook with soxr: on the same channel the two agree
    # to ~3e-5 in cosine (measured 0.99997).
    assert cosines(ours(data[:, 0]), theirs)[0] >= 0.9999
    # Upstream's fbank reads channel 0 alone; Everlook hears both channels (their mean),
    # a different signal whenever they differ: measured 0.9985 on this file, ~0.99 with
    # unrelated channels. A random tiny model says nothing finer about real weights.
    assert cosines(ours(data.mean(axis=1)), theirs)[0] >= 0.99


def test_embeddings_match_upstreams_forward_for_images_texts_and_sounds(
    tiny: ImageBindEmbedder, reference: Any, tmp_path: Path, soundfile_loader: None
) -> None:
    import torch

    data = upstream().data
    pics = [photo(tmp_path / "a.jpg"), photo(tmp_path / "b.jpg", (240, 320))]
    texts = ["a dog barking", "rain on a tin roof", ""]
    sounds = [wav(tmp_path / "a.wav", sound(4.2)), wav(tmp_path / "b.wav", sound(0.7, seed=2))]
    with torch.inference_mode():
        theirs = reference(
            {
                "vision": data.load_and_transform_vision_data([str(p) for p in pics], "cpu"),
                "text": data.load_and_transform_text(texts, "cpu"),
                "audio": data.load_and_transform_audio_data([str(s) for s in sounds], "cpu"),
            }
        )
    ours = {
        "vision": tiny.embed_images([Image.open(p).convert("RGB") for p in pics]),
        "text": tiny.embed_texts(texts),
        "audio": tiny.embed_audio([decoded(s) for s in sounds]),
    }
    for key, vectors in ours.items():
        assert cosines(vectors, theirs[key]).min() >= COSINE, key


def test_vectors_are_unit_float32_rows_of_a_dimension_known_before_loading(
    model_dir: Path,
) -> None:
    emb = create("imagebind", model_name=TINY_IMAGEBIND, model_dir=model_dir, device="cpu")
    assert (emb.dim, emb.model_id) == (32, f"imagebind/{TINY_IMAGEBIND}")
    assert not emb.loaded
    pics = [Image.new("RGB", (64, 48), c) for c in ("red", "navy", "olive")]
    for vectors, n in (
        (emb.embed_images(pics), 3),
        (emb.embed_texts(["one", "two"]), 2),
        (emb.embed_audio([sound(2.5), sound(9.0)]), 2),
        (emb.embed_texts([]), 0),
        (emb.embed_images([]), 0),
        (emb.embed_audio([]), 0),
    ):
        assert vectors.shape == (n, emb.dim) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_imagebind_huge_is_known_without_torch_as_upstream_builds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inspect

    models = upstream().models
    defaults = inspect.signature(models.ImageBindModel).parameters
    built: dict[str, Any] = {}
    # Capture what imagebind_huge passes, instead of building 1.2 billion parameters.
    monkeypatch.setattr(models, "ImageBindModel", lambda **kw: built.update(kw))
    models.imagebind_huge(pretrained=False)
    assert built == HUGE_CONFIG
    emb = ImageBindEmbedder()
    assert (emb.dim, emb.mel_bins, emb.mel_frames) == (
        1024,
        defaults["audio_num_mel_bins"].default,
        defaults["audio_target_len"].default,
    )
    # The defaults Everlook assumes for a config that leaves them out are upstream's.
    assert tuple(
        defaults[k].default for k in ("out_embed_dim", "audio_num_mel_bins", "audio_target_len")
    ) == (DEFAULT_OUT_DIM, DEFAULT_MEL_BINS, DEFAULT_TARGET_LEN)


def test_offline_without_weights_says_which_file_to_put_where_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import search.embedders.imagebind as ib

    work, models = tmp_path / "work", tmp_path / "models"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(ib, "offline_reason", lambda host: f"cannot resolve {host}")
    monkeypatch.setattr(ib, "download", pytest.fail)
    emb = ImageBindEmbedder(model_dir=models, cache_dir=tmp_path / "cache" / "imagebind")
    with pytest.raises(WeightsUnavailable) as err:
        emb.load()
    text = str(err.value)
    assert "imagebind_huge.pth" in text and "EVERLOOK_MODEL_DIR" in text
    assert f"{models}/imagebind/imagebind_huge.pth" in text
    assert list(work.iterdir()) == [] and not (tmp_path / "cache").exists()


def test_a_half_precision_checkpoint_given_by_path_loads_as_float32(
    model_dir: Path, tmp_path: Path, tiny: ImageBindEmbedder
) -> None:
    import torch

    src = model_dir / "imagebind" / TINY_IMAGEBIND
    state = torch.load(src.with_suffix(".pth"), weights_only=True)
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "mine.pth")
    (tmp_path / "mine.json").write_bytes(src.with_suffix(".json").read_bytes())
    emb = ImageBindEmbedder(str(tmp_path / "mine.pth"), device="cpu")
    assert emb.model_id == "imagebind/mine"
    ours = emb.embed_texts(["a bell"])
    assert ours.dtype == np.float32
    assert cosines(ours, tiny.embed_texts(["a bell"]))[0] >= 0.999  # fp16 rounding only


def test_a_checkpoint_of_another_architecture_or_an_unknown_name_stops_loading(
    model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "imagebind"
    folder.mkdir()
    cfg = json.loads((model_dir / "imagebind" / f"{TINY_IMAGEBIND}.json").read_text())
    (folder / "other.json").write_text(json.dumps({**cfg, "text_num_blocks": 2}))
    (folder / "other.pth").write_bytes(
        (model_dir / "imagebind" / f"{TINY_IMAGEBIND}.pth").read_bytes()
    )
    with pytest.raises(ModelUnavailable, match="Missing key"):
        ImageBindEmbedder("other", model_dir=tmp_path, device="cpu").load()
    with pytest.raises(ModelUnavailable, match="unknown ImageBind model 'nope'"):
        _ = ImageBindEmbedder("nope", model_dir=tmp_path).dim


def test_importing_the_module_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from search.embedders import create\n"
        "emb = create('imagebind')\n"
        "print(emb.dim, emb.model_id, sorted(emb.modalities))\n"
        "assert not [m for m in ('torch', 'torchaudio', 'imagebind') if m in sys.modules]\n"
    )
    res = python_alone(code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:2] == ["1024", "imagebind/imagebind_huge"]


def test_very_short_sounds_embed_and_empty_or_broken_ones_are_refused(
    tiny: ImageBindEmbedder,
    tmp_path: Path,
    soundfile_loader: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import torch

    path = wav(tmp_path / "blip.wav", sound(0.05))
    blip = decoded(path)
    kept = blip.copy()
    ours = tiny.preprocess_audio(blip)
    assert np.array_equal(blip, kept)  # upstream centres in place; never the caller's array
    theirs = upstream().data.load_and_transform_audio_data([str(path)], "cpu")
    assert torch.equal(ours, theirs[0])
    caplog.clear()
    # Ten samples: shorter than one 25 ms analysis window, where upstream divides by zero.
    click = tiny.preprocess_audio(sound(0.05)[:10])
    assert click.shape == (3, 1, 128, 204) and bool(torch.isfinite(click).all())
    assert np.isfinite(tiny.embed_audio_preprocessed([click])).all()
    assert "Large gap" not in caplog.text  # expected of short sounds: not logged per clip
    for bad in (np.zeros(0, np.float32), np.zeros((2, 800), np.float32), np.full(800, np.nan)):
        with pytest.raises(ValueError):
            tiny.preprocess_audio(bad)
