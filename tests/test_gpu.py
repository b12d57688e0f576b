"""The GPU paths (issue [8] point 7): fp16 towers kept only at parity, JPEG decoding and
preprocessing in batches (nvJPEG on CUDA), FAISS cloned to the GPU, bench/gpu.sh.

Everything the CPU can check runs here: the parity gate's verdicts, the decode path on
device="cpu" (libjpeg) against open_clip's PIL transform, per-item failures, FAISS's
CPU fallback. The same assertions on CUDA run wherever a GPU is present.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from indexer.gpu_decode import decode_preprocess_batch, eval_transform, gpu_decodable, orient
from indexer.media import Limits, _apply_orientation, decode_image
from search.gpu import (
    GpuMirror,
    cuda_available,
    faiss_gpu_available,
    half_if_parity,
    index_to_gpu,
    input_dtype,
    probe_inputs,
    top_k_agreement,
    why_not_on_gpu,
)
from tests.helpers import jpeg_bytes, picture

REPO = Path(__file__).resolve().parent.parent
GPU_SH = REPO / "bench" / "gpu.sh"

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
needs_faiss_gpu = pytest.mark.skipif(
    not faiss_gpu_available(), reason="needs FAISS with GPU support (the gpu extra) and a GPU"
)

# libjpeg on both sides (CPU): pixels within 2 levels of 255 (resampler rounding, worst
# on upscales), on average within 0.05 levels; nvJPEG's IDCT and chroma upsampling are
# its own, so on CUDA the pixel bars are looser and the embedding bar is the same.
CPU_MAX, CPU_MEAN = 2.0 / 255, 0.05 / 255
CUDA_MAX, CUDA_MEAN = 32.0 / 255, 1.5 / 255
MIN_EMBED_COSINE = 0.999


@pytest.fixture(scope="module")
def demo() -> Any:
    """The shipped everlook-demo CLIP (trained weights, 64 px input) on the CPU."""
    from search.embedders.clip import OpenClipEmbedder

    emb = OpenClipEmbedder("everlook-demo", "v1", device="cpu")
    emb.load()
    return emb


def photo(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Hard-edged shapes over a flat ground plus noise: the worst case for resampling."""
    base = np.asarray(picture(seed, size), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 6, (*base.shape[:2], 1))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).convert(mode)


