"""Mask2Former (COCO panoptic) through Hugging Face transformers: the segmenter for
machines where detectron2 cannot be built.

Weights are found, in order:
1. ``$EVERLOOK_MODEL_DIR/transformers/<repo id>/``: a folder written by
   ``save_pretrained`` (config.json, model.safetensors, preprocessor_config.json);
2. the same folder under Everlook's model cache;
3. transformers' own cache (``cache_dir`` when given), downloading from the Hub if online.

Nothing here imports torch or transformers until the model loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from catalog.results import Segment
from enrich.panoptic import clean_label, coco_thing_names, register
from search.model_base import LazyModel, ModelUnavailable, Runtime, offline_reason

DEFAULT_REPO = "facebook/mask2former-swin-tiny-coco-panoptic"
FILES = "config.json, model.safetensors and preprocessor_config.json"
# The original Mask2Former's COCO panoptic test settings (OBJECT_MASK_THRESHOLD and
# OVERLAP_THRESHOLD in its configs); transformers' defaults keep more, weaker queries.
SCORE_THRESHOLD = 0.8
OVERLAP_THRESHOLD = 0.8


@dataclass
class _Loaded:
    net: Any  # Mask2FormerForUniversalSegmentation
    processor: Any  # Mask2FormerImageProcessor, as the checkpoint saved it
    labels: dict[int, str]  # label id -> cleaned name
    thing_ids: frozenset[int]


def _hub_host() -> str:
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
    except ImportError:
        return "huggingface.co"
    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


class Mask2FormerSegmenter(LazyModel[_Loaded]):
    family = "transformers"
    backend = "mask2former"

    def __init__(
        self,
        repo: str = DEFAULT_REPO,
        *,
        score_threshold: float | None = None,
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
        runtime: Runtime | None = None,
    ) -> None:
        """``repo``: a Hub repository id (also the folder name under EVERLOOK_MODEL_DIR).
        ``score_threshold``: the least class score a segment needs (None: 0.8, as the
        original Mask2Former's panoptic configs)."""
        super().__init__(
            repo, model_dir=model_dir, cache_dir=cache_dir, device=device, runtime=runtime
        )
        self.score_threshold = SCORE_THRESHOLD if score_threshold is None else score_threshold

    @property
    def model_id(self) -> str:
        # The repository id names the weights wherever they came from (folder or Hub).
        return f"{self.backend}/{self.name}"

    # ---- weights ----------------------------------------------------------------------
    def local_folder(self) -> Path | None:
        """A save_pretrained folder in EVERLOOK_MODEL_DIR or Everlook's cache."""
        folder = self.local_weights(*self.name.split("/"))
        if folder is not None and (folder / "config.json").is_file():
            return folder
        return None

    def _from_pretrained(self, net_cls: Any, proc_cls: Any) -> tuple[Any, Any]:
        local = self.local_folder()
        if local is not None:
            return net_cls.from_pretrained(local), proc_cls.from_pretrained(local)
        kw: dict[str, Any] = {"cache_dir": str(self.cache_dir)} if self.cache_dir else {}
        try:
            # An earlier run's download works offline too; only then ask the network.
            return (
                net_cls.from_pretrained(self.name, local_files_only=True, **kw),
                proc_cls.from_pretrained(self.name, local_files_only=True, **kw),
            )
        except (OSError, ValueError):
            pass
        what = f"Mask2Former {self.name!r}"
        source = (
            f"the files {FILES} of the Hugging Face repository '{self.name}' (or run "
            "save_pretrained on the model and its image processor)"
        )
        relative = f"{self.name}/"
        why = offline_reason(_hub_host())
        if why is not None:
            # Fail now with the useful paragraph rather than after huggingface_hub's
            # retries (about a minute of back-off per file without network).
            raise self.missing_weights(what, relative, source, ConnectionError(why))
        try:
            return (
                net_cls.from_pretrained(self.name, **kw),
                proc_cls.from_pretrained(self.name, **kw),
            )
        except (OSError, ValueError) as exc:
            raise self.missing_weights(what, relative, source, exc) from exc

    # ---- loading ----------------------------------------------------------------------
    def _load(self) -> _Loaded:
        try:
            from transformers import Mask2FormerForUniversalSegmentation as Net
            from transformers import Mask2FormerImageProcessor as Processor
        except ImportError as exc:
            raise ModelUnavailable(
                f"the mask2former segmenter needs transformers, scipy and torchvision ({exc})"
            ) from exc
        net, processor = self._from_pretrained(Net, Processor)
        labels = {int(i): clean_label(str(n)) for i, n in net.config.id2label.items()}
        things = coco_thing_names()
        thing_ids = frozenset(i for i, name in labels.items() if name in things)
        return _Loaded(self.runtime.place(net), processor, labels, thing_ids)

    # ---- prediction -------------------------------------------------------------------
    def segment(self, images: Sequence[Image.Image]) -> list[list[Segment]]:
        if not images:
            return []
        result: list[list[Segment]] = self.predict(images)
        return result

    def categories(self) -> dict[str, bool]:
        loaded = self.load()
        return {name: i in loaded.thing_ids for i, name in loaded.labels.items()}

    def _predict(self, model: _Loaded, inputs: Sequence[Image.Image]) -> list[list[Segment]]:
        from transformers.models.mask2former.modeling_mask2former import (
            Mask2FormerForUniversalSegmentationOutput as Output,
        )

        batch = model.processor(images=[im.convert("RGB") for im in inputs], return_tensors="pt")
        pixel_mask = batch["pixel_mask"]
        out = model.net(
            pixel_values=batch["pixel_values"].to(self.device),
            pixel_mask=pixel_mask.to(self.device),
        )
        height, width = pixel_mask.shape[-2:]
        mask_h, mask_w = out.masks_queries_logits.shape[-2:]
        results = []
        for i in range(len(inputs)):
            # The processor pads a batch to its largest picture and the post-processing
            # would stretch that padding over the picture: crop each picture's masks to
            # the part that is picture first. Areas are measured at the size the model
            # saw (a 24-Mpx original would need gigabytes of upsampled masks).
            valid_h = int(pixel_mask[i].any(dim=1).sum())
            valid_w = int(pixel_mask[i].any(dim=0).sum())
            crop_h = math.ceil(valid_h * mask_h / height)
            crop_w = math.ceil(valid_w * mask_w / width)
            one = Output(
                class_queries_logits=out.class_queries_logits[i : i + 1],
                masks_queries_logits=out.masks_queries_logits[i : i + 1, :, :crop_h, :crop_w],
            )
            (found,) = model.processor.post_process_panoptic_segmentation(
                one,
                threshold=self.score_threshold,
                overlap_mask_area_threshold=OVERLAP_THRESHOLD,
                # Stuff is fused below, not here: with label_ids_to_fuse the segment
                # counter restarts from a fused id and later segments share ids
                # (huggingface/transformers#23461).
                label_ids_to_fuse=set(),
                target_sizes=[(valid_h, valid_w)],
            )
            results.append(self._segments(model, found))
        return results

    @staticmethod
    def _segments(model: _Loaded, found: dict[str, Any]) -> list[Segment]:
        import torch

        seg_map = found["segmentation"]
        ids = seg_map[seg_map > 0].long().cpu()  # 0: no segment, -1: nothing found
        counts = torch.bincount(ids, minlength=1)
        total = seg_map.numel()
        # Stuff is one region per label (one sky), as in the original Mask2Former's
        # panoptic inference: sum its queries' areas, keep the best score. Things stay
        # one segment per query.
        stuff: dict[str, tuple[int, float]] = {}
        segments = []
        for info in found["segments_info"]:
            sid, label_id, score = int(info["id"]), int(info["label_id"]), float(info["score"])
            area = int(counts[sid]) if sid < len(counts) else 0
            if area == 0:
                continue
            label = model.labels[label_id]
            if label_id in model.thing_ids:
                segments.append(Segment(label, True, area / total, score))
            else:
                before_area, before_score = stuff.get(label, (0, 0.0))
                stuff[label] = (before_area + area, max(before_score, score))
        segments += [Segment(lb, False, a / total, sc) for lb, (a, sc) in stuff.items()]
        segments.sort(key=lambda s: (-s.area, s.label))
        return segments


@register("mask2former")
def create(**kwargs: Any) -> Mask2FormerSegmenter:
    return Mask2FormerSegmenter(**kwargs)
