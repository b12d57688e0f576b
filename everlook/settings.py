"""One settings class for the whole program (env prefix ``EVERLOOK_``, ``.env`` supported).

Every field here must appear in the README's configuration table; a test checks it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IMAGE_GLOBS = [
    "*.jpg", "*.jpeg", "*.jpe", "*.png", "*.gif", "*.webp", "*.tif", "*.tiff", "*.bmp",
    "*.heic", "*.heif", "*.avif", "*.mpo",
]  # fmt: skip


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
        default_factory=lambda: list(IMAGE_GLOBS),
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
