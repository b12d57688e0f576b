"""`make demo`: build a small picture library, index it, and run a few queries.

The library is generated here (coloured shapes on plain and textured backgrounds) plus,
when present, the real photos in ../shared/data/media/images. It lives in
$EVERLOOK_HOME/demo-library. Queries use whatever CLIP model the settings name (default
ViT-B-32 / laion2b_s34b_b79k): online, open_clip downloads its weights on first use;
offline, Everlook prints which file to put where and the demo stops with exit code 2.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "media" / "images"
COLOURS = {
    "red": (215, 35, 35), "green": (40, 160, 60), "blue": (35, 70, 210),
    "yellow": (235, 205, 40), "purple": (130, 50, 160), "orange": (240, 130, 30),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle")


def shape_picture(rng: random.Random, colour: str, shape: str) -> Image.Image:
    bg = tuple(rng.randrange(150, 250) for _ in range(3))
    img = Image.new("RGB", (320, 240), bg)
    d = ImageDraw.Draw(img)
    r = rng.randrange(40, 90)
    cx, cy = rng.randrange(r, 320 - r), rng.randrange(r, 240 - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def build_library(root: Path) -> Path:
    rng = random.Random(1234)
    for colour in COLOURS:
        for shape in SHAPES:
            for i in range(8):
                path = root / "shapes" / shape / f"{colour}-{shape}-{i}.jpg"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shape_picture(rng, colour, shape).save(path, quality=90)
    if SHARED.is_dir():
        for src in sorted(SHARED.iterdir()):
            dest = root / "photos" / src.name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
    return root


def everlook(*args: str) -> int:
    print(f"\n$ everlook {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "everlook", *args])


def main() -> int:
    sys.path.insert(0, str(REPO))
    from everlook.settings import Settings

    home = Settings().home
    lib = build_library(home / "demo-library")
    print(f"demo library: {lib} ({sum(1 for p in lib.rglob('*') if p.is_file())} files)")
    code = everlook("index", str(lib))
    if code == 2:
        return 2
    first = next(iter(sorted((lib / "shapes" / "circle").glob("red-*.jpg"))))
    for args in (
        ("search", "a red circle", "-k", "5"),
        ("search", "a photo of a cat", "-k", "5"),
        ("search", "--image", str(first), "-k", "5"),
        ("search", "--like", str(first), "-k", "5"),
        ("stats",),
    ):
        if everlook(*args) != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
