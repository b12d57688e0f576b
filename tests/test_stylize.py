"""Gatys style transfer (enrich.stylize) on a seeded random VGG-19, offline.

The mechanics run on pictures made here. The margins are stated for a real pair from
../shared/data/media, Grace Hopper's portrait in the style of The Starry Night, at 64 px
and 20 steps (skipped without it; a looser bar holds on the pictures made here). The
margins were measured over seeds 0-3 (see the constants): L-BFGS leaves 0.001-0.01 of
the first style loss, Adam 0.045-0.059; the result's grey picture correlates 0.90-0.95
with the content's; its mean colour ends 5-11 (of 255) from the style picture's where the
content's is 45.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from enrich import stylize
from enrich.stylize import Cancelled, StepInfo, StyleResult, StyleSettings, StyleTransfer
from search.model_base import WeightsUnavailable
from tests.conftest import SHARED_MEDIA
from tests.helpers import python_alone

SIDE, STEPS = 64, 20
# Last style loss at most this fraction of the first (measured ≤ 0.010 and ≤ 0.059).
STYLE_LOSS_FACTOR = {"lbfgs": 0.05, "adam": 0.2}
MIN_GREY_CORRELATION = 0.8  # result vs content picture (measured ≥ 0.90)
COLOUR_FACTOR = 0.35  # result's mean-colour distance to the style, over content's (≤ 0.24)


def picture(name: str) -> Image.Image:
    with Image.open(SHARED_MEDIA / "images" / name) as im:
        return im.convert("RGB")


def photo(size: tuple[int, int] = (96, 120)) -> Image.Image:
    """A photo-like picture made here: a lit gradient, a face and shoulders, fine noise."""
    from PIL import ImageFilter

    rng = np.random.default_rng(0)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(float)
    img = np.stack([150 - 60 * y / h, 140 - 30 * x / w, 110 + 40 * y / h], -1)
    img[((x - w / 2) / (w * 0.25)) ** 2 + ((y - h * 0.4) / (h * 0.22)) ** 2 < 1] = (215, 170, 140)
    img[(np.abs(x - w / 2) < w * 0.35) & (y > h * 0.65)] = (40, 50, 90)
    img += rng.normal(0, 6, img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(1))


def painting(size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A painting-like picture made here: yellow swirls on a deep blue night, brushy."""
    from PIL import ImageFilter

    rng = np.random.default_rng(1)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(float)
    r, a = np.hypot(x - w * 0.6, y - h * 0.35), np.arctan2(y - h * 0.35, x - w * 0.6)
    bands = (np.sin(r / 4.0 + a * 3) > 0.55).astype(float)[..., None]
    night = np.stack([20 + 30 * y / h, 40 + 40 * y / h, 120 + 60 * (1 - y / h)], -1)
    img = night * (1 - bands) + np.array([240, 210, 60.0]) * bands + rng.normal(0, 18, night.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


@pytest.fixture(scope="module")
def pictures() -> tuple[Image.Image, Image.Image]:
    """Made here: what the tests of the run's mechanics use, with or without ../shared."""
    return photo(), painting()


@pytest.fixture(scope="module")
def real_pair() -> tuple[Image.Image, Image.Image]:
    """A real photo and a real painting: the margins below were measured on them."""
    if not (SHARED_MEDIA / "images").is_dir():
        pytest.skip(f"shared media not found at {SHARED_MEDIA} (the margins are stated for "
                    "a real photo and painting; generated pictures are checked in "
                    "test_the_style_loss_falls_on_pictures_made_here_too)")  # fmt: skip
    return (
        picture("people_grace-hopper_pillow.jpg"),
        picture("painting_van-gogh-the-starry-night_neuralstyle.jpg"),
    )


@pytest.fixture(scope="module")
def model() -> StyleTransfer:
    m = StyleTransfer("random", seed=0, device="cpu")
    m.load()
    return m


@pytest.fixture(scope="module")
def runs(
    model: StyleTransfer, real_pair: tuple[Image.Image, Image.Image]
) -> dict[str, tuple[StyleResult, list[StepInfo]]]:
    """One run per optimiser, with every StepInfo it reported."""
    out = {}
    for optimizer in ("lbfgs", "adam"):
        seen: list[StepInfo] = []
        settings = StyleSettings(side=SIDE, steps=STEPS, optimizer=optimizer)
        out[optimizer] = model.run(*real_pair, settings, on_step=seen.append), seen
    return out


def mean_colour(im: Image.Image) -> Any:
    return np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)