def rotated_jpeg(seed: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(photo(seed, (300, 200)), quality=90, exif=exif.tobytes())


def variety() -> list[bytes]:
    """Sizes and aspect ratios (landscape, portrait, panorama, upscaled, square, large),
    greyscale, progressive, 4:4:4, and EXIF orientations that swap the sides."""
    return [
        jpeg_bytes(photo(1, (480, 360)), quality=85),
        jpeg_bytes(photo(2, (360, 480)), quality=85),
        jpeg_bytes(photo(3, (1200, 300)), quality=90),
        jpeg_bytes(photo(4, (50, 90)), quality=95),
        jpeg_bytes(photo(5, (640, 640)), quality=75),
        jpeg_bytes(photo(6, (2000, 1500)), quality=90),
        jpeg_bytes(photo(7, (300, 200), "L"), quality=90),
        jpeg_bytes(photo(8, (400, 300)), quality=90, progressive=True),
        jpeg_bytes(photo(9, (320, 240)), quality=95, subsampling=0),
        rotated_jpeg(10, 6),
        rotated_jpeg(11, 3),
        rotated_jpeg(12, 8),
    ]


def reference(datas: list[bytes], transform: Any) -> Any:
    """open_clip's transform on what the CPU path decodes (full decode, orientation
    applied, no draft scaling)."""
    import torch

    return torch.stack([transform(decode_image(d, Limits()).image) for d in datas])


def corrupt_jpeg() -> bytes:
    """A JPEG whose header is fine and whose entropy-coded data is garbage."""
    good = bytearray(jpeg_bytes(photo(20, (320, 240)), quality=90))
    rng = np.random.default_rng(0)
    start = good.find(b"\xff\xda") + 20
    for k in range(start, len(good) - 2, 7):
        good[k] = int(rng.integers(256))
    return bytes(good)


def pixel_gap(got: Any, ref: Any, std: tuple[float, ...]) -> tuple[float, float]:
    """(max, mean) absolute difference in 0..1 pixel units (undoing the normalisation)."""
    import torch

    diff = (got.cpu() - ref).abs() * torch.tensor(std).view(1, 3, 1, 1)
    return float(diff.max()), float(diff.mean())


def embed_cosines(emb: Any, a: Any, b: Any) -> list[float]:
    va, vb = emb.embed_preprocessed(list(a.cpu())), emb.embed_preprocessed(list(b.cpu()))
    return [float(x) for x in (va * vb).sum(axis=1)]


# ---- fp16 towers ------------------------------------------------------------------------


def tokens_and_images(emb: Any) -> tuple[Any, Any]:
    return probe_inputs(emb.transform, emb.load()[2])


def test_half_precision_is_kept_when_its_embeddings_agree_with_fp32(demo: Any) -> None:
    import torch

    images, tokens = tokens_and_images(demo)
    kept, cosine = half_if_parity(demo.model, images, tokens, dtype=torch.float16)
    assert cosine >= 0.999
    assert kept is not demo.model and input_dtype(kept) == torch.float16
    # the fp32 model (shared by every embedder of this process) is left as it was
    assert input_dtype(demo.model) == torch.float32


def test_a_probe_below_the_bar_keeps_the_fp32_model(demo: Any) -> None:
    import torch

    images, tokens = tokens_and_images(demo)
    kept, cosine = half_if_parity(demo.model, images, tokens, min_cosine=1.5, dtype=torch.float16)
    assert kept is demo.model and 0.99 < cosine <= 1.0 + 1e-9


def test_half_precision_is_refused_when_fp16_overflows(demo: Any) -> None:
    """Outlier activations past fp16's 65504 (real CLIP weights have some) give inf and
    NaN: the gate must read that as a failure, not let NaN slip through a comparison."""
    import copy

    import torch

    fragile = copy.deepcopy(demo.model)
    with torch.no_grad():
        fragile.visual.conv1.weight.mul_(1e5)
    images, tokens = tokens_and_images(demo)
    kept, cosine = half_if_parity(fragile, images, tokens, dtype=torch.float16)
    assert kept is fragile and math.isnan(cosine)


# ---- decoding and preprocessing ---------------------------------------------------------


def test_open_clips_eval_transform_is_read_and_other_shapes_are_declined() -> None:
    import open_clip

    got = eval_transform(open_clip.image_transform(224, is_train=False))
    assert got is not None and got.side == 224 and got.interpolation == "bicubic"
    assert got.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    for mode in ("longest", "squash"):
        assert eval_transform(open_clip.image_transform(224, False, resize_mode=mode)) is None


def test_exif_orientations_turn_tensors_as_pillow_turns_pictures() -> None:
    import torch

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (5, 7, 3), np.uint8))
    chw = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    for o in range(1, 9):
        want = np.asarray(_apply_orientation(img, o))
        assert np.array_equal(orient(chw, o).permute(1, 2, 0).numpy(), want), o


@pytest.mark.parametrize("side", [64, 224])
def test_cpu_decoding_matches_open_clips_pil_transform_within_the_stated_tolerance(
    side: int,
) -> None:
    import open_clip

    transform = open_clip.image_transform(side, is_train=False)
    p = eval_transform(transform)
    assert p is not None
    datas = variety()
    got = decode_preprocess_batch(datas, p.side, p.mean, p.std, device="cpu")
    assert got.errors == [None] * len(datas)
    assert tuple(got.pixels.shape) == (len(datas), 3, side, side)
    worst, mean = pixel_gap(got.pixels, reference(datas, transform), p.std)
    assert worst <= CPU_MAX + 1e-6 and mean <= CPU_MEAN, (worst * 255, mean * 255)


def test_cpu_decoded_pictures_embed_like_pil_preprocessed_ones(demo: Any) -> None:
    p = eval_transform(demo.transform)
    assert p is not None and p.side == demo.input_side
    datas = variety()
    got = decode_preprocess_batch(datas, p.side, p.mean, p.std, device="cpu")
    cosines = embed_cosines(demo, got.pixels, reference(datas, demo.transform))
    assert min(cosines) >= MIN_EMBED_COSINE, cosines


