"""Panoptic FPN through detectron2, built from its model zoo config.

Weights are found, in order:
1. ``$EVERLOOK_MODEL_DIR/detectron2/<config stem>/`` holds a ``.pkl`` or ``.pth``: that
   file (the first by name), for offline machines;
2. the same folder under Everlook's model cache (``cache_dir``), where step 3 puts it;
3. the model zoo URL for the config, downloaded into ``cache_dir``; never into
   detectron2's own ``~/.torch`` cache, so everything Everlook fetches lives in its data dir.

Nothing here imports torch or detectron2 until the model loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from catalog.results import Segment
from enrich.panoptic import clean_label, register
from search.model_base import LazyModel, ModelUnavailable, Runtime, download, offline_reason

DEFAULT_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"
WEIGHT_SUFFIXES = (".pkl", ".pth")
ZOO_HOST = "dl.fbaipublicfiles.com"


@dataclass
class _Loaded:
    net: Any  # detectron2's PanopticFPN module
    resize: Any  # detectron2.data.transforms.ResizeShortestEdge from the config
    input_format: str  # "BGR" or "RGB", as the config says
    thing_classes: list[str]  # cleaned, by contiguous thing id
    stuff_classes: list[str]  # cleaned, by contiguous stuff id (0 is "things")


def _import_detectron2() -> Any:
    """detectron2's model zoo module, or a ModelUnavailable that says what to do."""
    try:
        with warnings.catch_warnings():
            # model_zoo imports pkg_resources, which setuptools marks deprecated: the
            # warning is detectron2's to fix and says nothing to an Everlook user.
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            from detectron2 import model_zoo
    except ImportError as exc:
        raise ModelUnavailable(
            f"detectron2 is installed but does not import ({exc}). Its C++ part is built "
            "against one torch release (rebuild it after upgrading torch) and its model zoo "
            "needs setuptools<81; or choose the mask2former segmenter, which needs only "
            "transformers."
        ) from exc
    return model_zoo


