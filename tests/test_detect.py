"""Object detection (ultralytics YOLO): output format at real size, where weights and
ultralytics' own files come from and go, and meaning with the trained demo model.

A real-size yolo11n is built from its yaml, randomly initialised (no download): same
architecture and cost as yolo11n.pt, meaningless boxes. Meaning comes from
`everlook-demo-yolo`, trained on the demo world (tools/train_demo_yolo.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enrich import detect
from enrich.detect import YoloDetector
from search.model_base import BUILTIN_MODELS, ModelUnavailable, WeightsUnavailable
from tests.helpers import picture
from tools import synthworld
from tools.eval_demo_model import box_iou

REPO = Path(__file__).resolve().parent.parent
DEMO = BUILTIN_MODELS / "ultralytics" / "everlook-demo-yolo.pt"
SEED_BASE = synthworld.EVAL_SEED_BASE + 800_000  # held out, apart from the eval's seeds


@pytest.fixture(scope="module")
def ultralytics_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Ultralytics reads its config dir once, at first import: point it into a temporary
    folder for that import, and leave the environment as it was."""
    home = tmp_path_factory.mktemp("ultralytics")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_CONFIG_DIR", str(home))
        mp.setenv("YOLO_VERBOSE", "false")
        mp.setenv("YOLO_AUTOINSTALL", "false")
        import ultralytics  # noqa: F401

    yield home


def coco_names() -> set[str]:
    from ultralytics.utils import ROOT, YAML

    return set(YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].values())


# ---- output format, real size -------------------------------------------------------


@pytest.mark.slow
def test_a_random_real_size_yolo11n_gives_one_list_per_picture_with_boxes_inside_it(
    ultralytics_home: Path,
) -> None:
    import torch

    threshold = 1e-4  # a random model is unsure of everything; keep some boxes to check
    det = YoloDetector("yolo11n.yaml", conf=threshold, device="cpu")
    sizes = [(640, 480), (200, 300), (1000, 250)]
    threads = torch.get_num_threads()
    found = det.detect([picture(i, size) for i, size in enumerate(sizes)])
    assert torch.get_num_threads() == threads  # ultralytics resets it; the detector not

    assert len(found) == len(sizes)
    assert sum(map(len, found)) > 0
    names = coco_names()
    for boxes in found:
        confs = [d.confidence for d in boxes]
        assert confs == sorted(confs, reverse=True)
        for d in boxes:
            x0, y0, x1, y1 = d.box
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
            assert d.label in names
            assert d.confidence >= threshold
    assert det.model_id == "ultralytics/yolo11n.yaml"
    assert det.imgsz == 640
    assert det.detect([]) == []


def test_importing_and_constructing_a_detector_loads_neither_torch_nor_ultralytics() -> None:
    code = (
        "import sys\n"
        "from enrich.detect import YoloDetector\n"
        "d = YoloDetector('yolo11n.pt', device='auto')\n"
        "assert d.model_id == 'ultralytics/yolo11n.pt' and d.imgsz == 640\n"
        "print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"


# ---- where weights come from --------------------------------------------------------


@pytest.mark.slow  # ultralytics' first import
def test_a_checkpoint_in_the_model_dir_is_used_and_nothing_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ultralytics_home: Path
) -> None:
    # The demo model under yolo11n.pt's name: if it answers in shapes, that file ran.
    placed = tmp_path / "ultralytics" / "yolo11n.pt"
    placed.parent.mkdir()
    shutil.copyfile(DEMO, placed)

    def no_network(host: str) -> str:
        raise AssertionError(f"a local checkpoint must not need {host}")

    monkeypatch.setattr(detect, "offline_reason", no_network)
    det = YoloDetector("yolo11n.pt", model_dir=tmp_path, device="cpu")
    assert det.resolve_weights() == placed
    star = synthworld.Scene("star", "yellow", 1, "large", "black", "plain")
    (found,) = det.detect([synthworld.render(star, SEED_BASE - 1, 160)])
    assert [d.label for d in found] == ["star"]
    assert det.model_id == "ultralytics/yolo11n.pt"