def test_a_bad_item_is_reported_alone_and_the_rest_of_the_batch_decodes() -> None:
    import torch

    png = io.BytesIO()
    photo(30, (40, 30)).save(png, "PNG")
    cmyk = jpeg_bytes(photo(31, (40, 30)).convert("CMYK"))
    good = [jpeg_bytes(photo(32, (200, 150))), jpeg_bytes(photo(33, (150, 200)))]
    whole = jpeg_bytes(photo(34, (200, 150)))
    batch = [good[0], corrupt_jpeg(), png.getvalue(), cmyk, whole[: len(whole) // 2], good[1]]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    got = decode_preprocess_batch(batch, 32, mean, std, device="cpu")
    assert got.ok == [True, False, False, False, False, True]
    assert got.errors[1] is not None and got.errors[1].startswith("JPEG decoder:")
    assert ".cpp" not in got.errors[1]  # the C++ source position is not the reason
    assert "not a JPEG" in str(got.errors[2])
    assert "CMYK" in str(got.errors[3])
    assert "end-of-image" in str(got.errors[4])
    alone = decode_preprocess_batch(good, 32, mean, std, device="cpu")
    assert torch.equal(got.pixels[[0, 5]], alone.pixels)
    assert not got.pixels[1:5].any()


def test_what_the_cpu_path_converts_goes_back_to_it() -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    with_icc = jpeg_bytes(photo(40, (64, 48)), icc_profile=profile)
    assert "ICC" in str(gpu_decodable(with_icc)[1])
    big = jpeg_bytes(photo(41, (100, 100)))
    assert "limits" in str(gpu_decodable(big, max_pixels=9_999)[1])
    assert gpu_decodable(rotated_jpeg(42, 6)) == (6, None)
    assert re.search("not a JPEG", str(gpu_decodable(b"GIF89a")[1]))


# ---- FAISS ------------------------------------------------------------------------------


def flat_index(n: int, d: int = 64, seed: int = 0) -> tuple[Any, np.ndarray]:
    import faiss

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, d)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    index.add_with_ids(vecs, np.arange(1000, 1000 + n, dtype=np.int64))
    return index, vecs


@pytest.mark.skipif(faiss_gpu_available(), reason="this FAISS has a GPU")
def test_without_gpu_faiss_the_cpu_index_is_kept_with_a_reason() -> None:
    index, _ = flat_index(100)
    got, reason = index_to_gpu(index)
    assert got is index
    assert "CPU" in reason and ("gpu extra" in reason or "no GPU" in reason)
    mirror = GpuMirror(index)
    assert not mirror.active and mirror.reason == reason
    assert mirror.search(np.zeros((1, 64), np.float32), 5) is None


def test_hnsw_and_other_cpu_only_indexes_are_named_as_such() -> None:
    import faiss

    hnsw = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    assert "HNSW" in str(why_not_on_gpu(faiss.IndexIDMap2(hnsw)))
    assert "LSH" in str(why_not_on_gpu(faiss.IndexLSH(16, 32)))
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 4, faiss.METRIC_INNER_PRODUCT)
    assert why_not_on_gpu(ivf) is None
    assert why_not_on_gpu(flat_index(10)[0]) is None


def test_top_k_agreement_counts_shared_ids_per_query() -> None:
    assert top_k_agreement([[1, 2, 3, 4]], [[4, 3, 2, 1]]) == 1.0
    assert top_k_agreement([[1, 2], [5, 6]], [[1, 9], [7, 8]]) == 0.25


# ---- bench/gpu.sh -----------------------------------------------------------------------


def test_gpu_sh_is_valid_bash_and_runs_each_bench_under_a_timeout() -> None:
    subprocess.run(["bash", "-n", str(GPU_SH)], check=True)
    text = GPU_SH.read_text()
    assert "set -euo pipefail" in text and "EVERLOOK_DEVICE=cuda" in text
    for bench in ("gpu_parity.py", "index_throughput.py", "query_latency.py", "watch_latency.py"):
        assert re.search(rf"step \S+ \d+ .*bench/{re.escape(bench)}", text), bench
    assert "timeout" in text and "nvidia-smi" in text


def test_gpu_parity_bench_compiles() -> None:
    import py_compile

    py_compile.compile(str(REPO / "bench" / "gpu_parity.py"), doraise=True)


# ---- the same on CUDA -------------------------------------------------------------------


