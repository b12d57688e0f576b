"""The contract every panoptic segmenter backend passes (detectron2, mask2former).

Each backend's architecture is built randomly initialised from its own config, its weights
are saved where an offline user would put real ones (EVERLOOK_MODEL_DIR), and the
segmenter loads them through its real loading path. Random weights say nothing about
quality; these tests pin the output format, the label names, lazy loading and the
missing-weights message. Sizes are shrunk for speed where noted.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from catalog.results import Segment
from enrich import panoptic
from search.model_base import WeightsUnavailable
from tests.conftest import REPO
from tests.helpers import picture

LIBRARY = {"detectron2": "detectron2", "mask2former": "transformers"}
MODULES = {
    "detectron2": "enrich.panoptic.detectron2_backend",
    "mask2former": "enrich.panoptic.mask2former",
}
D2_NAME = "panoptic_fpn_R_50_3x"
M2F_REPO = "everlook-test/mask2former-tiny-coco-panoptic"
# Panoptic FPN R50 at its real width, but fed pictures of 256 px instead of 800 so a test
# picture costs a fraction of a second rather than several on a shared CPU.
D2_SMALL = ["INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384"]
SMALL: dict[str, dict[str, Any]] = {
    "detectron2": {"opts": D2_SMALL},
    "mask2former": {"repo": M2F_REPO},
}
HEAVY_MODULES = ("torch", "detectron2", "transformers")


def needs(backend: str) -> None:
    library = LIBRARY[backend]
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed, so the {backend} segmenter cannot run here")


# ---- random weights, saved where real ones would go -----------------------------------
def save_detectron2(model_dir: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")  # detectron2's to fix
        from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(f"COCO-PanopticSegmentation/{D2_NAME}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    dest = model_dir / "detectron2" / D2_NAME
    dest.mkdir(parents=True)
    DetectionCheckpointer(build_model(cfg), save_dir=str(dest)).save("model_final")


def coco_id2label() -> dict[int, str]:
    """COCO panoptic's 133 labels in the Hub checkpoints' order (80 things, then stuff)."""
    if importlib.util.find_spec("detectron2") is not None:
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

        return {i: c["name"] for i, c in enumerate(COCO_CATEGORIES)}
    # Without detectron2 no installed library lists the stuff names; the head only needs
    # 133 labels, so the stuff ones get placeholders.
    things = sorted(panoptic.coco_thing_names())
    return {i: n for i, n in enumerate([*things, *(f"stuff {k}" for k in range(53))])}


def save_mask2former(model_dir: Path) -> None:
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    id2label = coco_id2label()
    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=swin,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=64,
        num_queries=20,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    net = Mask2FormerForUniversalSegmentation(config)
    with torch.no_grad():
        # Random heads score every class about 1/134 and every mask about one half, so
        # nothing passes the thresholds; sharpened, some queries win pictures' regions
        # and the contract below has segments to check.
        net.class_predictor.weight.mul_(50)
        mask_head = net.model.transformer_module.decoder.mask_predictor.mask_embedder
        mask_head.layers[-1].layers[0].weight.mul_(20)
    dest = model_dir / "transformers" / M2F_REPO
    net.save_pretrained(dest)
    # Pictures of 128-256 px instead of 800-1333, for speed.
    Mask2FormerImageProcessor(size={"shortest_edge": 128, "longest_edge": 256}).save_pretrained(
        dest
    )


SAVERS = {"detectron2": save_detectron2, "mask2former": save_mask2former}


@pytest.fixture(scope="session")
def model_dir_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """backend -> an EVERLOOK_MODEL_DIR holding its weights, saved on first ask."""
    root = tmp_path_factory.mktemp("segmenter-models")
    saved: set[str] = set()

    def get(backend: str) -> Path:
        if backend not in saved:
            SAVERS[backend](root)
            saved.add(backend)
        return root

    return get


# Panoptic FPN R50: saving its random weights (180 MB) and a first batch take seconds.
@pytest.fixture(
    scope="session", params=[pytest.param("detectron2", marks=pytest.mark.slow), "mask2former"]
)
def backend(request: pytest.FixtureRequest) -> str:
    needs(request.param)
    return str(request.param)


@pytest.fixture(scope="session")
def segmenter(backend: str, model_dir_for: Callable[[str], Path]) -> panoptic.Segmenter:
    return panoptic.create(
        backend, model_dir=model_dir_for(backend), device="cpu", **SMALL[backend]
    )


def grey_picture() -> Image.Image:
    return picture(3, (180, 140)).convert("L").convert("RGB")


@pytest.fixture(scope="session")
def batch(segmenter: panoptic.Segmenter) -> list[list[Segment]]:
    """One run over pictures of different sizes and shapes, shared by the checks."""
    images = [picture(1, (320, 240)), picture(2, (150, 400)), grey_picture()]
    return segmenter.segment(images)


# ---- the contract ---------------------------------------------------------------------
def test_each_picture_of_a_batch_of_different_sizes_gets_its_own_list(batch):
    assert len(batch) == 3
    assert all(isinstance(s, Segment) for segments in batch for s in segments)


def test_random_weights_still_give_segments_so_the_checks_are_not_vacuous(batch):
    assert sum(len(segments) for segments in batch) > 0


def test_labels_are_coco_panoptic_names_and_say_rightly_thing_or_stuff(segmenter, batch):
    categories = segmenter.categories()
    assert len(categories) == 133
    for segment in (s for segments in batch for s in segments):
        assert categories[segment.label] is segment.is_thing
    if importlib.util.find_spec("detectron2") is not None:
        assert categories == panoptic.coco_panoptic_categories()


def test_areas_are_fractions_of_the_picture_adding_up_to_at_most_one(batch):
    for segments in batch:
        assert all(0 < s.area <= 1 for s in segments)
        assert sum(s.area for s in segments) <= 1 + 1e-6
        assert all(0 <= s.score <= 1 for s in segments)
        assert [s.area for s in segments] == sorted((s.area for s in segments), reverse=True)


def test_a_grayscale_picture_converted_to_rgb_is_segmented_like_any_other(batch):
    grey = batch[2]  # the batch's third picture is grey_picture()
    assert isinstance(grey, list)
    assert all(0 < s.area <= 1 for s in grey)


def test_an_empty_batch_gives_an_empty_list_without_loading_the_model(backend, tmp_path):
    fresh = panoptic.create(backend, model_dir=tmp_path, device="cpu", **SMALL[backend])
    assert fresh.segment([]) == []
    assert not fresh.loaded


def test_model_id_names_the_backend_and_the_weights(segmenter, backend):
    expected = {
        "detectron2": f"detectron2/{D2_NAME}@model_final.pth",
        "mask2former": f"mask2former/{M2F_REPO}",
    }
    assert segmenter.model_id == expected[backend]


def test_without_weights_offline_loading_fails_with_a_paragraph_naming_the_folder(
    backend, tmp_path, monkeypatch
):
    module = importlib.import_module(MODULES[backend])
    asked: list[str] = []

    def offline(host: str) -> str:
        asked.append(host)
        return "no network in this test"

    monkeypatch.setattr(module, "offline_reason", offline)
    empty = tmp_path / "models"
    fresh = panoptic.create(backend, model_dir=empty, cache_dir=tmp_path / "cache" / backend)
    with pytest.raises(WeightsUnavailable) as caught:
        fresh.load()
    message = str(caught.value)
    folder = {
        "detectron2": f"detectron2/{D2_NAME}/model_final_",
        "mask2former": "transformers/facebook/mask2former-swin-tiny-coco-panoptic/",
    }
    assert f"{empty}/{folder[backend]}" in message
    assert f"EVERLOOK_MODEL_DIR={empty}" in message
    assert "no network in this test" in message
    assert asked, "the segmenter should ask whether it is offline before downloading"


def test_constructing_a_segmenter_and_reading_its_model_id_import_no_model_library(
    backend, model_dir_for
):
    model_dir = model_dir_for(backend)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from enrich import panoptic\n"
        f"s = panoptic.create({backend!r}, model_dir=Path({str(model_dir)!r}), "
        f"**{SMALL[backend]!r})\n"
        "print(s.model_id)\n"
        "print(panoptic.available(), panoptic.default_backend())\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


# ---- the registry and the labels ------------------------------------------------------
def test_the_registry_lists_installed_backends_and_prefers_detectron2(monkeypatch):
    installed = {lib for lib in LIBRARY.values() if importlib.util.find_spec(lib)}
    assert set(panoptic.available()) >= {b for b, lib in LIBRARY.items() if lib in installed}
    expected = "detectron2" if "detectron2" in installed else "mask2former"
    assert panoptic.default_backend() == expected

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "detectron2" else real(n, *a)
    )
    assert panoptic.default_backend() == "mask2former"
    assert "detectron2" not in panoptic.available()
    with pytest.raises(KeyError, match="unknown segmenter"):
        panoptic.create("no-such-backend")


def test_labels_read_as_people_write_them():
    assert panoptic.clean_label("sky-other-merged") == "sky"
    assert panoptic.clean_label("grass-merged") == "grass"
    assert panoptic.clean_label("door-stuff") == "door"
    assert panoptic.clean_label("wall-brick") == "wall brick"
    assert panoptic.clean_label("traffic light") == "traffic light"
    assert panoptic.clean_label("road") == "road"


def test_tags_are_the_sorted_set_of_segment_labels():
    segments = [
        Segment("sky", False, 0.5, 1.0),
        Segment("person", True, 0.2, 0.9),
        Segment("person", True, 0.1, 0.8),
    ]
    assert panoptic.tags(segments) == ["person", "sky"]


def test_coco_panoptic_has_80_things_and_53_stuff_under_distinct_clean_names():
    needs("detectron2")
    categories = panoptic.coco_panoptic_categories()
    assert len(categories) == 133
    assert sum(categories.values()) == 80
    assert {"person", "sky", "grass", "road", "wall", "water"} <= set(categories)
    assert not [n for n in categories if n.endswith(("merged", "other", "stuff"))]


def test_torchvision_and_detectron2_agree_on_the_thing_names():
    # Mask2Former takes its thing/stuff split from torchvision's list, detectron2 from its
    # own table: a tag must mean the same whichever backend wrote it.
    needs("detectron2")
    categories = panoptic.coco_panoptic_categories()
    assert panoptic.coco_thing_names() == {n for n, thing in categories.items() if thing}


def test_mask2former_fuses_stuff_into_one_segment_per_label_and_keeps_things_apart():
    # Random weights rarely reach this path, so feed the conversion a result shaped like
    # transformers' post-processing: queries 2 and 4 are both sky, 1 and 3 two people.
    needs("mask2former")
    import torch

    from enrich.panoptic.mask2former import Mask2FormerSegmenter, _Loaded

    loaded = _Loaded(None, None, {0: "person", 1: "sky"}, frozenset({0}))
    found = {
        "segmentation": torch.tensor([[1, 1, 2, 2], [3, 4, 4, 0]], dtype=torch.int32),
        "segments_info": [
            {"id": 1, "label_id": 0, "score": 0.9},
            {"id": 2, "label_id": 1, "score": 0.7},
            {"id": 3, "label_id": 0, "score": 0.8},
            {"id": 4, "label_id": 1, "score": 0.95},
        ],
    }
    assert Mask2FormerSegmenter._segments(loaded, found) == [
        Segment("sky", False, 0.5, 0.95),
        Segment("person", True, 0.25, 0.9),
        Segment("person", True, 0.125, 0.8),
    ]


# ---- detectron2 on real photos --------------------------------------------------------
@pytest.mark.slow
def test_panoptic_fpn_segments_real_photos_end_to_end(model_dir_for, shared_images):
    needs("detectron2")
    names = [
        "dog_with-bicycle-and-truck_darknet.jpg",
        "animals_giraffe-and-zebra_darknet.jpg",
        "cat_tabby-face-chelsea_skimage.png",
    ]
    paths = [shared_images / n for n in names if (shared_images / n).is_file()]
    if not paths:
        pytest.skip(f"none of {names} in {shared_images}")
    seg = panoptic.create(
        "detectron2", model_dir=model_dir_for("detectron2"), device="cpu", opts=D2_SMALL
    )
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    results = seg.segment(images)
    assert len(results) == len(images)
    categories = seg.categories()
    for segments in results:
        assert segments, "the stuff head labels every picture somewhere"
        assert set(panoptic.tags(segments)) <= set(categories)
        assert sum(s.area for s in segments) <= 1 + 1e-6
