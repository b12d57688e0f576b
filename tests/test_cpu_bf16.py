"""Pictures in bfloat16 through PyTorch on a CPU with AMX, where OpenVINO is missing (with
it, tests/test_clip_bf16.py): taken only where the CPU has the units and the vectors agree
with fp32 (cosine >= 0.999), else ONNX Runtime in fp32 as before.

bf16 runs on any CPU (slowly without AMX), so the AMX probes are patched here and the
tests hold on every machine; bench/index_throughput.py measures the speed where AMX is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.embedders import clip as clip_mod
from search.embedders.clip import OpenClipEmbedder
from tests.helpers import picture

DEMO, DEMO_TAG = "everlook-demo", "v1"  # trained weights: real activations, not noise


@pytest.fixture
def amx(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from search.embedders import clip_bf16

    # PyTorch runs bf16 only where OpenVINO cannot (tests/test_clip_bf16.py): as if absent.
    monkeypatch.setattr(clip_bf16, "openvino_version", lambda: None)
    monkeypatch.setattr(clip_mod, "cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)


def embedder(tmp_path: Path, device: str = "cpu", **kw: Any) -> OpenClipEmbedder:
    return OpenClipEmbedder(DEMO, DEMO_TAG, device=device, cache_dir=tmp_path / "models", **kw)


def pictures() -> list[Any]:
    return [picture(seed, (160 + 7 * seed, 120)) for seed in range(6)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("device", ["cpu", "auto"])  # auto: the default setting
def test_pictures_run_in_bf16_where_amx_is_and_agree_with_fp32(
    amx: None, tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch
):
    import torch

    from search.gpu import input_dtype

    if device == "auto":  # as on a machine without a GPU, wherever the suite runs
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fast = embedder(tmp_path, device=device, cpu_bf16=True)
    got = fast.embed_images(pictures())
    assert fast._images_by_torch()
    assert input_dtype(fast.load()[0]) == torch.bfloat16
    from search.embedders.clip_cache import Artifact

    onnx = fast._onnx()
    assert onnx is not None and "image" not in onnx._towers, "no ONNX image tower beside"
    assert Artifact(onnx.folder, "image").valid(fast._weights_stamp()) is None
    # The text tower is exported from the fp32 model, for queries without torch.
    assert Artifact(onnx.folder, "text").valid(fast._weights_stamp())["status"] == "ok"
    ref = embedder(tmp_path, backend="torch", cpu_bf16=False).embed_images(pictures())
    c = cosines(got, ref)
    assert c.min() >= 0.999 and c.min() < 1.0 - 1e-7, c  # bf16 itself, and close to fp32
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)


def test_a_refused_gate_leaves_pictures_on_onnx_runtime_in_fp32(
    amx: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import search.gpu

    monkeypatch.setattr(search.gpu, "_min_cosine", lambda a, b: 0.99)  # below the bar
    emb = embedder(tmp_path, cpu_bf16=True)
    got = emb.embed_images(pictures()[:2])
    assert not emb._images_by_torch()
    assert emb._onnx_state, "the pictures went to ONNX Runtime"
    ref = embedder(tmp_path, backend="torch", cpu_bf16=False).embed_images(pictures()[:2])
    assert cosines(got, ref).min() >= 0.9999


def test_without_amx_or_when_switched_off_nothing_changes(tmp_path: Path, monkeypatch):
    import torch

    monkeypatch.setattr(clip_mod, "cpu_has_amx_bf16", lambda: False)
    plain = embedder(tmp_path, backend="torch", cpu_bf16=True)
    assert not plain._images_by_torch() and not plain._amx_bf16()
    plain.embed_images(pictures()[:1])
    assert next(plain.load()[0].parameters()).dtype == torch.float32

    monkeypatch.setattr(clip_mod, "cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    off = embedder(tmp_path)  # a bare embedder computes fp32
    assert not off._images_by_torch() and not off._amx_bf16()
    for kw in ({"backend": "onnx"}, {"quantize": "int8"}):  # asked for ONNX Runtime
        assert not embedder(tmp_path, cpu_bf16=True, **kw)._amx_bf16()


def test_the_setting_reaches_the_embedder(env: dict[str, str], monkeypatch):
    from everlook.settings import Settings
    from everlook.wiring import Parts

    monkeypatch.delenv("EVERLOOK_CPU_BF16")
    # Opt-in: bf16 vectors are close to fp32's, not equal (tests/test_clip_bf16.py).
    assert Parts(Settings()).embedder.cpu_bf16 is False
    monkeypatch.setenv("EVERLOOK_CPU_BF16", "true")
    assert Parts(Settings()).embedder.cpu_bf16 is True