def test_offline_without_weights_names_the_file_and_the_folder_to_put_it_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detect, "offline_reason", lambda host: f"cannot resolve {host}")
    det = YoloDetector(
        "yolo11s.pt", model_dir=tmp_path, cache_dir=tmp_path / "cache" / "ultralytics",
        device="cpu",
    )  # fmt: skip
    with pytest.raises(WeightsUnavailable) as err:
        det.load()
    message = str(err.value)
    assert f"{tmp_path}/ultralytics/yolo11s.pt" in message
    assert "cannot resolve github.com" in message
    assert not det.loaded


def test_a_checkpoint_path_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    det = YoloDetector(str(tmp_path / "nowhere" / "best.pt"), device="cpu")
    assert det.model_id == "ultralytics/best.pt"
    with pytest.raises(ModelUnavailable, match="does not exist"):
        det.load()


@pytest.mark.slow
def test_ultralytics_keeps_its_settings_under_everlooks_folder_not_in_home_or_cwd(
    tmp_path: Path,
) -> None:
    home, cwd, data = tmp_path / "home", tmp_path / "cwd", tmp_path / "data"
    home.mkdir()
    cwd.mkdir()
    code = (
        "import sys; from pathlib import Path; from PIL import Image\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from enrich.detect import YoloDetector, configure_ultralytics\n"
        f"configure_ultralytics(Path({str(data / 'ultralytics')!r}))\n"
        f"d = YoloDetector({str(DEMO)!r}, device='cpu')\n"
        "print(len(d.detect([Image.new('RGB', (64, 48))])))\n"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YOLO_", "XDG_", "EVERLOOK_", "MPLCONFIGDIR"))}  # fmt: skip
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"  # ultralytics printed nothing to stdout

    settings = data / "ultralytics" / "Ultralytics" / "settings.json"
    assert settings.is_file()
    assert not (home / ".config" / "Ultralytics").exists()
    assert list(cwd.iterdir()) == []
    values = json.loads(settings.read_text())
    assert values["sync"] is False
    for key in ("runs_dir", "weights_dir", "datasets_dir"):
        assert Path(values[key]).is_relative_to(data), (key, values[key])


# ---- meaning, with the trained demo model -------------------------------------------


def test_the_committed_demo_model_is_small_and_has_a_model_card() -> None:
    assert DEMO.stat().st_size <= 10 * 2**20
    card = (DEMO.parent / "MODEL_CARD.md").read_text()
    assert "AGPL-3.0" in card and "train_demo_yolo.py" in card
    facts = json.loads((DEMO.parent / "training.json").read_text())
    assert facts["classes"] == list(synthworld.SHAPES)


@pytest.fixture(scope="module")
def demo(ultralytics_home: Path) -> YoloDetector:
    # By name, as the settings would say it: resolved among the models Everlook ships.
    det = YoloDetector("everlook-demo-yolo.pt", device="cpu")
    assert det.resolve_weights() == DEMO
    return det


def held_out(i: int, shape: str, count: int | None = None) -> tuple[Image.Image, np.ndarray]:
    """A held-out picture or artwork of one shape, and its objects' boxes (fractions)."""
    seed = SEED_BASE + i
    rng = random.Random(seed)
    style = rng.choice(synthworld.STYLES) if rng.random() < 0.3 else None
    scene = synthworld.random_scene(rng, style=style, allow_held_out=True, shape=shape)
    if count is not None:
        scene = dataclasses.replace(scene, count=count)
    side = rng.choice((128, 192, 256))
    img, boxes = synthworld.render_with_boxes(scene, seed, side)
    return img, np.array(boxes, dtype=np.float64) / side


def apart(boxes: np.ndarray) -> bool:
    """No two objects overlap more than a touch (IoU < 0.1)."""
    iou = box_iou(boxes, boxes)
    np.fill_diagonal(iou, 0.0)
    return bool(iou.max() < 0.1)


@pytest.mark.slow
def test_pictures_with_stars_get_a_star_and_pictures_without_stars_do_not(
    demo: YoloDetector,
) -> None:
    others = [s for s in synthworld.SHAPES if s != "star"]
    shapes = ["star" if i % 2 == 0 else others[(i // 2) % len(others)] for i in range(60)]
    found = demo.detect([held_out(i, s)[0] for i, s in enumerate(shapes)])

    said_star = np.array([any(d.label == "star" for d in f) for f in found])
    is_star = np.array([s == "star" for s in shapes])
    recall = (said_star & is_star).sum() / is_star.sum()
    precision = (said_star & is_star).sum() / max(1, said_star.sum())
    assert recall >= 0.9, recall
    assert precision >= 0.9, precision


@pytest.mark.slow
def test_pictures_of_three_separate_stars_yield_three_star_detections(
    demo: YoloDetector,
) -> None:
    # The demo world sometimes piles three large stars into one blob (about a quarter
    # of such pictures), which no one could count; pictures whose stars are apart can be.
    pictures = (held_out(1000 + i, "star", count=3) for i in range(200))
    countable = [img for img, boxes in pictures if apart(boxes)][:60]
    assert len(countable) == 60
    stars = [sum(d.label == "star" for d in f) for f in demo.detect(countable)]
    assert np.mean([n == 3 for n in stars]) >= 0.85, stars


# ---- the demo world the detector was trained on --------------------------------------

# sha256 of render()'s pixels, taken before render_with_boxes() was added: the CLIP
# demo model was trained on these pictures, so they must never change.
RENDER_HASHES = {
    (1003, None, "star", 128): "64a23a5a8289c18c",
    (1004, None, "moon", 256): "ee01fad95142ee34",
    (1012, "stippled", "triangle", 128): "a64c14c7932b503c",
    (1021, "striped", "square", 128): "ab1860189dda06b0",
    (1034, "mosaic", "moon", 256): "8e6e3192e778ffab",
    (1040, "watercolour", "circle", 256): "2e8a25bd6bd7ee0c",
    (1055, "line art", "cross", 256): "5321961374ba75c8",
}


def test_render_draws_the_same_pixels_as_before_boxes_were_added() -> None:
    for (seed, style, shape, side), want in RENDER_HASHES.items():
        scene = synthworld.random_scene(random.Random(seed), style=style, shape=shape,
                                        colour="red")  # fmt: skip
        got = hashlib.sha256(synthworld.render(scene, seed, side).tobytes()).hexdigest()
        assert got[:16] == want, (seed, style, shape)
        img, _ = synthworld.render_with_boxes(scene, seed, side)
        assert img.tobytes() == synthworld.render(scene, seed, side).tobytes()


def test_boxes_fit_each_object_tightly_and_stay_the_same_in_every_style() -> None:
    for k, shape in enumerate(synthworld.SHAPES):
        scene = dataclasses.replace(
            synthworld.random_scene(random.Random(k), shape=shape), texture="plain"
        )
        img, boxes = synthworld.render_with_boxes(scene, k, 160)
        assert len(boxes) == scene.count
        # On a plain background, what differs from it is the objects.
        bg = np.array(synthworld.BACKGROUNDS[scene.background], dtype=np.uint8)
        ink = (np.asarray(img) != bg).any(axis=2)
        inside = np.zeros_like(ink)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 160
            inside[y0:y1, x0:x1] = True
            edges = (ink[y0, x0:x1], ink[y1 - 1, x0:x1], ink[y0:y1, x0], ink[y0:y1, x1 - 1])
            assert all(e.any() for e in edges), (shape, "box wider than its object")
        assert not (ink & ~inside).any(), (shape, "object outside its box")
        for style in synthworld.STYLES:
            art = dataclasses.replace(scene, style=style)
            assert synthworld.render_with_boxes(art, k, 160)[1] == boxes


def test_loading_a_detector_leaves_pillow_open_as_it_was(tmp_path):
    """ultralytics patches PIL.Image.open on import; an unknown file indexed after a
    detection must still be "not a recognised image format", not an install attempt."""
    import PIL.Image

    from enrich.detect import YoloDetector
    from indexer.media import Limits, MediaError, decode_image

    before = PIL.Image.open
    YoloDetector("yolo11n.yaml", device="cpu", cache_dir=tmp_path / "u").load()
    assert PIL.Image.open is before or PIL.Image.open.__module__.startswith("PIL")
    with pytest.raises(MediaError, match="not a recognised image format"):
        decode_image(b"\xff\x0a\xba\x21" + bytes(64), Limits())
