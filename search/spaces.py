"""Embedding spaces: each has its own embedder, its own vector index file and its own
stage, and the query picks one by what it is (text, picture, sound) and what it wants
back (pictures, sounds).

A space's *active* model answers queries from its index. A model configured later is the
space's *target*: it backfills beside the active one (its vectors are stored, not
indexed) until the user switches to it (``everlook spaces switch``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from search.embedders import Embedder

if TYPE_CHECKING:
    from search.index_sync import VectorIndex

# Which item kinds a model with these modalities can embed.
KIND_OF_MODALITY = {"image": "image", "audio": "audio"}


class NoSpace(ValueError):
    """No enabled space can answer this query (the message says what would)."""


class BadSpace(NoSpace):
    """The space asked for cannot take this query or kind (a bad request, not a setup
    matter)."""


class Modal:
    """What pick() reads of whatever answers a space's queries (a Space, a SearchEngine):
    the modalities its embedder takes and the item kinds those hold."""

    embedder: Embedder

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(self.embedder.modalities)

    @property
    def kinds(self) -> frozenset[str]:
        return kinds_for(self.modalities)


@dataclass
class Space(Modal):
    name: str
    embedder: Embedder  # the active model: answers queries, its vectors are indexed
    index: VectorIndex
    target: Embedder | None = None  # a newly configured model still backfilling

    @property
    def target_kinds(self) -> frozenset[str]:
        return kinds_for(frozenset(self.target.modalities)) if self.target else frozenset()


def kinds_for(modalities: frozenset[str]) -> frozenset[str]:
    return frozenset(KIND_OF_MODALITY[m] for m in modalities if m in KIND_OF_MODALITY)


class Pickable(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def modalities(self) -> frozenset[str]: ...

    @property
    def kinds(self) -> frozenset[str]: ...


P = TypeVar("P", bound=Pickable)


def pick(spaces: Mapping[str, P], query: str, kind: str | None, requested: str | None = None) -> P:
    """The space for a query of modality ``query`` (text, image, audio) looking for items
    of ``kind`` (image, audio, or None for any): the one asked for, else the first enabled
    space (clip before imagebind) that embeds the query and holds that kind. So text and
    pictures search pictures through CLIP, and anything involving sound goes through
    ImageBind."""
    if requested is not None:
        space = spaces.get(requested)
        if space is None:
            raise NoSpace(
                f"space {requested!r} is not enabled (enabled: {', '.join(spaces)}); add it "
                f"to EVERLOOK_SPACES"
            )
        if query not in space.modalities:
            raise BadSpace(f"the {requested} space cannot embed {_name(query)} queries")
        if kind and kind not in space.kinds:
            raise BadSpace(f"the {requested} space holds no {kind} items")
        return space
    for space in spaces.values():  # in settings order: clip first
        if query in space.modalities and (kind is None or kind in space.kinds):
            return space
    need = "imagebind" if (query == "audio" or kind == "audio") else "clip"
    raise NoSpace(
        f"no enabled space embeds {_name(query)} queries for {kind or 'any'} items: enable "
        f'the {need} space (EVERLOOK_SPACES=\'["clip", "{need}"]\') and index again'
    )


def _name(modality: str) -> str:
    return {"image": "picture", "audio": "sound"}.get(modality, modality)
