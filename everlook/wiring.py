"""Builds the parts from settings and hands them in; the parts never read settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from catalog import Catalog, make_engine
from everlook.settings import Settings
from indexer.media import Limits
from indexer.pipeline import Pipeline, PipelineOptions
from indexer.scan import ScanRules
from search import embedders
from search.embedders import Embedder
from search.engine import SearchEngine
from search.index_sync import VectorIndex
from search.vectors import IndexInfo


def open_catalog(settings: Settings) -> Catalog:
    import migrations

    engine = make_engine(settings.catalog_url)
    migrations.upgrade(engine)  # schema always at head before anything reads it
    return Catalog(engine)


@dataclass
class Parts:
    settings: Settings

    @cached_property
    def catalog(self) -> Catalog:
        return open_catalog(self.settings)

    @cached_property
    def embedder(self) -> Embedder:
        s = self.settings
        return embedders.create(
            "clip", model_name=s.clip_model, pretrained=s.clip_pretrained,
            model_dir=s.model_dir, device=s.device,
        )  # fmt: skip

    @cached_property
    def index(self) -> VectorIndex:
        emb = self.embedder
        info = IndexInfo(model_id=emb.model_id, dim=emb.dim)
        path = self.settings.index_dir / f"{emb.space}.faiss"
        return VectorIndex(self.catalog, "faiss", path, emb.space, info)

    def pipeline(self, rules: ScanRules | None = None) -> Pipeline:
        s = self.settings
        opts = PipelineOptions(
            limits=Limits(max_pixels=s.max_pixels, max_file_bytes=s.max_file_bytes),
            rules=rules or ScanRules(s.include, s.exclude, s.include_hidden),
            batch_size=s.batch_size, workers=s.decode_workers, draft=s.draft_decode,
            save_every=s.index_save_every,
        )  # fmt: skip
        return Pipeline(self.embedder, self.index, self.catalog, opts)

    def engine(self) -> SearchEngine:
        return SearchEngine(self.embedder, self.index, self.catalog)

    def limits(self) -> Limits:
        return Limits(
            max_pixels=self.settings.max_pixels, max_file_bytes=self.settings.max_file_bytes
        )