@needs_cuda
def test_on_cuda_half_precision_is_kept_at_parity_and_runs() -> None:
    import torch

    from search.embedders.clip import OpenClipEmbedder

    emb = OpenClipEmbedder("everlook-demo", "v1", device="cuda")
    images, tokens = tokens_and_images(emb)
    kept, cosine = half_if_parity(emb.model, images, tokens)
    assert cosine >= 0.999 and input_dtype(kept) == torch.float16
    with torch.inference_mode():
        out = kept.encode_image(images.cuda().half(), normalize=True)
    assert out.dtype == torch.float16 and bool(out.isfinite().all())


@needs_cuda
def test_on_cuda_nvjpeg_decoding_embeds_like_pil_preprocessing(demo: Any) -> None:
    p = eval_transform(demo.transform)
    assert p is not None
    datas = variety()
    got = decode_preprocess_batch(datas, p.side, p.mean, p.std, device="cuda")
    assert got.errors == [None] * len(datas) and got.pixels.is_cuda
    ref = reference(datas, demo.transform)
    worst, mean = pixel_gap(got.pixels, ref, p.std)
    assert worst <= CUDA_MAX and mean <= CUDA_MEAN, (worst * 255, mean * 255)
    cosines = embed_cosines(demo, got.pixels, ref)
    assert min(cosines) >= MIN_EMBED_COSINE, cosines
    on_cpu = decode_preprocess_batch(datas, p.side, p.mean, p.std, device="cpu")
    assert min(embed_cosines(demo, got.pixels, on_cpu.pixels)) >= MIN_EMBED_COSINE


@needs_cuda
def test_on_cuda_a_corrupt_jpeg_fails_alone() -> None:
    good = [jpeg_bytes(photo(50, (200, 150))), jpeg_bytes(photo(51, (150, 200)))]
    batch = [good[0], corrupt_jpeg(), good[1]]
    got = decode_preprocess_batch(batch, 32, (0.5,) * 3, (0.25,) * 3, device="cuda")
    assert got.ok == [True, False, True]
    assert str(got.errors[1]).startswith("JPEG decoder:")
    alone = decode_preprocess_batch(good, 32, (0.5,) * 3, (0.25,) * 3, device="cuda")
    assert bool((got.pixels[[0, 2]] - alone.pixels).abs().max() < 1e-5)


@needs_faiss_gpu
def test_gpu_faiss_search_equals_cpu_search_on_10k_vectors() -> None:
    index, vecs = flat_index(10_000, d=128)
    queries = vecs[:50] + 0.01 * np.random.default_rng(1).standard_normal((50, 128))
    queries = queries.astype(np.float32)
    gpu, reason = index_to_gpu(index)
    assert gpu is not index and "GPU" in reason, reason
    s_cpu, l_cpu = index.search(queries, 10)
    s_gpu, l_gpu = gpu.search(queries, 10)
    assert (l_gpu[:, 0] == l_cpu[:, 0]).all()
    assert top_k_agreement(l_cpu.tolist(), l_gpu.tolist()) >= 0.99
    assert np.allclose(s_cpu, s_gpu, atol=1e-4)
    half, _ = index_to_gpu(index, fp16_storage=True)
    assert top_k_agreement(l_cpu.tolist(), half.search(queries, 10)[1].tolist()) >= 0.9


@needs_faiss_gpu
def test_gpu_mirror_follows_adds_and_removals_and_leaves_filters_to_the_cpu() -> None:
    import faiss

    index, vecs = flat_index(2_000, d=64)
    mirror = GpuMirror(index)
    assert mirror.active, mirror.reason
    q = vecs[:1]
    got = mirror.search(q, 1)
    assert got is not None and int(got[1][0, 0]) == 1000
    index.remove_ids(faiss.IDSelectorBatch(np.array([1000], dtype=np.int64)))
    mirror.removed()
    got = mirror.search(q, 1)
    assert got is not None and int(got[1][0, 0]) != 1000  # re-cloned after the removal
    extra = np.ascontiguousarray(q)
    index.add_with_ids(extra, np.array([7], dtype=np.int64))
    mirror.add(extra, np.array([7], dtype=np.int64))
    got = mirror.search(q, 1)
    assert got is not None and int(got[1][0, 0]) == 7
    sel = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.array([1001], np.int64)))  # type: ignore[call-arg]
    assert mirror.search(q, 1, params=sel) is None