class Detectron2Segmenter(LazyModel[_Loaded]):
    family = "detectron2"
    backend = "detectron2"

    def __init__(
        self,
        config: str = DEFAULT_CONFIG,
        *,
        score_threshold: float | None = None,
        opts: Sequence[str] = (),
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
        runtime: Runtime | None = None,
    ) -> None:
        """``config``: a model zoo config path. ``score_threshold``: the least instance
        score a thing needs (None: the config's). ``opts``: more config KEY VALUE pairs,
        as detectron2's own tools take them (e.g. ``INPUT.MIN_SIZE_TEST 400``)."""
        self.config = config
        self.score_threshold = score_threshold
        self.opts = list(opts)
        stem = Path(config).stem
        super().__init__(
            stem, model_dir=model_dir, cache_dir=cache_dir, device=device, runtime=runtime
        )
        self._weights_name: str | None = None

    # ---- identity -------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        # The weights file's name, so new weights re-queue the work. A download keeps the
        # model zoo's file name, so a copied file and a downloaded one give the same id.
        if self._weights_name is None:
            local = self.local_file()
            self._weights_name = local.name if local else Path(self.zoo_url()).name
        return f"{self.backend}/{self.name}@{self._weights_name}"

    def zoo_url(self) -> str:
        """The model zoo checkpoint for the config (imports detectron2, hence torch)."""
        model_zoo = _import_detectron2()
        try:
            return str(model_zoo.get_checkpoint_url(self.config))
        except RuntimeError as exc:
            raise ModelUnavailable(
                f"detectron2's model zoo has no trained weights for {self.config!r}: put a "
                f"checkpoint in EVERLOOK_MODEL_DIR/{self.family}/{self.name}/"
            ) from exc

    # ---- weights ----------------------------------------------------------------------
    def local_file(self) -> Path | None:
        """A checkpoint in EVERLOOK_MODEL_DIR or Everlook's cache, without importing torch."""
        folder = self.local_weights(self.name)
        if folder is None or not folder.is_dir():
            return None
        found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        return found[0] if found else None

    def resolve_weights(self) -> Path:
        local = self.local_file()
        if local is not None:
            return local
        url = self.zoo_url()
        relative = f"{self.name}/{Path(url).name}"
        what = f"Detectron2 {self.name}"
        source = f"the checkpoint at {url}"
        if self.cache_dir is None:
            cause = RuntimeError("no download folder was given")
            raise self.missing_weights(what, relative, source, cause)
        why = offline_reason(ZOO_HOST)
        if why is not None:
            # Fail now with the useful paragraph rather than after the HTTP retries.
            raise self.missing_weights(what, relative, source, ConnectionError(why))
        try:
            return download(url, self.cache_dir / self.name / Path(url).name)
        except Exception as exc:
            raise self.missing_weights(what, relative, source, exc) from exc

    # ---- loading ----------------------------------------------------------------------
    def _load(self) -> _Loaded:
        model_zoo = _import_detectron2()
        import detectron2.data.transforms as T
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import MetadataCatalog
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(self.config))
        cfg.merge_from_list(self.opts)
        if self.score_threshold is not None:
            # Both gates: the box head drops detections below its threshold before the
            # panoptic merge applies its own.
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = self.score_threshold
            cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = self.score_threshold
        weights = self.resolve_weights()
        cfg.MODEL.WEIGHTS = str(weights)
        cfg.MODEL.DEVICE = self.device
        if cfg.MODEL.META_ARCHITECTURE != "PanopticFPN":
            raise ModelUnavailable(f"{self.config!r} is not a Panoptic FPN config")

        # Names by contiguous id, from the dataset the config was trained for (as
        # DefaultPredictor and detectron2's visualiser look them up).
        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        things = [clean_label(n) for n in meta.thing_classes]
        stuff = [clean_label(n) for n in meta.stuff_classes]
        if (len(things), len(stuff)) != (
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ):
            raise ModelUnavailable(f"{self.config!r}: class counts differ from its dataset's")

        net = build_model(cfg)
        DetectionCheckpointer(net).load(str(weights))
        self._weights_name = weights.name
        net = self.runtime.place(net)
        size = cfg.INPUT.MIN_SIZE_TEST
        resize = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
        return _Loaded(net, resize, cfg.INPUT.FORMAT, things, stuff)

    # ---- prediction -------------------------------------------------------------------
    def segment(self, images: Sequence[Image.Image]) -> list[list[Segment]]:
        if not images:
            return []
        result: list[list[Segment]] = self.predict(images)
        return result

    def categories(self) -> dict[str, bool]:
        loaded = self.load()
        cats = {label: True for label in loaded.thing_classes}
        cats.update({label: False for label in loaded.stuff_classes[1:]})  # 0: "things"
        return cats

    def _predict(self, model: _Loaded, inputs: Sequence[Image.Image]) -> list[list[Segment]]:
        import numpy as np
        import torch

        batch = []
        for image in inputs:
            arr = np.asarray(image.convert("RGB"))
            if model.input_format == "BGR":
                arr = np.ascontiguousarray(arr[:, :, ::-1])
            # The config's test-time resize, as DefaultPredictor does for one image.
            resized = model.resize.get_transform(arr).apply_image(arr)
            h, w = resized.shape[:2]
            tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            # Ask for outputs at the resized size, not the original: areas are fractions
            # either way, and a 24-Mpx photo would need gigabytes for upsampled logits.
            batch.append({"image": tensor, "height": h, "width": w})
        outputs = model.net(batch)
        return [self._segments(model, out["panoptic_seg"]) for out in outputs]

    @staticmethod
    def _segments(model: _Loaded, panoptic: tuple[Any, list[dict[str, Any]]]) -> list[Segment]:
        import torch

        seg_map, infos = panoptic
        counts = torch.bincount(seg_map.flatten().long().cpu(), minlength=1)
        total = seg_map.numel()
        segments = []
        for info in infos:
            sid = int(info["id"])
            area = int(counts[sid]) if sid < len(counts) else 0
            if area == 0:
                continue
            thing = bool(info["isthing"])
            cid = int(info["category_id"])
            label = model.thing_classes[cid] if thing else model.stuff_classes[cid]
            # Stuff comes from the semantic head, which gives no per-segment score.
            score = float(info.get("score", 1.0))
            segments.append(Segment(label, thing, area / total, score))
        segments.sort(key=lambda s: (-s.area, s.label))
        return segments


@register("detectron2")
def create(**kwargs: Any) -> Detectron2Segmenter:
    return Detectron2Segmenter(**kwargs)
