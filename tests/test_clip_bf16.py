"""Pictures in bfloat16 through OpenVINO on CPUs that multiply bf16 natively (AVX512-BF16,
AMX), opt-in: used only where its vectors agree with the fp32 tower at half precision's
bar (cosine >= 0.999), the verdict remembered per export, OpenVINO version and CPU;
refused, damaged or switched off, pictures stay on ONNX Runtime in fp32.

These run OpenVINO for real on the project's trained demo model (real activations). The
CPU feature is read from /proc/cpuinfo; tests that need bf16 kernels skip, saying so, on
a CPU whose OpenVINO plugin offers none. bench/index_throughput.py and bench/vs_rclip.py
measure the speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.embedders import clip_bf16, clip_onnx
from search.embedders.clip import OpenClipEmbedder
from tests.helpers import picture

DEMO, DEMO_TAG = "everlook-demo", "v1"


def _ov_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


needs_bf16 = pytest.mark.skipif(
    not _ov_has_bf16(), reason="OpenVINO's CPU plugin has no bf16 kernels on this CPU"
)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a CPU that announces bf16 (OpenVINO's own capability decides the rest)."""
    monkeypatch.setattr(clip_bf16, "native_bf16", lambda: "avx512_bf16")


def embedder(tmp_path: Path, **kw: Any) -> OpenClipEmbedder:
    kw.setdefault("device", "cpu")
    return OpenClipEmbedder(DEMO, DEMO_TAG, cache_dir=tmp_path / "models", **kw)


def pictures() -> list[Any]:
    return [picture(seed, (160 + 9 * seed, 120 + 5 * seed)) for seed in range(8)]


def image_tower(emb: OpenClipEmbedder) -> Any:
    onnx = emb._onnx()
    assert onnx is not None
    return onnx._towers["image"]


def verdict(emb: OpenClipEmbedder) -> dict[str, Any]:
    onnx = emb._onnx()
    assert onnx is not None
    return json.loads(clip_bf16.verdict_file(onnx.folder).read_text())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_bf16
def test_pictures_run_in_bf16_through_openvino_and_agree_with_fp32(native: None, tmp_path):
    fast = embedder(tmp_path, cpu_bf16=True)
    got = fast.embed_images(pictures())
    assert isinstance(image_tower(fast), clip_bf16.OvTower)
    v = verdict(fast)
    assert v["use"] is True and v["bar"] == 0.999 and v["cpu"] == "avx512_bf16"
    assert v["min_cosine"] >= 0.999 and v["probes"] == clip_bf16.PROBES
    assert v["from"] == fast._onnx()._towers["image"].info["export_id"]  # type: ignore[union-attr]
    ref = embedder(tmp_path, cpu_bf16=False).embed_images(pictures())
    c = cosines(got, ref)
    assert c.min() >= 0.999, c  # on pictures the gate never saw (~0.9996 here)
    assert c.min() < 1.0 - 1e-7, "bf16 itself, not fp32 again"
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert fast.model_id == embedder(tmp_path, cpu_bf16=False).model_id  # same vectors' id


@needs_bf16
def test_a_later_process_reads_the_verdict_and_opens_no_fp32_session(
    native: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first = embedder(tmp_path, cpu_bf16=True).embed_images(pictures()[:3])

    def no_fp32(*a: Any, **k: Any) -> Any:
        raise AssertionError("the fp32 image session was opened again")

    monkeypatch.setattr(clip_onnx, "_load_tower", no_fp32)
    again = embedder(tmp_path, cpu_bf16=True)
    got = again.embed_images(pictures()[:3])
    assert isinstance(image_tower(again), clip_bf16.OvTower)
    assert np.allclose(got, first, atol=1e-6)  # the same compiled model (from its cache)
    assert any((again._onnx().folder / "openvino-cache").iterdir())  # type: ignore[union-attr]


def test_a_refused_gate_keeps_fp32_and_is_remembered(
    native: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    if _ov_has_bf16():
        monkeypatch.setattr(clip_bf16, "BF16_MIN_COSINE", 1.01)  # no bf16 can pass this
    emb = embedder(tmp_path, cpu_bf16=True)
    got = emb.embed_images(pictures()[:3])
    assert type(image_tower(emb)) is clip_onnx.Tower
    ref = embedder(tmp_path, cpu_bf16=False).embed_images(pictures()[:3])
    assert np.allclose(got, ref, atol=1e-6)  # fp32, the same as with bf16 off
    if _ov_has_bf16():
        v = verdict(emb)
        assert v["use"] is False and v["min_cosine"] < 1.01

        def no_compile(*a: Any, **k: Any) -> Any:
            raise AssertionError("a refused model was compiled again")

        monkeypatch.setattr(clip_bf16, "compile_bf16", no_compile)
        later = embedder(tmp_path, cpu_bf16=True)
        later.embed_images(pictures()[:1])
        assert type(image_tower(later)) is clip_onnx.Tower
    else:  # OpenVINO refuses to compile bf16 here: a warning, no verdict, fp32 as above
        assert not clip_bf16.verdict_file(emb._onnx().folder).exists()  # type: ignore[union-attr]


@needs_bf16
def test_a_damaged_bf16_model_is_built_again(native: None, tmp_path: Path):
    emb = embedder(tmp_path, cpu_bf16=True)
    first = emb.embed_images(pictures()[:2])
    folder = emb._onnx().folder  # type: ignore[union-attr]
    xml, binary = clip_bf16.ir_files(folder)
    with open(binary, "r+b") as fh:
        fh.truncate(binary.stat().st_size // 2)  # a disk that filled up, a crash mid-copy
    again = embedder(tmp_path, cpu_bf16=True)
    got = again.embed_images(pictures()[:2])
    assert isinstance(image_tower(again), clip_bf16.OvTower)
    assert binary.stat().st_size == verdict(again)["sizes"][1] > 0 and xml.exists()
    assert cosines(got, first).min() >= 0.99999


def test_without_native_bf16_switched_off_or_int8_pictures_stay_on_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(clip_bf16, "native_bf16", lambda: None)
    plain = embedder(tmp_path, cpu_bf16=True)
    plain.embed_images(pictures()[:1])
    assert type(image_tower(plain)) is clip_onnx.Tower
    assert not clip_bf16.verdict_file(plain._onnx().folder).exists()  # type: ignore[union-attr]

    monkeypatch.setattr(clip_bf16, "native_bf16", lambda: "amx_bf16")
    off = embedder(tmp_path, cpu_bf16=False)
    off.embed_images(pictures()[:1])
    assert type(image_tower(off)) is clip_onnx.Tower
    assert off._onnx().bf16 is False  # type: ignore[union-attr]
    int8 = embedder(tmp_path, cpu_bf16=True, quantize="int8")
    assert int8._onnx().bf16 is False  # type: ignore[union-attr]  # its own vectors


def test_the_cpu_feature_is_read_from_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path):
    import builtins

    real_open = builtins.open
    fake = tmp_path / "cpuinfo"

    def fake_open(path: Any, *a: Any, **k: Any) -> Any:
        return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    for flags, want in (
        ("fpu sse avx2 avx512f", None),
        ("fpu avx512f avx512_bf16 avx512_vnni", "avx512_bf16"),
        ("fpu amx_tile amx_bf16 avx512_bf16", "amx_bf16"),
    ):
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert clip_bf16.native_bf16() == want
