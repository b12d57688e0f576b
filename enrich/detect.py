"""Object detection with ultralytics YOLO: labels, confidences and normalised boxes.

Any ultralytics detection checkpoint works (``yolo11n.pt`` by default, COCO's 80
classes; Everlook's own ``everlook-demo-yolo.pt`` knows the demo world's six shapes).
The model always goes through ultralytics' own loading and prediction path (letterbox,
NMS, scaling boxes back to the picture), never around it.

Ultralytics keeps a settings file, and by default would put it in ``~/.config`` and
downloads in the working directory. Everlook keeps all of that under its own data dir:
:func:`configure_ultralytics` points ultralytics there before its first import.
Importing this module imports neither torch nor ultralytics (~2 s): they load with the
model.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalog.results import Detection
from search.model_base import LazyModel, ModelUnavailable, WeightsUnavailable, offline_reason

log = logging.getLogger(__name__)

ASSETS_HOST = "github.com"  # ultralytics downloads release assets from GitHub
ASSETS_URL = "https://github.com/ultralytics/assets/releases"
DEFAULT_IMGSZ = 640  # ultralytics' default, and what its COCO checkpoints were trained at


def configure_ultralytics(settings_dir: Path) -> None:
    """Make ultralytics keep its settings (and runs, datasets) under ``settings_dir``.

    Ultralytics reads ``YOLO_CONFIG_DIR`` once, when it is first imported, so this must
    run before that; later it can only be noted. It also keeps ultralytics quiet (it logs
    to stdout, where ``--json`` output goes) and stops it from pip-installing packages
    at run time, unless the user's environment says otherwise.
    """
    settings_dir = Path(settings_dir).expanduser()
    if "ultralytics" in sys.modules:
        from ultralytics.utils import USER_CONFIG_DIR

        if Path(USER_CONFIG_DIR).parent != settings_dir:
            log.warning(
                "ultralytics was imported before Everlook configured it; its settings "
                "stay in %s instead of %s",
                USER_CONFIG_DIR,
                settings_dir,
            )
        return
    os.environ["YOLO_CONFIG_DIR"] = str(settings_dir)
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")


def _default_settings_dir(cache_dir: Path | None) -> Path:
    # The wiring calls configure_ultralytics; tools and tests that build a detector
    # directly still must not write to ~/.config: the cache's parent, else Everlook's
    # default data dir (the same XDG rule as everlook.settings, which enrich can't import).
    if cache_dir is not None:
        return cache_dir.parent
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    home = os.environ.get("EVERLOOK_HOME") or str(Path(base) / "everlook")
    return Path(home).expanduser() / "ultralytics"


class YoloDetector(LazyModel[Any]):
    """An ultralytics YOLO detector, loaded on first use.

    ``weights`` is a checkpoint name (``yolo11n.pt``, ``yolo11s.pt``,
    ``everlook-demo-yolo.pt``), a path to a ``.pt`` file, or a model yaml
    (``yolo11n.yaml``: the architecture randomly initialised, for tests and benchmarks).
    ``imgsz`` is the side pictures are letterboxed to; None uses the size the checkpoint
    was trained at (640 for ultralytics' COCO models), which is where a model works best.
    """

    family = "ultralytics"

    def __init__(
        self,
        weights: str = "yolo11n.pt",
        *,
        conf: float = 0.25,
        imgsz: int | None = None,
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
    ) -> None:
        super().__init__(
            Path(weights).name, model_dir=model_dir, cache_dir=cache_dir, device=device
        )
        self.weights = str(weights)
        self.conf = conf
        self._imgsz = imgsz

    @property
    def imgsz(self) -> int:
        """The side pictures are letterboxed to (the checkpoint's own once it is loaded)."""
        if self._imgsz is not None:
            return self._imgsz
        model = self._model
        if model is not None:
            size = model.overrides.get("imgsz", DEFAULT_IMGSZ)
            return int(size if isinstance(size, int) else max(size))
        return DEFAULT_IMGSZ

    # ---- weights ----------------------------------------------------------------------
    def is_config(self) -> bool:
        return self.weights.lower().endswith((".yaml", ".yml"))

    def resolve_weights(self) -> Path | None:
        """The checkpoint file on this machine, or None when it has to be downloaded.

        A path (anything with a folder in it) is taken as given. A bare name is looked
        up in EVERLOOK_MODEL_DIR/ultralytics/, Everlook's download cache, then the models
        Everlook ships; never in the working directory, so where the indexer was started
        can't change which model runs.
        """
        given = Path(self.weights).expanduser()
        if given.is_absolute() or len(given.parts) > 1:
            if not given.is_file():
                raise ModelUnavailable(f"YOLO checkpoint {given} does not exist")
            return given
        return self.local_weights(self.name)

    def _check_online(self) -> None:
        # Fail in a second, before importing ultralytics and before its retries.
        why = offline_reason(ASSETS_HOST)
        if why is not None:
            raise self._missing(ConnectionError(why))

    def _missing(self, cause: BaseException | None = None) -> WeightsUnavailable:
        source = f"{self.name} from {ASSETS_URL}"
        return self.missing_weights(f"the YOLO model {self.name}", self.name, source, cause)

    def _fetch(self) -> Path:
        """Ultralytics' own download of a named release asset into Everlook's cache."""
        from ultralytics.utils import SETTINGS
        from ultralytics.utils.downloads import attempt_download_asset

        folder = self.cache_dir if self.cache_dir is not None else Path(SETTINGS["weights_dir"])
        dest = folder / self.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            attempt_download_asset(str(dest))
        except Exception as exc:  # ultralytics raises whatever its HTTP client raised
            raise self._missing(exc) from exc
        if not dest.is_file():  # not one of ultralytics' published assets
            raise self._missing()
        return dest

    # ---- loading and prediction -------------------------------------------------------
    def _load(self) -> Any:
        path = None if self.is_config() else self.resolve_weights()
        if path is None and not self.is_config():
            self._check_online()
        if "ultralytics" not in sys.modules and "YOLO_CONFIG_DIR" not in os.environ:
            configure_ultralytics(_default_settings_dir(self.cache_dir))
        YOLO = _import_yolo()
        from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

        _keep_files_in(Path(USER_CONFIG_DIR), self.cache_dir, SETTINGS)
        if self.is_config():
            model = YOLO(self.weights, task="detect")  # ultralytics finds its own yamls
            _name_coco_classes(model)
        else:
            model = YOLO(str(path or self._fetch()), task="detect")
        if model.task != "detect":
            raise ModelUnavailable(f"{self.weights} is a {model.task} model, not a detector")
        return model

    def _predict(self, model: Any, inputs: Any) -> list[list[Detection]]:
        images: list[Image.Image] = list(inputs)
        if not images:
            return []
        kwargs: dict[str, Any] = {"conf": self.conf, "device": self.device, "verbose": False,
                                  "batch": len(images)}  # fmt: skip
        if self._imgsz is not None:
            kwargs["imgsz"] = self._imgsz
        import torch

        # Setting up its predictor on CPU, ultralytics sets torch's thread count for the
        # whole process to its own choice (cpu_count - 1, at most 8): put back what the
        # process had, so CLIP and the other stages keep their threads.
        threads = torch.get_num_threads()
        try:
            results = model.predict([_bgr(im) for im in images], **kwargs)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return [_detections(r) for r in results]

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Objects in each picture, most confident first; boxes are fractions of the
        original picture's width and height."""
        out: list[list[Detection]] = self.predict(images)
        return out


def _import_yolo() -> Any:
    """ultralytics' YOLO class, imported so that Pillow is left as it was.

    Importing ultralytics replaces ``PIL.Image.open`` for the whole process with a wrapper
    that, on any file Pillow cannot identify, tries to pip-install and register pi-heif
    (ultralytics.utils.patches). In Everlook's process that turned "not an image" into an
    install attempt or a misleading "No module named 'pi_heif'" for every unknown file
    indexed after the first detection. Everlook opens HEIC itself (pillow-heif) and hands
    ultralytics arrays, so Pillow's own ``open`` is put back.
    """
    from ultralytics import YOLO
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None:
        Image.open = original
    return YOLO


def _bgr(im: Image.Image) -> np.ndarray:
    # A plain array, not the PIL picture: ultralytics applies EXIF orientation to PIL
    # pictures, and Everlook's decoder has already done so (a picture whose tag survived
    # would turn twice, and its boxes would not fit the picture Everlook shows).
    # Ultralytics takes arrays in OpenCV's BGR order.
    rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _detections(result: Any) -> list[Detection]:
    boxes = result.boxes
    names = result.names
    xyxyn = boxes.xyxyn.tolist()
    conf = boxes.conf.tolist()
    cls = boxes.cls.tolist()
    found = []
    for (x0, y0, x1, y1), c, k in zip(xyxyn, conf, cls, strict=True):
        box = (_unit(x0), _unit(y0), _unit(x1), _unit(y1))
        if box[2] <= box[0] or box[3] <= box[1]:  # clipped to nothing: not an object
            continue
        found.append(Detection(label=str(names[int(k)]), confidence=float(c), box=box))
    found.sort(key=lambda d: -d.confidence)
    return found


def _unit(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


def _keep_files_in(config_dir: Path, cache_dir: Path | None, settings: Any) -> None:
    """Point ultralytics' runs, weights and datasets folders into its config dir (its
    defaults are the working directory), and turn off its usage analytics."""
    wanted = {
        "runs_dir": str(config_dir / "runs"),
        "weights_dir": str(cache_dir if cache_dir is not None else config_dir / "weights"),
        "datasets_dir": str(config_dir / "datasets"),
        "sync": False,
    }
    if any(settings.get(k) != v for k, v in wanted.items()):
        settings.update(wanted)  # rewrites settings.json only when something changed


def _name_coco_classes(model: Any) -> None:
    """A model built from a yaml has classes named "0".."79"; an 80-class one gets COCO's
    names, so a random yolo11n.yaml answers in the same terms as yolo11n.pt."""
    from ultralytics.utils import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    if len(model.names) == len(names):
        model.model.names = dict(names)
