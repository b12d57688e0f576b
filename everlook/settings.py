"""One settings class for the whole program (env prefix ``EVERLOOK_``, ``.env`` supported).

Every field here must appear in the README's configuration table; a test checks it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IMAGE_GLOBS = [
    "*.jpg", "*.jpeg", "*.jpe", "*.png", "*.gif", "*.webp", "*.tif", "*.tiff", "*.bmp",
    "*.heic", "*.heif", "*.avif", "*.mpo",
]  # fmt: skip
AUDIO_GLOBS = ["*.wav", "*.flac", "*.ogg", "*.oga", "*.opus", "*.mp3", "*.aif", "*.aiff"]
SPACES = ("clip", "imagebind")


def _default_home() -> Path:
    # XDG base directory spec: $XDG_DATA_HOME, else ~/.local/share.
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "everlook"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVERLOOK_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home, description="Data directory.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the catalog; default SQLite in home."
    )
    model_dir: Path | None = Field(
        default=None, description="Folder of local model weights and configs (offline use)."
    )
    clip_model: str = Field(default="ViT-B-32", description="open_clip model name.")
    clip_pretrained: str = Field(
        default="laion2b_s34b_b79k",
        description="open_clip pretrained tag, or a path to a checkpoint file.",
    )
    device: str = Field(default="auto", description="torch device: auto, cpu, cuda, cuda:1...")
    clip_backend: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="What runs CLIP: auto (ONNX Runtime on a CPU when its export matches "
        "open_clip, PyTorch on a GPU), torch, or onnx.",
    )
    clip_quantize: Literal["none", "int8"] = Field(
        default="none",
        description="int8: dynamically quantised ONNX towers (faster on a CPU, other vectors: "
        "the library is embedded again).",
    )
    cpu_bf16: bool = Field(
        default=False,
        description="On a CPU that multiplies bfloat16 natively (AVX512-BF16: AMD Zen 4 and "
        "later; AMX: Intel Xeon 4th generation and later), index pictures in bf16 through "
        "OpenVINO when its vectors agree with fp32 (cosine >= 0.999, checked once per "
        "model): ~2x the model rate, vectors close to fp32's but not equal (~0.9996).",
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Images per model batch.")
    decode_workers: int = Field(
        default=0, ge=0, le=64, description="Decoding threads; 0 = one per CPU core."
    )
    draft_decode: bool = Field(
        default=True, description="Decode JPEGs at reduced size (never < 2x model input)."
    )
    max_pixels: int = Field(
        default=100_000_000, ge=1, description="Images with more pixels are refused."
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1, description="Files larger than this are refused."
    )
    include: list[str] = Field(
        default_factory=lambda: [*IMAGE_GLOBS, *AUDIO_GLOBS],
        description="Glob patterns of file names to index (case-insensitive).",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of paths or names to skip."
    )
    include_hidden: bool = Field(
        default=False, description="Also index hidden files and folders (dot-names)."
    )
    watch_quiet_seconds: float = Field(
        default=1.0, ge=0.0, le=3600, description="A file must be unchanged this long to be taken."
    )
    watch_poll: bool = Field(default=False, description="Poll instead of using inotify events.")
    watch_poll_interval: float = Field(
        default=2.0, gt=0.0, le=3600, description="Seconds between polls when polling."
    )
    index_save_every: int = Field(
        default=2000, ge=1, description="Save the vector index after this many new vectors."
    )
    index_exact_max: int = Field(
        default=100_000, ge=0, description="A space's vector index searches exactly below "
        "this many vectors, approximately (IVF, recall measured) from it on.",
    )  # fmt: skip
    index_recall: float = Field(
        default=0.97, gt=0.0, le=1.0, description="recall@10 against exact search that the "
        "approximate index is tuned to reach (lists probed per query, chosen at each build).",
    )  # fmt: skip
    index_nlist: int = Field(
        default=0, ge=0, description="Inverted lists of the approximate index; 0: 2 x "
        "sqrt(vectors), a power of two.",
    )  # fmt: skip
    vector_backend: Literal["faiss", "milvus"] = Field(
        default="faiss", description="Where the vectors are searched: faiss (index files in "
        "the home folder) or milvus (a Milvus server many machines share; the milvus extra).",
    )  # fmt: skip
    milvus_uri: str = Field(
        default="", description="Milvus to use with EVERLOOK_VECTOR_BACKEND=milvus: "
        "http://host:19530 (standalone, cluster, `milvus-lite server`) or a local .db file.",
    )  # fmt: skip
    milvus_token: SecretStr | None = Field(
        default=None, description="Milvus credentials (user:password, or an API key)."
    )
    milvus_collection: str = Field(
        default="everlook", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Prefix of the Milvus collection aliases (one per space and model); "
        "libraries sharing a Milvus need different ones.",
    )  # fmt: skip

    spaces: list[str] = Field(
        default_factory=lambda: ["clip"],
        description="Embedding spaces to keep (JSON list): clip (pictures, text), imagebind "
        "(pictures, sound, text; needed for audio items). Adding one backfills it; removing "
        "one stops it and keeps its vectors until `everlook db prune`.",
    )
    imagebind_model: str = Field(
        default="imagebind_huge", description="ImageBind model: imagebind_huge, a name with "
        "a config under model_dir/imagebind, or a path to a .pth file.",
    )  # fmt: skip
    audio_clips: int = Field(
        default=3, ge=1, le=32, description="2-second clips spread over a recording that "
        "ImageBind embeds (their mean is the recording's vector).",
    )  # fmt: skip
    max_audio_seconds: float = Field(
        default=3600.0, gt=0.0, description="Longer recordings are refused (from the header)."
    )
    max_audio_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1, description="Audio files larger than this are refused."
    )

    stages: list[str] = Field(
        default_factory=lambda: ["detect/yolo", "style", "labels"],
        description="Enrichment stages to run after embedding (JSON list): detect/yolo, "
        "panoptic, style, labels. Panoptic is off by default on CPU (see costs).",
    )
    stage_max_attempts: int = Field(
        default=3, ge=1, le=100, description="Tries per (item, stage) before giving up."
    )
    yolo_model: str = Field(
        default="yolo11n.pt",
        description="Ultralytics detection checkpoint: a name, or a path to a .pt file.",
    )
    yolo_confidence: float = Field(
        default=0.25, ge=0.0, le=1.0, description="Detections below this are not stored."
    )
    has_min_confidence: float = Field(
        default=0.4, ge=0.0, le=1.0, description="Detections below this don't count for --has."
    )
    panoptic_backend: str = Field(
        default="auto", description="Panoptic segmenter: auto (detectron2 if installed), "
        "detectron2, mask2former.",
    )  # fmt: skip
    panoptic_model: str = Field(
        default="", description="Segmenter model (config or repo id); empty: backend default."
    )
    artists: list[str] = Field(
        default_factory=list, description="Artists for style scores (JSON list); empty: 44 "
        "painters shipped with Everlook.",
    )  # fmt: skip
    style_templates: list[str] = Field(
        default_factory=list, description="Prompt templates for artists, each with {} "
        "(JSON list); empty: the built-in ensemble.",
    )  # fmt: skip
    artwork_prompts: list[str] = Field(
        default_factory=list, description="Sentences describing artworks, for the artwork "
        "score (JSON list); empty: built-in.",
    )  # fmt: skip
    photo_prompts: list[str] = Field(
        default_factory=list, description="Sentences describing photographs, for the "
        "artwork score (JSON list); empty: built-in.",
    )  # fmt: skip
    style_top_k: int = Field(default=3, ge=1, le=50, description="Artist scores kept per item.")
    style_min_score: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Style score --style needs (0..1)."
    )
    artwork_min_score: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Artwork score --style needs (0..1)."
    )
    labels_top_k: int = Field(default=5, ge=1, le=50, description="ImageNet labels kept per item.")

    stylize_weights: str = Field(
        default="imagenet", description="VGG-19 weights for style transfer: imagenet "
        "(torchvision's, downloaded once) or random (offline demo: texture statistics only).",
    )  # fmt: skip
    stylize_side: int = Field(
        default=512, ge=32, le=4096, description="Long side of a style-transfer result (px)."
    )
    stylize_max_side: int = Field(
        default=1024, ge=32, le=4096, description="Largest long side a job may ask for (px)."
    )
    stylize_steps: int = Field(
        default=300, ge=1, le=10000, description="Optimiser steps per style-transfer job."
    )
    stylize_max_steps: int = Field(
        default=1000, ge=1, le=10000, description="Most steps a job may ask for."
    )
    stylize_optimizer: str = Field(
        default="lbfgs", description="Style-transfer optimiser: lbfgs (Gatys) or adam."
    )
    stylize_content_weight: float = Field(
        default=1.0, ge=0.0, description="Weight of the content loss in style transfer."
    )
    stylize_style_weight: float = Field(
        default=1e6, ge=0.0, description="Weight of the style (Gram) loss in style transfer."
    )
    stylize_content_layers: list[str] = Field(
        default_factory=lambda: ["conv4_2"], description="VGG-19 layers of the content "
        "loss (JSON list).",
    )  # fmt: skip
    stylize_style_layers: list[str] = Field(
        default_factory=lambda: ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"],
        description="VGG-19 layers of the style loss (JSON list).",
    )
    stylize_preview_every: int = Field(
        default=10, ge=1, le=10000, description="Steps between intermediate pictures of a job."
    )
    stylize_concurrency: int = Field(
        default=1, ge=0, le=64, description="Style jobs a worker runs at once (0: this "
        "process runs none); 1 suits a CPU, raise it on a GPU.",
    )  # fmt: skip
    stylize_queue_max: int = Field(
        default=16, ge=1, description="Queued style jobs beyond which the API answers 429."
    )
    stylize_max_attempts: int = Field(
        default=3, ge=1, le=100, description="Tries of a style job whose worker died."
    )
    job_lease_seconds: float = Field(
        default=30.0, gt=0.0, le=3600, description="A job whose worker has not reported "
        "for this long is taken over by another.",
    )  # fmt: skip

    library: list[str] = Field(
        default_factory=list, description="Library folders `everlook serve` watches and "
        "serves files from (JSON list); folders given on its command line are added.",
    )  # fmt: skip
    host: str = Field(default="127.0.0.1", description="Address `everlook serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `everlook serve` binds to.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token the API requires (all but /api/health); "
        "needed to bind to a non-loopback address.",
    )  # fmt: skip
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser "
        "(JSON list); none by default.",
    )  # fmt: skip
    upload_max_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1, description="Largest upload the API accepts (bytes)."
    )
    index_refresh_seconds: float = Field(
        default=2.0, gt=0.0, le=3600, description="How often the server picks up vectors "
        "another process added to the catalog.",
    )  # fmt: skip
    negative_weight: float = Field(
        default=0.5, ge=0.0, le=2.0, description="Weight of each \"-word\" in a query, "
        "subtracted from the query vector.",
    )  # fmt: skip

    @field_validator("api_token", mode="after")
    @classmethod
    def _token_is_a_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty variable (TOKEN=${UNSET} in a compose file) must not read as "no
        # token", which would open the API; a short one is guessable.
        if value is not None and len(value.get_secret_value().strip()) < 12:
            raise ValueError(
                "EVERLOOK_API_TOKEN is set but shorter than 12 characters (empty?): use a "
                "long random string, e.g. `openssl rand -hex 24`, or unset it"
            )
        return value

    @field_validator("spaces", mode="after")
    @classmethod
    def _known_spaces(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in SPACES]
        if unknown:
            raise ValueError(f"unknown space(s) {unknown}; known: {', '.join(SPACES)}")
        if "clip" not in value:
            # Pictures become searchable through CLIP the moment they are indexed, and the
            # style, labels and zero-shot features read CLIP vectors: it is the base space.
            raise ValueError(
                "EVERLOOK_SPACES must include clip (the base space); add "
                'imagebind beside it, e.g. \'["clip", "imagebind"]\''
            )
        # Always clip first: a query takes the first space that can answer it, so the
        # order written in the setting must not send text queries through ImageBind.
        return [sp for sp in SPACES if sp in value]

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def catalog_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'catalog.db'}"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def models_cache(self) -> Path:
        """Where Everlook downloads weights itself (laid out like EVERLOOK_MODEL_DIR)."""
        return self.home / "models"
