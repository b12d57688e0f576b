"""Panoptic segmentation: which things (person, car) and stuff (sky, grass) a picture holds.

Backends register under a name and are built from plain keyword arguments, so the shell
can pick one from settings:

- ``detectron2``: Panoptic FPN from detectron2's model zoo, the default wherever
  detectron2 is installed (it is built from source, so not every machine has it);
- ``mask2former``: Mask2Former (COCO panoptic) through Hugging Face transformers.

Both speak COCO panoptic's 133 categories and clean their names the same way
(:func:`clean_label`), so a tag written by one backend matches a tag written by the other.
Importing this package imports no model library: that happens when a model loads.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from catalog.results import Segment


@runtime_checkable
class Segmenter(Protocol):
    name: str  # the model's name within its backend (config stem, repository id)
    backend: str  # the registry name: "detectron2", "mask2former"

    @property
    def model_id(self) -> str:
        """Provenance: backend and weights, e.g. ``detectron2/panoptic_fpn_R_50_3x@x.pkl``."""
        ...

    def segment(self, images: Sequence[Image.Image]) -> list[list[Segment]]:
        """One list of segments per image (RGB, any size), largest first."""
        ...

    def categories(self) -> dict[str, bool]:
        """Every label this segmenter can emit, mapped to whether it is a thing."""
        ...


# Backends that ship with Everlook: registry name -> (module, library it needs).
_BUILTIN: dict[str, tuple[str, str]] = {
    "detectron2": ("enrich.panoptic.detectron2_backend", "detectron2"),
    "mask2former": ("enrich.panoptic.mask2former", "transformers"),
}
_REGISTRY: dict[str, Callable[..., Segmenter]] = {}


def register(name: str) -> Callable[[Callable[..., Segmenter]], Callable[..., Segmenter]]:
    def deco(factory: Callable[..., Segmenter]) -> Callable[..., Segmenter]:
        _REGISTRY[name] = factory
        return factory

    return deco


def create(name: str, **kwargs: Any) -> Segmenter:
    """Build the named backend. Cheap: the model loads on the first ``segment`` call."""
    if name not in _REGISTRY and name in _BUILTIN:
        # The backend modules import their libraries only inside functions, so this
        # import stays light even though the libraries are heavy.
        importlib.import_module(_BUILTIN[name][0])
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = sorted({*_REGISTRY, *_BUILTIN})
        raise KeyError(f"unknown segmenter {name!r}; known: {known}") from None
    return factory(**kwargs)


def _installed(library: str) -> bool:
    # find_spec looks for the package without importing it (detectron2 imports torch).
    return importlib.util.find_spec(library) is not None


def available() -> list[str]:
    """Backends whose library is installed, plus any registered from outside."""
    names = {name for name, (_, library) in _BUILTIN.items() if _installed(library)}
    return sorted(names | (set(_REGISTRY) - set(_BUILTIN)))


def default_backend() -> str:
    """detectron2 where it is installed, else Mask2Former through transformers."""
    return "detectron2" if _installed("detectron2") else "mask2former"


# ---- labels -----------------------------------------------------------------------------
# COCO panoptic stuff names carry dataset bookkeeping: "-merged" (several COCO-Stuff
# classes folded into one), "-other" (the catch-all of a family), "-stuff" (the stuff
# twin of a thing name). People search for "sky", not "sky-other-merged".
_SUFFIXES = ("-merged", "-other", "-stuff")


def clean_label(name: str) -> str:
    """A COCO panoptic category name as people would write it.

    ``sky-other-merged`` -> ``sky``, ``door-stuff`` -> ``door``, ``wall-brick`` ->
    ``wall brick``, ``traffic light`` unchanged. Both backends go through this, so their
    tags agree.
    """
    label = name.strip()
    stripped = True
    while stripped:
        stripped = False
        for suffix in _SUFFIXES:
            if label.endswith(suffix) and len(label) > len(suffix):
                label = label[: -len(suffix)]
                stripped = True
    return label.replace("-", " ").replace("_", " ").strip()


def tags(segments: Iterable[Segment]) -> list[str]:
    """The set of labels in a picture's segments, sorted: what search filters on."""
    return sorted({s.label for s in segments})


def coco_panoptic_categories() -> dict[str, bool]:
    """COCO panoptic's 133 categories (cleaned name -> is a thing), from detectron2's
    own table. Imports detectron2 (and so torch); raises ImportError where it is absent."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return {clean_label(c["name"]): bool(c["isthing"]) for c in COCO_CATEGORIES}


def coco_thing_names() -> frozenset[str]:
    """COCO's 80 thing names, from torchvision's detection weights metadata.

    Mask2Former's config names its labels but does not say which are things; torchvision
    is a core dependency, so this works where detectron2 is not installed.
    """
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return frozenset(clean_label(n) for n in names if n not in ("__background__", "N/A"))