@needs_cuda
def test_the_clip_embedder_on_cuda_runs_fp16_and_agrees_with_the_cpu(demo: Any) -> None:
    import torch

    from search.embedders.clip import OpenClipEmbedder
    from tests.helpers import picture

    gpu = OpenClipEmbedder("everlook-demo", "v1", device="cuda", backend="auto")
    pictures = [picture(i, (120 + 10 * i, 90)) for i in range(6)]
    got = gpu.embed_images(pictures)
    want = demo.embed_images(pictures)
    assert next(gpu.model.parameters()).dtype == torch.float16  # the demo model passes
    assert float(np.min(np.sum(got * want, axis=1))) >= MIN_EMBED_COSINE
    texts = ["a red circle", "a blue square on green"]
    agree = np.sum(gpu.embed_texts(texts) * demo.embed_texts(texts), axis=1)
    assert float(agree.min()) >= MIN_EMBED_COSINE


def test_the_pipeline_decodes_on_the_gpu_only_when_the_model_runs_on_cuda(demo: Any) -> None:
    from indexer.gpu_decode import route

    assert route(demo, needs_pictures=False) is None  # a CPU model: the CPU decoders

    class OnCuda:
        device = "cuda:0"
        transform = demo.transform

    assert route(OnCuda(), needs_pictures=True) is None  # inline stages need the pictures
    got = route(OnCuda(), needs_pictures=False)
    assert got is not None and got.side == demo.input_side


@needs_cuda
def test_indexing_on_cuda_decodes_jpegs_on_the_gpu_and_records_a_bad_one(
    env: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from everlook.settings import Settings
    from everlook.wiring import Parts
    from tests.helpers import make_library

    files = make_library(tmp_path / "lib", 10)
    (tmp_path / "lib" / "broken.jpg").write_bytes(files[0].read_bytes()[:300] + b"\0" * 64)
    vectors = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("EVERLOOK_HOME", str(tmp_path / device))
        monkeypatch.setenv("EVERLOOK_DEVICE", device)
        parts = Parts(Settings())
        report = parts.pipeline().run([str(tmp_path / "lib")])
        assert report.new == 10 and [p for p, _ in report.failed] == [
            str(tmp_path / "lib" / "broken.jpg")
        ]
        cat, model = parts.catalog, parts.embedder.model_id
        vectors[device] = {
            path: np.frombuffer(cat.embedding(cat.item_id_for_path(path), "clip", model)[1],
                                dtype=np.float32)
            for path in map(str, files)
        }  # fmt: skip
    for path, want in vectors["cpu"].items():
        assert float(np.dot(want, vectors["cuda"][path])) >= MIN_EMBED_COSINE


def _store_with(n: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    from search.vectors import IndexInfo
    from search.vectors.faiss_store import FaissStore

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, 32), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = FaissStore(IndexInfo("m", 32))
    store.add(np.arange(1, n + 1), vecs)
    return store, vecs


def test_a_store_told_to_use_a_gpu_answers_from_the_cpu_when_faiss_has_none() -> None:
    store, vecs = _store_with(500)
    plain, _ = _store_with(500)
    store.use_gpu()
    q = vecs[:5]
    assert store.search(q, 10) == plain.search(q, 10)
    assert store.search(q, 5, allow=[3, 9, 27]) == plain.search(q, 5, allow=[3, 9, 27])
    if not faiss_gpu_available():
        assert store._gpu[1] is not None and not store._gpu[1].active  # the reason is kept


@needs_faiss_gpu
def test_a_store_on_the_gpu_finds_what_the_cpu_finds_and_follows_its_changes() -> None:
    store, vecs = _store_with(10_000)
    plain, _ = _store_with(10_000)
    store.use_gpu()
    q = vecs[:20]
    got, want = store.search(q, 10), plain.search(q, 10)
    assert store._gpu[1].active
    assert (
        top_k_agreement([[i for i, _ in r] for r in want], [[i for i, _ in r] for r in got]) >= 0.99
    )
    store.add([10_001], -vecs[:1])
    plain.add([10_001], -vecs[:1])
    assert store.search(-vecs[:1], 1)[0][0][0] == plain.search(-vecs[:1], 1)[0][0][0] == 10_001
