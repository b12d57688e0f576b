"""A deterministic synthetic world: captioned pictures of coloured shapes, and artworks.

Everything is a pure function of a seed, so the training set, the held-out evaluation
set, the demo library and the end-to-end tests are all reproducible. Held-out data uses
seeds from a range training never touches.

Objects: 6 shapes x 8 colours, 1-3 of them (same shape and colour), small/medium/large,
anywhere, on a plain, gradient, noisy or striped background of a neutral colour.
Artworks: the same kind of scene rendered in one of 5 styles (stippled, striped,
mosaic, watercolour, line art), for style scores and style transfer later.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "moon", "cross")
PLURAL = {"cross": "crosses"}
COLOURS = {
    "red": (210, 30, 35), "orange": (245, 135, 20), "yellow": (240, 215, 30),
    "green": (35, 160, 55), "blue": (30, 70, 215), "purple": (125, 45, 165),
    "pink": (245, 120, 185), "brown": (120, 70, 30),
}  # fmt: skip
BACKGROUNDS = {
    "white": (238, 238, 238), "grey": (150, 150, 150), "dark grey": (70, 70, 70),
    "black": (18, 18, 18), "beige": (222, 206, 172),
}  # fmt: skip
TEXTURES = ("plain", "gradient", "noisy", "striped")
STYLES = ("stippled", "striped", "mosaic", "watercolour", "line art")
SIZES = {"small": (0.13, 0.16), "medium": (0.17, 0.21), "large": (0.22, 0.27)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Colour-shape pairs never shown in training, to measure generalisation (no bar).
HELD_OUT_PAIRS = frozenset({("pink", "star"), ("green", "triangle"), ("brown", "moon"),
                            ("blue", "cross")})  # fmt: skip
EVAL_SEED_BASE = 10_000_000  # training seeds stay below this


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    count: int
    size: str
    background: str
    texture: str
    style: str | None = None  # None: a plain picture; else an artwork style


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else PLURAL.get(shape, shape + "s")


def random_scene(
    rng: random.Random,
    style: str | None = None,
    allow_held_out: bool = False,
    shape: str | None = None,
    colour: str | None = None,
) -> Scene:
    while True:
        sh = shape or rng.choice(SHAPES)
        co = colour or rng.choice(list(COLOURS))
        if allow_held_out or (co, sh) not in HELD_OUT_PAIRS or (shape and colour):
            break
    return Scene(
        sh,
        co,
        rng.randint(1, 3),
        rng.choice(list(SIZES)),
        rng.choice(list(BACKGROUNDS)),
        rng.choice(TEXTURES),
        style,
    )


def caption(scene: Scene, rng: random.Random) -> str:
    """A varied natural sentence describing the scene."""
    return caption_with_facts(scene, rng)[0]


def caption_with_facts(scene: Scene, rng: random.Random) -> tuple[str, dict[str, object]]:
    """A caption and the scene attributes it states (what any matching picture shares)."""
    facts: dict[str, object] = {"shape": scene.shape, "colour": scene.colour,
                                "count": scene.count, "style": scene.style}  # fmt: skip
    if rng.random() < 0.6:
        facts["size"] = scene.size
    if rng.random() < 0.5:
        facts["background"] = scene.background
    return _sentence(scene, rng, "size" in facts, "background" in facts), facts


def matches(scene: Scene, facts: dict[str, object]) -> bool:
    return all(getattr(scene, k) == v for k, v in facts.items())


def _sentence(scene: Scene, rng: random.Random, with_size: bool, with_bg: bool) -> str:
    n = scene.count
    things = plural(scene.shape, n)
    size = scene.size if with_size else ""
    count = COUNT_WORDS[n] if n > 1 else rng.choice(["a", "one"])
    core = " ".join(w for w in (count, size, scene.colour, things) if w)
    bg = f" on a {scene.background} background" if with_bg else ""
    if scene.style is not None:
        kind = rng.choice(["artwork", "picture", "painting", "drawing"])
        style = scene.style
        if style == "line art":
            return rng.choice([f"line art of {core}", f"a line art drawing of {core}",
                               f"{core} in a line art style"]) + bg  # fmt: skip
        return rng.choice([
            f"{_article(style)} {style} {kind} of {core}",
            f"{core} in {_article(style)} {style} style",
            f"{_article(kind)} {kind} of {core}, {style}",
        ]) + bg  # fmt: skip
    return rng.choice([
        f"{core}{bg}", f"a photo of {core}{bg}", f"a picture showing {core}{bg}",
        f"there {'is' if n == 1 else 'are'} {core}{bg}", f"an image of {core}{bg}",
    ])  # fmt: skip


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float = 0.0) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(angle + offset + 2 * math.pi * i / n),
                cy + radius * math.sin(angle + offset + 2 * math.pi * i / n),
            )
            for i in range(n)
        ]

    if shape == "square":
        return ring(4, r * 1.15, math.pi / 4)
    if shape == "triangle":
        return ring(3, r * 1.2, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r)
    if shape == "star":
        outer, inner = (
            ring(5, r * 1.25, -math.pi / 2),
            ring(5, r * 0.42, -math.pi / 2 + math.pi / 5),
        )
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":
        a, b = r, r * 0.36
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
               (-a, b), (-a, -b), (-b, -b)]  # fmt: skip
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


def _background(scene: Scene, rng: random.Random, side: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    img = np.broadcast_to(base, (side, side, 3)).copy()
    if scene.texture == "gradient":
        ramp = np.linspace(-25, 25, side, dtype=np.float32)
        img += ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
    elif scene.texture == "noisy":
        nrng = np.random.default_rng(rng.randrange(2**32))
        img += nrng.normal(0, 12, (side, side, 1)).astype(np.float32)
    elif scene.texture == "striped":
        period = max(4, side // rng.randint(6, 12))
        stripes = ((np.arange(side) // period) % 2).astype(np.float32) * 18 - 9
        img += stripes[None, :, None] if rng.random() < 0.5 else stripes[:, None, None]
    return np.clip(img, 0, 255)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


def render(scene: Scene, seed: int, side: int = 128) -> Image.Image:
    """Draw the scene (then its style, if any) as an RGB image side x side."""
    return _render(scene, seed, side, None)


def render_with_boxes(scene: Scene, seed: int, side: int = 128) -> tuple[Image.Image, list[Box]]:
    """The same picture as render(), and each object's bounding box (for detection).

    A box is the object's drawn extent as a shape (a crescent's real extent for a moon),
    before any artwork style: a style changes how the object looks, not where it is.
    """
    boxes: list[Box] = []
    return _render(scene, seed, side, boxes), boxes


def _render(scene: Scene, seed: int, side: int, boxes: list[Box] | None) -> Image.Image:
    # One drawing routine for both entry points: render() must stay bit-identical (the
    # CLIP demo model was trained on it), so collecting boxes draws nothing onto the
    # picture and consumes no randomness.
    rng = random.Random(seed)
    img = Image.fromarray(_background(scene, rng, side).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    shrink = (1.0, 0.9, 0.8)[scene.count - 1]  # three large objects must still fit apart
    lo, hi = (v * shrink for v in SIZES[scene.size])
    mask = Image.new("L", img.size, 0)
    mdraw = ImageDraw.Draw(mask)
    colour = np.array(COLOURS[scene.colour]) + [rng.randint(-12, 12) for _ in range(3)]
    fill = tuple(int(v) for v in np.clip(colour, 0, 255))
    placed: list[tuple[float, float, float]] = []
    for _ in range(scene.count):
        r = rng.uniform(lo, hi) * side
        for _attempt in range(30):  # keep objects apart and inside the frame
            cx, cy = rng.uniform(r * 1.2, side - r * 1.2), rng.uniform(r * 1.2, side - r * 1.2)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + rr) ** 2 * 1.1 for x, y, rr in placed):
                break
        placed.append((cx, cy, r))
        angle = rng.uniform(-0.3, 0.3)
        if scene.shape == "moon":  # a crescent: a disc with an offset disc cut out
            obj = Image.new("L", img.size, 0)
            od = ImageDraw.Draw(obj)
            od.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
            ox, oy = cx + 0.5 * r * math.cos(angle * 5), cy + 0.5 * r * math.sin(angle * 5)
            od.ellipse((ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r), fill=0)
            img.paste(fill, mask=obj)
            mask.paste(255, mask=obj)
            if boxes is not None:
                boxes.append(_extent(obj))
            continue
        targets: list[tuple[ImageDraw.ImageDraw, Any]] = [(draw, fill), (mdraw, 255)]
        if boxes is not None:  # the object alone, so a neighbour never widens its box
            obj = Image.new("L", img.size, 0)
            targets.append((ImageDraw.Draw(obj), 255))
        for d, f in targets:
            if scene.shape == "circle":
                d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=f)
            else:
                d.polygon(_polygon(scene.shape, cx, cy, r, angle), fill=f)
        if boxes is not None:
            boxes.append(_extent(obj))
    if scene.style is not None:
        img = stylise(img, scene.style, rng, mask, fill)
    return img


def _extent(obj: Image.Image) -> Box:
    """The pixels an object mask covers, as a box (Pillow's right/bottom are exclusive)."""
    box = obj.getbbox()
    assert box is not None, "an object always covers some pixels"
    return box


def stylise(
    img: Image.Image, style: str, rng: random.Random, mask: Image.Image, ink: tuple[int, ...]
) -> Image.Image:
    side = img.size[0]
    arr = np.asarray(img, dtype=np.float32)
    nrng = np.random.default_rng(rng.randrange(2**32))
    if style == "stippled":
        paper = np.full_like(arr, 245.0)
        dots = nrng.random((side, side)) < 0.45
        paper[dots] = arr[dots]
        return Image.fromarray(paper.astype(np.uint8))
    if style == "striped":
        period = max(3, side // 20)
        mask = ((np.add.outer(np.arange(side), np.arange(side)) // period) % 2).astype(bool)
        out = arr.copy()
        out[mask] = 255 - (255 - out[mask]) * 0.25
        return Image.fromarray(out.astype(np.uint8))
    if style == "mosaic":
        tile = max(4, side // 16)
        small = img.resize((side // tile, side // tile), Image.Resampling.BOX)
        big = np.asarray(small.resize((side, side), Image.Resampling.NEAREST), dtype=np.float32)
        grout = (np.arange(side) % tile) == 0
        big[grout, :, :] = 40
        big[:, grout, :] = 40
        return Image.fromarray(big.astype(np.uint8))
    if style == "watercolour":
        soft = np.asarray(img.filter(ImageFilter.GaussianBlur(side / 40)), dtype=np.float32)
        washed = 255 - (255 - soft) * 0.7 + nrng.normal(0, 6, (side, side, 1))
        return Image.fromarray(np.clip(washed, 0, 255).astype(np.uint8))
    if style == "line art":
        # Outlines in the objects' own colour on white paper: the style is the line,
        # the colour and shape stay readable.
        width = max(3, side // 40) | 1
        outer = np.asarray(mask.filter(ImageFilter.MaxFilter(width)), dtype=bool)
        inner = np.asarray(mask.filter(ImageFilter.MinFilter(width)), dtype=bool)
        out = np.full((side, side, 3), 250, dtype=np.uint8)
        out[outer & ~inner] = ink
        return Image.fromarray(out)
    raise ValueError(style)


def sample(
    seed: int, side: int = 128, artwork_share: float = 0.25, allow_held_out: bool = False
) -> tuple[Image.Image, str, Scene]:
    """One captioned picture from a seed: (image, caption, scene)."""
    rng = random.Random(seed * 7919 + 17)
    style = rng.choice(STYLES) if rng.random() < artwork_share else None
    scene = random_scene(rng, style=style, allow_held_out=allow_held_out)
    return render(scene, seed, side), caption(scene, rng), scene
