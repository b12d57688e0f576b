"""CLIP on ONNX Runtime: exported towers agree with open_clip, the cache is reused and
repaired, a cached text tower answers without torch, int8 is another model, and the
torch model is built without a random initialisation."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from search.embedders.clip import OpenClipEmbedder
from search.embedders.clip_cache import Artifact
from search.embedders.clip_onnx import PicturePrep
from search.model_base import BUILTIN_MODELS, ModelUnavailable
from tests.conftest import TINY, TINY_TAG
from tests.helpers import picture, python_alone

DEMO, DEMO_TAG = "everlook-demo", "v1"
DEMO_WEIGHTS = BUILTIN_MODELS / "open_clip" / DEMO / DEMO_TAG / "open_clip_model.safetensors"
PROMPTS = [
    "a red circle",
    "two blue squares on a striped background",
    "",
    "Three small yellow stars, watercolour!!",
    "a very long caption that goes on " * 12,  # cut at the demo's 32 tokens
]
SIZES = [(64, 64), (200, 120), (120, 200), (640, 80), (33, 47), (1000, 999), (65, 64)]


def onnx_embedder(cache: Path, **kw: Any) -> OpenClipEmbedder:
    kw.setdefault("backend", "onnx")
    return OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", cache_dir=cache, **kw)


def folder_of(emb: OpenClipEmbedder) -> Path:
    onnx = emb._onnx()
    assert onnx is not None
    return onnx.folder


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reference() -> Any:
    """open_clip's own model, transform and tokenizer for the demo weights."""
    import open_clip

    from search.embedders.clip_weights import register_configs

    register_configs(None)
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO, pretrained=str(DEMO_WEIGHTS))
    return model.eval(), preprocess, open_clip.get_tokenizer(DEMO)


def ref_texts(reference: Any, texts: list[str]) -> np.ndarray:
    import torch

    model, _, tokenizer = reference
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True).numpy()


def ref_images(reference: Any, images: list[Image.Image]) -> np.ndarray:
    import torch

    model, preprocess, _ = reference
    with torch.no_grad():
        x = torch.stack([preprocess(im) for im in images])
        return model.encode_image(x, normalize=True).numpy()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models cache holding the demo's exported towers (exported once per module)."""
    root = tmp_path_factory.mktemp("models")
    emb = onnx_embedder(root)
    emb.embed_images([picture(0)])  # exports the image tower, and the text tower with it
    assert emb._onnx().exports == 1  # type: ignore[union-attr]
    return root


def copy_of(cache: Path, tmp_path: Path) -> Path:
    shutil.copytree(cache, tmp_path / "models")
    return tmp_path / "models"


# ---- parity with open_clip ---------------------------------------------------------------
def test_the_fp32_text_tower_agrees_with_open_clip_on_prompts_of_every_length(cache, reference):
    emb = onnx_embedder(cache)
    got = emb.embed_texts(PROMPTS)
    assert got.dtype == np.float32 and got.shape == (len(PROMPTS), 128)
    assert cosines(got, ref_texts(reference, PROMPTS)).min() >= 0.9999
    info = Artifact(folder_of(emb), "text").read()
    assert info is not None and info["status"] == "ok" and info["min_cosine"] >= 0.9999
    assert (info["exporter"], info["opset"], info["model_id"]) == ("dynamo", 18, emb.model_id)
    assert info["trim"] is True, "prompts run only up to their end-of-text token"


def test_the_fp32_image_tower_agrees_with_open_clip_on_pictures_of_every_shape(cache, reference):
    emb = onnx_embedder(cache)
    images = [picture(i, size) for i, size in enumerate(SIZES)]
    got = emb.embed_images(images)
    assert got.shape == (len(images), 128)
    assert cosines(got, ref_images(reference, images)).min() >= 0.9999
    info = Artifact(folder_of(emb), "image").read()
    assert info is not None and info["status"] == "ok" and info["preprocess"]["size"] == 64


