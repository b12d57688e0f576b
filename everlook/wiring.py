"""Builds the parts from settings and hands them in; the parts never read settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
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
from search.spaces import Space
from search.vectors import BuildOptions, IndexInfo


def open_catalog(settings: Settings) -> Catalog:
    import migrations

    engine = make_engine(settings.catalog_url)
    migrations.ensure_head(engine)  # schema always at head before anything reads it
    return Catalog(engine)


@dataclass
class Parts:
    settings: Settings

    @cached_property
    def catalog(self) -> Catalog:
        return open_catalog(self.settings)

    # ---- spaces ---------------------------------------------------------------------
    @cached_property
    def spaces(self) -> dict[str, Space]:
        """The enabled spaces, clip first: each with its active model and index, and the
        newly configured model when it differs (it backfills until switched to)."""
        return {name: self._space(name) for name in self.settings.spaces}

    def _space(self, name: str) -> Space:
        args = self.embedder_args(name)
        configured = self.build_embedder(name, args)
        active = self.catalog.spaces.activate_if_new(name, configured.model_id, args)
        if active.model_id == configured.model_id:
            emb, target = configured, None
        else:
            emb, target = self.build_embedder(name, active.args), configured
        info = IndexInfo(model_id=emb.model_id, dim=emb.dim)
        s = self.settings
        options = BuildOptions(s.index_exact_max, s.index_recall, s.index_nlist,
                               gpu=cuda_number(s.device))  # fmt: skip
        path, where = self.index_location(name, info.model_id)
        index = VectorIndex(self.catalog, s.vector_backend, path, name, info,
                            options, where)  # fmt: skip
        return Space(name, emb, index, target)

    def index_location(self, space: str, model_id: str) -> tuple[Path, dict[str, Any]]:
        """A space's index file, and where its vectors live when not in it: with Milvus,
        the server and the alias of the space's model (the file only remembers the
        catalog mark the collection matched at this process's last save)."""
        s = self.settings
        if s.vector_backend != "milvus":
            return s.index_dir / f"{space}.faiss", {}
        if not s.milvus_uri:
            raise ValueError("EVERLOOK_VECTOR_BACKEND=milvus needs EVERLOOK_MILVUS_URI")
        from search.vectors.milvus_store import alias_for

        token = s.milvus_token.get_secret_value() if s.milvus_token else None
        where = {"uri": s.milvus_uri, "token": token,
                 "alias": alias_for(s.milvus_collection, space, model_id)}  # fmt: skip
        return s.index_dir / f"{space}.milvus.json", where

    def embedder_args(self, space: str) -> dict[str, Any]:
        """What the settings ask of a space's model (stored with the active model, so it
        can be built again after the settings move on to another)."""
        s = self.settings
        if space == "clip":
            # quantize changes the vectors (and the model id), so it is stored with the model.
            return {
                "model_name": s.clip_model,
                "pretrained": s.clip_pretrained,
                "quantize": s.clip_quantize,
            }
        if space == "imagebind":
            return {"model_name": s.imagebind_model, "audio_clips": s.audio_clips}
        raise ValueError(f"unknown space {space!r}")

    def build_embedder(self, space: str, args: dict[str, Any]) -> Embedder:
        s = self.settings
        extra: dict[str, Any] = {}
        if space == "imagebind":
            extra = {"cache_dir": s.models_cache / "imagebind"}
        elif space == "clip":  # what runs it, not what it computes: not stored
            extra = {"cache_dir": s.models_cache, "backend": s.clip_backend,
                     "cpu_bf16": s.cpu_bf16}  # fmt: skip
        return embedders.create(space, **args, model_dir=s.model_dir, device=s.device, **extra)

    @property
    def embedder(self) -> Embedder:
        """CLIP's active model: pictures are embedded inline with it."""
        return self.spaces["clip"].embedder

    @property
    def index(self) -> VectorIndex:
        return self.spaces["clip"].index

    def embed_stages(self) -> list[Stage]:
        """embed/<space> for every space's active model but CLIP's (which the pipeline runs
        inline), and embed/<space>:next for a model that is backfilling."""
        from indexer.embed_stage import EmbedStage

        have = self.catalog.spaces.have
        out: list[Stage] = []
        for name, sp in self.spaces.items():
            if name != "clip":
                out.append(EmbedStage(name, sp.embedder, sp.index, have))
            if sp.target is not None:
                out.append(EmbedStage(name, sp.target, None, have))
        return out

    def stage_names(self) -> list[str]:
        return [st.name for st in self.embed_stages()] + list(self.settings.stages)

    def scan_rules(
        self, include: Sequence[str] = (), exclude: Sequence[str] = (), hidden: bool = False
    ) -> ScanRules:
        """What scans and the watcher take: the settings' globs (and a command line's),
        never Everlook's own data dir."""
        import os

        s = self.settings
        return ScanRules(
            include or s.include, [*s.exclude, *exclude], hidden or s.include_hidden,
            skip_under=(os.path.realpath(s.home), os.path.abspath(s.home)),
        )  # fmt: skip

    def pipeline(self, rules: ScanRules | None = None, inline_stages: bool = True) -> Pipeline:
        s = self.settings
        opts = PipelineOptions(
            limits=self.limits(),
            rules=rules or self.scan_rules(),
            batch_size=s.batch_size, workers=s.decode_workers, draft=s.draft_decode,
            save_every=s.index_save_every,
        )  # fmt: skip
        runner = self.stage_runner()
        return Pipeline(self.embedder, self.index, self.catalog, opts,
                        runner if runner.stages else None, inline_stages)  # fmt: skip

    def stage_runner(self, names: Sequence[str] | None = None) -> StageRunner:
        """The enrichment stages named (default: the enabled ones), ready to run. Nothing
        loads here: each model loads on its first batch."""
        s = self.settings
        if names is None:  # the spaces' embed stages, then the enabled enrichment stages
            stages = [*self.embed_stages(), *(self.stage(n) for n in s.stages)]
        else:
            stages = [self.stage(n) for n in names]
        return StageRunner(
            stages, self.catalog, self.limits(), max_attempts=s.stage_max_attempts,
            batch_size=min(s.batch_size, 16), workers=s.decode_workers or 2,
            clip_model_id=self.embedder.model_id,
        )  # fmt: skip

    def stage(self, name: str) -> Stage:
        from indexer import stages

        s = self.settings
        if name.startswith("embed/"):
            for st in self.embed_stages():
                if st.name == name:
                    return st
            raise ValueError(
                f"{name}: the {name[6:]} space is not enabled or has nothing to "
                "backfill (EVERLOOK_SPACES)"
            )
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
        queue = JobQueue(self.catalog.engine, lease_s=self.settings.job_lease_seconds)
        return Watcher(pipeline, self.catalog, queue, roots, rules, options, pipeline.stages)

    def api_services(self, roots: Sequence[str], watcher: Any = None) -> Any:
        """Everything the API serves from, built now, in this thread: the catalog, the
        embedder (its weights load on the first query), the index (loaded and
        reconciled), the engine. Nothing shared is built lazily later by a request."""
        import os

        from api.services import ApiConfig, Services

        s = self.settings
        for sp in self.spaces.values():
            sp.index.open()
            sp.index.read_only = watcher is None  # the writer owns the index file
        served = tuple(os.path.realpath(r) for r in roots)
        if served:  # style-transfer results added to the library are served like its files
            served += (os.path.realpath(s.home / "stylize" / "results"),)
        config = ApiConfig(
            thumbs_dir=s.home / "cache" / "thumbs",
            roots=served,
            token=s.api_token.get_secret_value() if s.api_token else None,
            cors_origins=tuple(s.cors_origins), upload_max_bytes=s.upload_max_bytes,
            limits=self.limits(), draft_side=self.query_draft_side(),
            negative_weight=s.negative_weight,
            has_min_confidence=s.has_min_confidence, style_min_score=s.style_min_score,
            artwork_min_score=s.artwork_min_score, refresh_seconds=s.index_refresh_seconds,
        )  # fmt: skip
        from api.services import StylizeConfig

        stylize = StylizeConfig(
            home=s.home, defaults=self.style_defaults(), max_side=s.stylize_max_side,
            max_steps=s.stylize_max_steps, queue_max=s.stylize_queue_max,
            max_attempts=s.stylize_max_attempts,
        )  # fmt: skip
        # Results are added to the library by the writer, through the queue it reads:
        # this server's watcher, or the `watch`/`serve` that writes beside a read-only one.
        index_back = self.index_back_queue()
        worker = self.style_worker(index_back) if s.stylize_concurrency > 0 else None
        return Services(config, self.catalog, self.engines(), self.classifier, watcher,
                        stylize, index_back, worker)  # fmt: skip

    # ---- style transfer ----------------------------------------------------------------
    def style_transfer(self) -> Any:
        from enrich.stylize import StyleTransfer

        s = self.settings
        return StyleTransfer(s.stylize_weights, model_dir=s.model_dir,
                             cache_dir=s.models_cache / "torchvision", device=s.device)  # fmt: skip

    def style_defaults(self) -> dict[str, Any]:
        """The settings a job starts from (StyleSettings' fields; a request may change
        side, steps, optimiser and weights)."""
        s = self.settings
        return {
            "side": s.stylize_side, "steps": s.stylize_steps, "optimizer": s.stylize_optimizer,
            "content_weight": s.stylize_content_weight, "style_weight": s.stylize_style_weight,
            "content_layers": list(s.stylize_content_layers),
            "style_layers": list(s.stylize_style_layers),
        }  # fmt: skip

    def index_back_queue(self) -> Any:
        """Hand a result file to the library's writer: a job on the watcher's queue,
        indexed by whichever `serve` or `watch` runs (now or at its next start)."""
        import os
        import time

        from catalog.jobs import JobQueue

        queue = JobQueue(self.catalog.engine)

        def index_back(path: str) -> None:
            st = os.stat(path)
            queue.put(path, "index", time.time(), st.st_size, st.st_mtime_ns, closed=True)

        return index_back

    def style_worker(self, index_back: Any = None, concurrency: int | None = None) -> Any:
        from catalog.stylejobs import StyleQueue
        from indexer.stylize_worker import StyleWorker, WorkerOptions

        s = self.settings
        opts = WorkerOptions(
            lease_seconds=s.job_lease_seconds, preview_every=s.stylize_preview_every,
            concurrency=s.stylize_concurrency if concurrency is None else concurrency,
        )  # fmt: skip
        return StyleWorker(self.catalog, StyleQueue(self.catalog.engine), self.style_transfer(),
                           s.home, self.limits(), opts, index_back)  # fmt: skip

    def query_draft_side(self) -> int | None:
        """How query images are decoded: like indexed ones (JPEG draft at twice the model
        input), so a file searched for finds its own indexed copy at score 1."""
        return 2 * self.embedder.input_side if self.settings.draft_decode else None

    def engine(self) -> SearchEngine:
        return SearchEngine(self.embedder, self.index, self.catalog)

    def engines(self) -> dict[str, SearchEngine]:
        """One search engine per enabled space (its active model and index)."""
        return {n: SearchEngine(sp.embedder, sp.index, self.catalog)
                for n, sp in self.spaces.items()}  # fmt: skip

    def limits(self) -> Limits:
        s = self.settings
        return Limits(
            max_pixels=s.max_pixels, max_file_bytes=s.max_file_bytes,
            max_audio_seconds=s.max_audio_seconds, max_audio_bytes=s.max_audio_bytes,
        )  # fmt: skip


def panoptic_family(backend: str) -> str:
    return "detectron2" if backend == "detectron2" else "transformers"


def cuda_number(device: str) -> int | None:
    """The CUDA device a setting names for FAISS ("cuda:1" -> 1; "auto", "cuda" -> 0), or
    None for the CPU."""
    if device == "cpu" or not (device == "auto" or device.startswith("cuda")):
        return None
    _, _, n = device.partition(":")
    return int(n) if n.isdigit() else 0