def grey(im: Image.Image) -> Any:
    return np.asarray(im.convert("L"), dtype=float).ravel()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_style_loss_falls_by_the_stated_factor_while_the_content_stays(
    optimizer: str,
    model: StyleTransfer,
    real_pair: tuple[Image.Image, Image.Image],
    runs: dict[str, tuple[StyleResult, list[StepInfo]]],
) -> None:
    result, _ = runs[optimizer]
    assert result.last_style_loss <= STYLE_LOSS_FACTOR[optimizer] * result.first_style_loss
    content = stylize._fit(real_pair[0], SIDE)
    assert np.corrcoef(grey(result.image), grey(content))[0, 1] >= MIN_GREY_CORRELATION
    # Bounded: the content loss stays below that of a picture of noise.
    noise = dataclasses.replace(StyleSettings(side=SIDE, steps=1), init="noise")
    assert result.last_content_loss < model.run(*real_pair, noise).first_content_loss
    assert result.first_content_loss == 0.0  # it starts from the content picture


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_result_takes_on_the_colours_of_the_style_picture(
    optimizer: str,
    real_pair: tuple[Image.Image, Image.Image],
    runs: dict[str, tuple[StyleResult, list[StepInfo]]],
) -> None:
    content, style = (stylize._fit(p, SIDE) for p in real_pair)
    before = np.linalg.norm(mean_colour(content) - mean_colour(style))
    after = np.linalg.norm(mean_colour(runs[optimizer][0].image) - mean_colour(style))
    assert before > 40 and after <= COLOUR_FACTOR * before


def test_the_style_loss_falls_on_pictures_made_here_too(
    model: StyleTransfer, pictures: tuple[Image.Image, Image.Image]
) -> None:
    # Adam, whose fall is steady from seed to seed here (0.09-0.15 of the first loss
    # over seeds 0-3; L-BFGS stalled on one seed of this flat, synthetic pair).
    result = model.run(*pictures, StyleSettings(side=SIDE, steps=STEPS, optimizer="adam"))
    assert result.last_style_loss <= 0.3 * result.first_style_loss


def test_on_step_sees_each_step_once_with_its_number_the_total_and_the_picture(
    model: StyleTransfer, pictures: tuple[Image.Image, Image.Image]
) -> None:
    seen: list[StepInfo] = []
    settings = StyleSettings(side=SIDE, steps=STEPS)
    result = model.run(*pictures, settings, on_step=seen.append)
    assert [(i.step, i.total) for i in seen] == [(k, STEPS) for k in range(1, STEPS + 1)]
    assert result.steps == STEPS and result.model_id == "torchvision/vgg19:random-seed0"
    assert result.device == "cpu" and result.seconds > 0
    assert seen[0].style_loss == result.first_style_loss
    size = stylize._fit(pictures[0], SIDE).size
    for info in (seen[0], seen[-1]):
        im = info.image()
        assert im.mode == "RGB" and im.size == size == result.image.size
    # Each StepInfo keeps its own picture: the first is not the last.
    assert np.abs(grey(seen[0].image()) - grey(seen[-1].image())).mean() > 1


def test_on_step_returning_false_cancels_the_run_after_exactly_that_step(
    model: StyleTransfer, pictures: tuple[Image.Image, Image.Image]
) -> None:
    steps: list[int] = []

    def stop_at_three(info: StepInfo) -> bool:
        steps.append(info.step)
        return info.step != 3

    with pytest.raises(Cancelled):
        model.run(*pictures, StyleSettings(side=32, steps=10), on_step=stop_at_three)
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("size", [(60, 100), (100, 60), (100, 3)])
def test_the_long_side_of_the_result_is_the_requested_side(
    size: tuple[int, int], model: StyleTransfer, pictures: tuple[Image.Image, Image.Image]
) -> None:
    content = pictures[0].resize(size)
    result = model.run(content, pictures[1], StyleSettings(side=48, steps=1, optimizer="adam"))
    assert max(result.image.size) == 48
    portrait = size[1] > size[0]
    assert (result.image.height > result.image.width) == portrait
    assert min(result.image.size) == max(16, round(48 * min(size) / max(size)))