def test_the_pipelines_contract_holds_preprocess_in_threads_then_a_batch(cache, reference):
    from concurrent.futures import ThreadPoolExecutor

    emb = onnx_embedder(cache)
    images = [picture(i, (150, 100)) for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        prepared = list(pool.map(emb.preprocess, images))
    assert all(isinstance(p, np.ndarray) and p.shape == (3, 64, 64) for p in prepared)
    got = emb.embed_preprocessed(prepared)
    assert cosines(got, ref_images(reference, images)).min() >= 0.9999
    # open_clip's tensors are taken too (bench/index_throughput.py feeds them).
    _, preprocess, _ = reference
    again = emb.embed_preprocessed([preprocess(im) for im in images])
    assert cosines(again, got).min() >= 0.99999


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_numpy_preprocessing_equals_open_clips_transform(mode: str) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    configs = [
        {"size": 64, "interpolation": "bicubic", "mean": [0.48145466, 0.4578275, 0.40821073],
         "std": [0.26862954, 0.26130258, 0.27577711]},
        {"size": 224, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
         "std": [0.5, 0.5, 0.5]},
    ]  # fmt: skip
    for cfg in configs:
        ours = PicturePrep.from_cfg({**cfg, "resize_mode": "shortest"})
        assert ours is not None
        theirs = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        for i, size in enumerate([*SIZES, (224, 224), (225, 224), (3000, 2000), (1, 500)]):
            img = picture(i, size).convert(mode)
            want = theirs(img).numpy()
            got = ours(img)
            assert got.shape == want.shape and got.dtype == np.float32
            assert float(np.abs(got - want).max()) <= 1e-5, (cfg["size"], size, mode)


def test_other_resize_modes_and_non_square_inputs_keep_open_clips_transform() -> None:
    base = {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert PicturePrep.from_cfg({**base, "resize_mode": "shortest"}) is not None
    assert PicturePrep.from_cfg({**base, "resize_mode": "longest"}) is None
    assert PicturePrep.from_cfg({**base, "resize_mode": "squash"}) is None
    assert PicturePrep.from_cfg({**base, "size": [224, 256]}) is None
    assert PicturePrep.from_cfg({**base, "interpolation": "lanczos"}) is None


# ---- the cache ---------------------------------------------------------------------------
def test_a_second_embedder_reuses_the_cached_towers_without_exporting(cache):
    folder = folder_of(onnx_embedder(cache))
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    emb = onnx_embedder(cache)
    emb.embed_texts(["a green moon"])
    emb.embed_images([picture(1)])
    assert emb._onnx().exports == 0  # type: ignore[union-attr]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_cache_is_keyed_by_model_id_and_runtime_version(cache):
    import onnxruntime

    folder = folder_of(onnx_embedder(cache))
    assert folder.name == f"ort-{onnxruntime.__version__}"
    assert folder.parent.parent == cache / "onnx"
    assert folder.parent.name.startswith("open_clip_everlook-demo_v1-")


def test_each_tower_is_a_graph_and_one_weights_file_that_its_sidecar_names(cache):
    folder = folder_of(onnx_embedder(cache))
    for tower in ("text", "image"):
        info = Artifact(folder, tower).read()
        assert info is not None
        data = list(folder.glob(f"{tower}.onnx.*.data"))
        assert [p.name for p in data] == [info["data"]]
        assert data[0].stat().st_size == info["data_size"] > 1_000_000  # the weights
        graph = (folder / f"{tower}.onnx").stat().st_size
        assert graph == info["size"] < info["data_size"] / 10


@pytest.mark.slow
def test_a_truncated_cached_tower_is_exported_again_not_crashed_on(cache, tmp_path, reference):
    root = copy_of(cache, tmp_path)
    text = Artifact(folder_of(onnx_embedder(root)), "text")
    weights = text.folder / str((text.read() or {})["data"])
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:  # an interrupted copy of the models cache
        fh.truncate(size // 3)
    emb = onnx_embedder(root)
    got = emb.embed_texts(PROMPTS[:2])
    assert emb._onnx().exports == 1  # type: ignore[union-attr]
    info = text.valid()
    assert info is not None and info["data"] != weights.name and not weights.exists()
    assert cosines(got, ref_texts(reference, PROMPTS[:2])).min() >= 0.9999


def test_a_damaged_tower_of_the_recorded_size_is_exported_again(cache, tmp_path, reference):
    root = copy_of(cache, tmp_path)
    image = Artifact(folder_of(onnx_embedder(root)), "image")
    image.path.write_bytes(b"\0" * image.path.stat().st_size)  # same size, not a model
    emb = onnx_embedder(root)
    images = [picture(3, (90, 70))]
    got = emb.embed_images(images)
    assert emb._onnx().exports == 1  # type: ignore[union-attr]
    assert cosines(got, ref_images(reference, images)).min() >= 0.9999


@pytest.mark.slow
def test_new_weights_under_the_same_model_id_are_exported_again(tmp_path):
    weights = tmp_path / "demo.safetensors"
    shutil.copy(DEMO_WEIGHTS, weights)

    def emb() -> OpenClipEmbedder:
        return OpenClipEmbedder(
            DEMO, str(weights), device="cpu", backend="onnx", cache_dir=tmp_path / "models"
        )

    first = emb()
    first.embed_texts(["a red circle"])
    assert first._onnx().exports == 1  # type: ignore[union-attr]
    second = emb()
    second.embed_texts(["a red circle"])
    assert second._onnx().exports == 0  # type: ignore[union-attr]
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    third = emb()
    third.embed_texts(["a red circle"])
    assert third._onnx().exports == 1  # type: ignore[union-attr]


@pytest.mark.slow
def test_two_processes_exporting_the_same_model_at_once_leave_one_good_copy(tmp_path):
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from search.embedders.clip import OpenClipEmbedder\n"
        f"e = OpenClipEmbedder({DEMO!r}, {DEMO_TAG!r}, device='cpu', backend='onnx',"
        " cache_dir=Path(sys.argv[1]))\n"
        "print(json.dumps(e.embed_texts(['a red circle'])[0].tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    root = tmp_path / "models"
    cmd = [sys.executable, "-c", code, str(root)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, **pipes) for _ in range(2)]
    outs = [p.communicate(timeout=280) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    a, b = (np.array(json.loads(out)) for out, _ in outs)
    assert float(a @ b) >= 0.99999
    folder = next(root.glob("onnx/*/ort-*"))
    assert Artifact(folder, "text").valid() is not None
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---- the torch-free query ----------------------------------------------------------------
def test_a_fresh_process_answers_a_text_query_without_torch_or_open_clip(
    cache, tmp_path, reference
):
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from search.embedders.clip import OpenClipEmbedder\n"
        f"e = OpenClipEmbedder({DEMO!r}, {DEMO_TAG!r}, device='auto', backend='auto',"
        f" cache_dir=Path({str(cache)!r}))\n"
        "ready = e.text_ready()\n"
        "v = e.embed_texts(['two blue squares on a striped background'])[0]\n"
        "heavy = [m for m in ('torch', 'open_clip') if m in sys.modules]\n"
        "print(json.dumps({'ready': ready, 'heavy': heavy, 'vector': v.tolist()}))\n"
    )
    res = python_alone(code, tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ready"] is True and out["heavy"] == []
    want = ref_texts(reference, ["two blue squares on a striped background"])
    assert cosines(np.array([out["vector"]], np.float32), want)[0] >= 0.9999
    torch_path = OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", backend="torch")
    assert cosines(np.array([out["vector"]], np.float32), torch_path.embed_texts(
        ["two blue squares on a striped background"]))[0] >= 0.9999  # fmt: skip


def test_a_text_tower_not_yet_exported_is_not_ready(tmp_path):
    emb = onnx_embedder(tmp_path / "models")
    assert emb.text_ready() is False
    assert OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", backend="torch").text_ready() is False


def test_recent_queries_answer_from_memory(cache, monkeypatch):
    emb = onnx_embedder(cache)
    first = emb.embed_texts(["a pink star"])
    onnx = emb._onnx()
    assert onnx is not None
    monkeypatch.setattr(onnx, "embed_texts", lambda texts: pytest.fail("ran the tower"))
    again = emb.embed_texts(["a pink star"])
    assert np.array_equal(first, again) and again is not first
    again[0, 0] = 42.0  # a caller's change does not reach the memory
    assert emb.embed_texts(["a pink star"])[0, 0] == first[0, 0]


# ---- int8 ----------------------------------------------------------------------------------
def test_int8_towers_agree_with_fp32_and_are_another_model(cache, tmp_path):
    root = copy_of(cache, tmp_path)
    fp32 = onnx_embedder(root)
    int8 = onnx_embedder(root, quantize="int8")
    assert int8.model_id == fp32.model_id + "+onnx-int8"
    images = [picture(i, (120, 90)) for i in range(4)]
    assert cosines(int8.embed_texts(PROMPTS), fp32.embed_texts(PROMPTS)).min() >= 0.99
    assert cosines(int8.embed_images(images), fp32.embed_images(images)).min() >= 0.99
    assert int8._onnx().exports == 0, "quantised from the cached fp32 towers, no torch"  # type: ignore[union-attr]
    for tower in ("text", "image"):
        info = Artifact(folder_of(int8), tower, "int8").read()
        assert info is not None and info["min_cosine_vs_fp32"] >= 0.99
        assert info["from"] == Artifact(folder_of(int8), tower).read()["export_id"]  # type: ignore[index]


def test_int8_or_onnx_without_a_cache_folder_or_with_torch_is_refused(tmp_path):
    with pytest.raises(ValueError):
        OpenClipEmbedder(DEMO, DEMO_TAG, backend="torch", quantize="int8", cache_dir=tmp_path)
    with pytest.raises(ValueError):
        OpenClipEmbedder(DEMO, DEMO_TAG, backend="onnx")
    with pytest.raises(ValueError):
        OpenClipEmbedder(DEMO, DEMO_TAG, backend="tensorrt", cache_dir=tmp_path)


# ---- choosing the backend ------------------------------------------------------------------
def test_auto_runs_onnx_on_a_cpu_and_torch_without_a_cache_folder(tmp_path):
    assert OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", cache_dir=tmp_path)._onnx() is not None
    assert OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu")._onnx() is None
    assert OpenClipEmbedder(DEMO, DEMO_TAG, device="cuda", cache_dir=tmp_path)._onnx() is None
    torch_only = OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", backend="torch", cache_dir=tmp_path)
    assert torch_only._onnx() is None
    torch_only.embed_texts(["a red circle"])
    assert not (tmp_path / "onnx").exists()


@pytest.mark.slow
def test_a_tower_that_fails_the_parity_check_stays_on_torch_and_is_not_checked_again(
    tmp_path, monkeypatch, caplog, reference
):
    import search.embedders.clip_export as export

    monkeypatch.setattr(export, "FP32_MIN_COSINE", 1.5)  # no export can pass
    root = tmp_path / "models"
    emb = OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", backend="auto", cache_dir=root)
    with caplog.at_level(logging.WARNING):
        got = emb.embed_texts(PROMPTS[:2])
    assert "PyTorch runs it" in caplog.text
    assert cosines(got, ref_texts(reference, PROMPTS[:2])).min() >= 0.99999
    info = Artifact(folder_of(emb), "text").read()
    assert info is not None and info["status"] == "fallback" and info["min_cosine"] > 0.9999
    assert not Artifact(folder_of(emb), "text").path.exists()
    again = OpenClipEmbedder(DEMO, DEMO_TAG, device="cpu", backend="auto", cache_dir=root)
    again.embed_texts(PROMPTS[:1])
    onnx = again._onnx()
    assert onnx is not None and onnx.exports == 0 and onnx.tower("text") is None
    assert not again.text_ready()
    with pytest.raises(ModelUnavailable, match="EVERLOOK_CLIP_QUANTIZE"):
        onnx_embedder(root, quantize="int8").embed_texts(["x"])


# ---- a model built without a random initialisation -----------------------------------------
def test_weights_are_assigned_to_a_model_built_on_the_meta_device(model_dir, monkeypatch):
    """No init function touches real memory while the model loads (they would raise),
    and every loaded tensor equals the checkpoint's."""
    import torch

    from search.embedders.clip_weights import load_model, register_configs

    register_configs(model_dir)

    def only_meta(fn: Any) -> Any:
        def guarded(tensor: Any, *args: Any, **kw: Any) -> Any:
            if not tensor.is_meta:
                raise AssertionError(f"{fn.__name__} initialised real weights")
            return fn(tensor, *args, **kw)

        return guarded

    for name in ("normal_", "trunc_normal_", "uniform_", "kaiming_uniform_", "constant_",
                 "zeros_", "ones_", "xavier_uniform_"):  # fmt: skip
        monkeypatch.setattr(torch.nn.init, name, only_meta(getattr(torch.nn.init, name)))
    ckpt = model_dir / "open_clip" / TINY / TINY_TAG / "open_clip_model.pt"
    model, transform, _ = load_model.__wrapped__(TINY, str(ckpt), TINY_TAG, None, "cpu")
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    n = model.context_length
    assert torch.equal(model.attn_mask, torch.full((n, n), float("-inf")).triu(1))
    assert transform is not None


def test_a_half_precision_checkpoint_loads_as_float32_equal_to_open_clips_load(reference):
    import torch

    from search.embedders.clip_weights import build_without_init

    model, _ = build_without_init(DEMO, str(DEMO_WEIGHTS), {}, "cpu")
    ref_state = reference[0].state_dict()
    for key, value in model.state_dict().items():
        assert value.dtype == ref_state[key].dtype, key
        assert torch.equal(value, ref_state[key]), key


@pytest.mark.slow
def test_a_vit_with_the_full_77_token_context_agrees_with_open_clip(model_dir, tmp_path):
    """The tiny ViT (legacy-exported image tower, 77 tokens) as well as the demo's ResNet."""
    import torch

    emb = OpenClipEmbedder(TINY, TINY_TAG, model_dir=model_dir, device="cpu", backend="onnx",
                           cache_dir=tmp_path / "models")  # fmt: skip
    ref = OpenClipEmbedder(TINY, TINY_TAG, model_dir=model_dir, device="cpu", backend="torch")
    texts = ["a dog on a beach", "word " * 100, ""]
    images = [picture(i, size) for i, size in enumerate(SIZES)]
    assert cosines(emb.embed_texts(texts), ref.embed_texts(texts)).min() >= 0.9999
    assert cosines(emb.embed_images(images), ref.embed_images(images)).min() >= 0.9999
    tokens = ref.load()[2](texts)
    with torch.no_grad():
        padded = ref.model.encode_text(tokens, normalize=True).numpy()
    assert cosines(emb.embed_texts(texts), padded).min() >= 0.9999
    assert Artifact(folder_of(emb), "image").read()["exporter"] == "legacy"  # type: ignore[index]


def test_the_image_tower_opens_ahead_of_the_first_batch(tmp_path: Path, monkeypatch):
    """The pipeline opens the image session in a thread while the first pictures decode;
    a failure there is left for the first batch to meet (and report) instead."""
    from search.embedders import clip_onnx

    emb = onnx_embedder(tmp_path / "models")
    emb.warm_images()
    onnx = emb._onnx()
    assert onnx is not None and isinstance(onnx._towers.get("image"), clip_onnx.Tower)
    assert onnx._prep is not False  # the decoders' preprocessing is read first

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("no session today")

    monkeypatch.setattr(clip_onnx, "session", broken)
    fresh = onnx_embedder(tmp_path / "models", backend="onnx")
    fresh.warm_images()  # no exception: logged, left to the batch
    with pytest.raises(Exception, match="no session today"):
        fresh.embed_images([picture(1)])
