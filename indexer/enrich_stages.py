"""The built-in enrichment stages: thin adapters from a backend in ``enrich/`` to a Stage.

Each takes its backend ready-made (the shell builds it from settings), so a stage only
says what it needs and how the backend's answer becomes a StageOutput.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from catalog.results import StageOutput
from indexer.stages import Work, register

IMAGES = frozenset({"image"})


class DetectStage:
    """Objects and their boxes (YOLO)."""

    name = "detect/yolo"
    kinds = IMAGES
    needs = "image"

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.image_side = int(getattr(detector, "imgsz", 640))

    @property
    def model_id(self) -> str:
        return str(self.detector.model_id)

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        found = self.detector.detect([w.image for w in batch])
        return [StageOutput(detections=list(d)) for d in found]


class PanopticStage:
    """Things and stuff covering the whole picture (panoptic segmentation)."""

    name = "panoptic"
    kinds = IMAGES
    needs = "image"
    image_side = 1024  # Panoptic FPN / Mask2Former test sizes are 800-1333

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    @property
    def model_id(self) -> str:
        return str(self.segmenter.model_id)

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        found = self.segmenter.segment([w.image for w in batch])
        return [StageOutput(segments=list(s)) for s in found]


class _OverClip:
    """A stage that reads the item's CLIP vector: no decoding at all."""

    kinds = IMAGES
    needs = "clip"
    image_side = 0

    def _stack(self, batch: Sequence[Work]) -> np.ndarray:
        return np.stack([np.asarray(w.vector, dtype=np.float32) for w in batch])


class StyleStage(_OverClip):
    """Artist-style scores and the artwork score, zero-shot in the CLIP space."""

    name = "style"

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    @property
    def model_id(self) -> str:
        return str(self.scorer.model_id)

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        return [StageOutput(labels=list(lb)) for lb in self.scorer.score(self._stack(batch))]


class LabelStage(_OverClip):
    """The top ImageNet-1k labels, zero-shot, so searches can match them by name."""

    name = "labels"

    def __init__(self, classifier: Any, top_k: int = 5) -> None:
        self.classifier = classifier
        self.top_k = top_k

    @property
    def model_id(self) -> str:
        return f"{self.classifier.model_id}+imagenet-top{self.top_k}"

    def run(self, batch: Sequence[Work]) -> list[StageOutput]:
        found = self.classifier.top_imagenet(self._stack(batch), k=self.top_k)
        return [StageOutput(labels=list(lb)) for lb in found]


register("detect/yolo")(DetectStage)
register("panoptic")(PanopticStage)
register("style")(StyleStage)
register("labels")(LabelStage)