def test_settings_round_trip_through_json() -> None:
    settings = StyleSettings(
        side=256, steps=40, content_weight=2.0, style_weight=1e5,
        content_layers=("conv3_2",), style_layers=("conv1_1", "conv5_4"),
        optimizer="adam", learning_rate=0.05, init="noise", pool="max",
    )  # fmt: skip
    again = StyleSettings.from_dict(json.loads(json.dumps(settings.as_dict())))
    assert again == settings and hash(again) == hash(settings)
    assert StyleSettings.from_dict({}) == StyleSettings()
    assert StyleSettings().as_dict()["style_layers"][0] == "conv1_1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("side", 31), ("side", 4097), ("side", 64.0), ("steps", 0), ("steps", 10_001),
        ("content_weight", -1.0), ("style_weight", float("nan")), ("style_weight", "big"),
        ("content_layers", ["conv4_5"]), ("style_layers", []), ("style_layers", "conv1_1"),
        ("optimizer", "sgd"), ("init", "style"), ("learning_rate", 0.0), ("pool", "min"),
    ],
)  # fmt: skip
def test_bad_settings_raise_a_value_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        StyleSettings.from_dict({field: value})


def test_unknown_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="colour"):
        StyleSettings.from_dict({"side": 64, "colour": "blue"})


def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No network and an empty torch hub cache; returns the hosts that were asked about."""
    asked: list[str] = []

    def reason(host: str) -> str:
        asked.append(host)
        return "offline in tests"

    monkeypatch.setattr(stylize, "offline_reason", reason)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return asked


def test_imagenet_weights_neither_here_nor_reachable_say_which_file_goes_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked = offline(monkeypatch, tmp_path)
    (tmp_path / "models").mkdir()
    model = StyleTransfer("imagenet", model_dir=tmp_path / "models", device="cpu")
    with pytest.raises(WeightsUnavailable) as err:
        model.load()
    message = str(err.value)
    assert f"{tmp_path / 'models'}/torchvision/vgg19-dcbb9e9d.pth" in message
    assert "offline in tests" in message and asked == ["download.pytorch.org"]


def test_imagenet_weights_in_the_model_dir_load_without_the_network(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    model: StyleTransfer,
    pictures: tuple[Image.Image, Image.Image],
) -> None:
    import torch

    asked = offline(monkeypatch, tmp_path)
    folder = tmp_path / "models" / "torchvision"
    folder.mkdir(parents=True)
    # Only the features.* keys of a torchvision checkpoint (all that is used): 80 MB.
    random = model.load().features.state_dict()
    # In torch's legacy format: torchvision's 2017 file predates torch 1.6's zip format.
    state = {f"features.{k}": v for k, v in random.items()}
    torch.save(state, folder / "vgg19-dcbb9e9d.pth", _use_new_zipfile_serialization=False)
    real = StyleTransfer("imagenet", model_dir=tmp_path / "models", device="cpu")
    loaded = real.load().features.state_dict()
    assert asked == [] and all(torch.equal(loaded[k], v) for k, v in random.items())
    assert real.model_id == "torchvision/vgg19:IMAGENET1K_V1" != model.model_id
    assert max(real.run(*pictures, StyleSettings(side=32, steps=1)).image.size) == 32


def test_a_run_inside_inference_mode_still_gets_its_gradients(
    model: StyleTransfer, pictures: tuple[Image.Image, Image.Image]
) -> None:
    import torch

    with torch.inference_mode():
        result = model.run(*pictures, StyleSettings(side=32, steps=3))
    assert result.last_style_loss < result.first_style_loss


def test_two_runs_at_once_on_one_model_each_get_what_they_get_alone(
    model: StyleTransfer, pictures: tuple[Image.Image, Image.Image]
) -> None:
    jobs = [StyleSettings(side=32, steps=3), StyleSettings(side=40, steps=3, optimizer="adam")]
    alone = [np.asarray(model.run(*pictures, s).image, dtype=int) for s in jobs]
    together: list[Any] = [None, None]

    def work(k: int) -> None:
        together[k] = np.asarray(model.run(*pictures, jobs[k]).image, dtype=int)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() <= 2


def test_importing_the_module_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from enrich.stylize import StyleSettings, StyleTransfer\n"
        "m = StyleTransfer('imagenet')\n"
        "print(m.model_id, StyleSettings().side)\n"
        "assert not [m for m in ('torch', 'torchvision') if m in sys.modules]\n"
    )
    res = python_alone(code, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["torchvision/vgg19:IMAGENET1K_V1", "512"]
