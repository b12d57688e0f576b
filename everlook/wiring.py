"""Builds the parts from settings and hands them in; the parts never read settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from catalog import Catalog, make_engine
from everlook.settings import Settings
from indexer.media import Limits
from indexer.pipeline import Pipeline, PipelineOptions
from indexer.scan import ScanRules
from indexer.stages import Stage, StageRunner
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

    def pipeline(self, rules: ScanRules | None = None, inline_stages: bool = True) -> Pipeline:
        s = self.settings
        opts = PipelineOptions(
            limits=Limits(max_pixels=s.max_pixels, max_file_bytes=s.max_file_bytes),
            rules=rules or ScanRules(s.include, s.exclude, s.include_hidden),
            batch_size=s.batch_size, workers=s.decode_workers, draft=s.draft_decode,
            save_every=s.index_save_every,
        )  # fmt: skip
        runner = self.stage_runner() if s.stages else None
        return Pipeline(self.embedder, self.index, self.catalog, opts, runner, inline_stages)

    def stage_runner(self, names: Sequence[str] | None = None) -> StageRunner:
        """The enrichment stages named (default: the enabled ones), ready to run. Nothing
        loads here: each model loads on its first batch."""
        s = self.settings
        stages = [self.stage(n) for n in (s.stages if names is None else names)]
        return StageRunner(
            stages, self.catalog, self.limits(), max_attempts=s.stage_max_attempts,
            batch_size=min(s.batch_size, 16), workers=s.decode_workers or 2,
            clip_model_id=self.embedder.model_id,
        )  # fmt: skip

    def stage(self, name: str) -> Stage:
        from indexer import stages

        s = self.settings
        if name == "detect/yolo":
            from enrich.detect import YoloDetector, configure_ultralytics

            configure_ultralytics(s.home / "ultralytics")
            detector = YoloDetector(
                s.yolo_model, conf=s.yolo_confidence, model_dir=s.model_dir,
                cache_dir=s.models_cache / "ultralytics", device=s.device,
            )  # fmt: skip
            return stages.create(name, detector=detector)
        if name == "panoptic":
            return stages.create(name, segmenter=self.segmenter())
        if name == "style":
            from enrich.style import ArtistStyleScorer

            kw: dict[str, Any] = {}
            for key in ("style_templates", "artwork_prompts", "photo_prompts"):
                if getattr(s, key):  # empty: the scorer's built-in prompts
                    kw[key.replace("style_", "")] = getattr(s, key)
            scorer = ArtistStyleScorer(
                self.embedder, s.artists or None, top_k=s.style_top_k,
                cache_dir=s.home / "cache" / "prompts", **kw,
            )  # fmt: skip
            return stages.create(name, scorer=scorer)
        if name == "labels":
            return stages.create(name, classifier=self.classifier(), top_k=s.labels_top_k)
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(stages.available())}")

    def segmenter(self) -> Any:
        from enrich import panoptic

        s = self.settings
        backend = panoptic.default_backend() if s.panoptic_backend == "auto" else s.panoptic_backend
        kw: dict[str, Any] = {}
        if s.panoptic_model:
            kw["config" if backend == "detectron2" else "repo"] = s.panoptic_model
        return panoptic.create(
            backend, model_dir=s.model_dir, cache_dir=s.models_cache / panoptic_family(backend),
            device=s.device, **kw,
        )  # fmt: skip

    def classifier(self) -> Any:
        from enrich.zeroshot import ZeroShotClassifier, simple_imagenet_templates

        # The 7 short templates, not OpenAI's 80: 7,000 prompts to embed once per model
        # instead of 80,000 (over an hour of CPU for ViT-B-32's text tower).
        return ZeroShotClassifier(
            self.embedder, templates=simple_imagenet_templates(),
            cache_dir=self.settings.home / "cache" / "prompts",
        )  # fmt: skip

    def watcher(self, roots: Sequence[str], rules: ScanRules, options: Any = None) -> Any:
        """A watcher over roots: the pipeline embeds new files at once; enrichment stages
        run in the background when the queue is idle."""
        from catalog.jobs import JobQueue
        from indexer.watch import Watcher

        pipeline = self.pipeline(rules, inline_stages=False)
        queue = JobQueue(self.catalog.engine)
        return Watcher(pipeline, self.catalog, queue, roots, rules, options, pipeline.stages)

    def api_services(self, roots: Sequence[str], watcher: Any = None) -> Any:
        """Everything the API serves from, built now, in this thread: the catalog, the
        embedder (its weights load on the first query), the index (loaded and
        reconciled), the engine. Nothing shared is built lazily later by a request."""
        import os

        from api.services import ApiConfig, Services

        s = self.settings
        index = self.index
        index.open()
        index.read_only = watcher is None  # the writer owns the index file
        config = ApiConfig(
            thumbs_dir=s.home / "cache" / "thumbs",
            roots=tuple(os.path.realpath(r) for r in roots),
            token=s.api_token.get_secret_value() if s.api_token else None,
            cors_origins=tuple(s.cors_origins), upload_max_bytes=s.upload_max_bytes,
            limits=self.limits(), draft_side=self.query_draft_side(),
            negative_weight=s.negative_weight,
            has_min_confidence=s.has_min_confidence, style_min_score=s.style_min_score,
            artwork_min_score=s.artwork_min_score, refresh_seconds=s.index_refresh_seconds,
        )  # fmt: skip
        return Services(config, self.catalog, self.engine(), self.classifier, watcher)

    def query_draft_side(self) -> int | None:
        """How query images are decoded: like indexed ones (JPEG draft at twice the model
        input), so a file searched for finds its own indexed copy at score 1."""
        return 2 * self.embedder.input_side if self.settings.draft_decode else None

    def engine(self) -> SearchEngine:
        return SearchEngine(self.embedder, self.index, self.catalog)

    def limits(self) -> Limits:
        return Limits(
            max_pixels=self.settings.max_pixels, max_file_bytes=self.settings.max_file_bytes
        )


def panoptic_family(backend: str) -> str:
    return "detectron2" if backend == "detectron2" else "transformers"
