"""`make demo`: try Everlook offline with its own small model, `everlook-demo`.

Generates a library of a few hundred pictures (coloured shapes, and artworks in five
styles) and a few dozen sounds (each shape has a sound of its own: tones, buzzes,
chirps, clicks, rumbles, sirens) under $EVERLOOK_HOME/demo/library, indexes it with
`everlook-demo` (CLIP) and `everlook-demo-imagebind` (ImageBind) into a catalog of its
own ($EVERLOOK_HOME/demo, so your real catalog is not touched), then runs text, image,
sound and --like queries and prints what they return.

Both demo models are toys: trained on this synthetic world only, they know colours,
shapes, counts, five drawing styles and six made-up sounds, nothing about real photos or
real sounds. For real searches use real weights (see the README).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import synthworld  # noqa: E402

FORMATS = ("jpg", "png", "webp")
SOUND_FORMATS = ("wav", "flac", "ogg")


def build_library(root: Path, per_pair: int = 5, per_style: int = 12, per_sound: int = 4) -> int:
    """Write the demo pictures and sounds (idempotent: existing files are kept). Returns
    the count."""
    n = 0
    pairs = [(c, s) for c in synthworld.COLOURS for s in synthworld.SHAPES]
    for i in range(per_pair * len(pairs)):
        colour, shape = pairs[i % len(pairs)]
        seed = 50_000_000 + i
        rng = random.Random(seed)
        scene = synthworld.random_scene(rng, shape=shape, colour=colour)
        n += _write(root / "pictures", scene, seed, rng, i)
    for k, style in enumerate(synthworld.STYLES):
        for i in range(per_style):
            seed = 60_000_000 + k * 1000 + i
            rng = random.Random(seed)
            scene = synthworld.random_scene(rng, style=style, allow_held_out=True)
            n += _write(root / "artworks", scene, seed, rng, i)
    for k, shape in enumerate(synthworld.SHAPES):
        for i in range(per_sound):
            n += _write_sound(root / "sounds", shape, 70_000_000 + k * 1000 + i, i)
    return n


def _write_sound(folder: Path, shape: str, seed: int, i: int) -> int:
    import soundfile

    from tools import synthsound

    path = folder / f"{shape}-sound-{i:02d}.{SOUND_FORMATS[i % len(SOUND_FORMATS)]}"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        samples = synthsound.sound(shape, random.Random(seed))
        soundfile.write(str(path), samples, synthsound.RATE)
    return 1


def _write(folder: Path, scene: synthworld.Scene, seed: int, rng: random.Random, i: int) -> int:
    style = f"{scene.style.replace(' ', '-')}-" if scene.style else ""
    name = f"{style}{scene.count}-{scene.colour}-{synthworld.plural(scene.shape, scene.count)}"
    path = folder / f"{name}-{i:03d}.{FORMATS[i % len(FORMATS)]}"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        synthworld.render(scene, seed, side=rng.choice((192, 256, 320))).save(path)
    return 1


def demo_settings() -> dict[str, str]:
    """EVERLOOK_* settings of the demo: its CLIP, its YOLO, and its five drawing styles
    standing in for artists (the demo model knows them, not real painters)."""
    colours = list(synthworld.COLOURS)
    artwork = [
        f"a {st} artwork of a {c} {sh}" if st != "line art" else f"line art of a {c} {sh}"
        for st in synthworld.STYLES for c in colours for sh in synthworld.SHAPES
    ]  # fmt: skip
    photo = [t for c in colours for sh in synthworld.SHAPES
             for t in (f"a photo of a {c} {sh}", f"a {c} {sh}")]  # fmt: skip
    return {
        "EVERLOOK_CLIP_MODEL": "everlook-demo", "EVERLOOK_CLIP_PRETRAINED": "v1",
        "EVERLOOK_SPACES": json.dumps(["clip", "imagebind"]),
        "EVERLOOK_IMAGEBIND_MODEL": "everlook-demo-imagebind",
        "EVERLOOK_STAGES": json.dumps(["detect/yolo", "style"]),
        "EVERLOOK_YOLO_MODEL": "everlook-demo-yolo.pt",
        "EVERLOOK_ARTISTS": json.dumps(list(synthworld.STYLES)),
        "EVERLOOK_STYLE_TEMPLATES": json.dumps(["a {} artwork"]),
        "EVERLOOK_ARTWORK_PROMPTS": json.dumps(artwork),
        "EVERLOOK_PHOTO_PROMPTS": json.dumps(photo),
        # Style transfer on a randomly initialised VGG-19 (nothing to download): random
        # filters still capture texture statistics; see the README for real weights.
        "EVERLOOK_STYLIZE_WEIGHTS": "random",
    }  # fmt: skip


def main() -> int:
    from everlook.settings import Settings

    base = Settings().home / "demo"
    env = {**os.environ, "EVERLOOK_HOME": str(base), **demo_settings()}
    lib = base / "library"
    t0 = time.time()
    n = build_library(lib)
    query = base / "queries" / "green-square.png"
    query.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    synthworld.render(synthworld.random_scene(rng, shape="square", colour="green"), 7).save(query)
    from tools import synthsound

    heard = base / "queries" / "a-star-sound.wav"  # a sound the library does not hold
    synthsound.write_wav(heard, synthsound.sound("star", random.Random(9_000_007)))
    print(f"demo library: {n} pictures and sounds in {lib} ({time.time() - t0:.0f}s)")
    print("models: everlook-demo (a toy CLIP) and everlook-demo-imagebind (a toy ImageBind),")
    print("trained on these synthetic pictures and sounds only\n")

    def everlook(*args: str) -> int:
        print(f"$ everlook {' '.join(args)}", flush=True)
        code = subprocess.call([sys.executable, "-m", "everlook", *args], env=env)
        print(flush=True)
        return code

    if everlook("index", str(lib)) != 0:
        return 1
    like = sorted((lib / "pictures").glob("3-yellow-stars-*"))[0]
    for args in (
        ("search", "a red circle", "-k", "5"),
        ("search", "there are three yellow stars", "-k", "5"),
        ("search", "a mosaic artwork", "-k", "5"),
        ("search", "--image", str(query), "-k", "5"),
        ("search", "--like", str(like), "-k", "5"),
        ("search", "stars", "--has", "star:3", "-k", "5"),
        ("search", "an artwork", "--style", "mosaic", "-k", "5"),
        ("search", "--audio", str(heard), "--kind", "image", "-k", "5"),  # star pictures
        ("search", "--audio", str(heard), "-k", "3"),  # pictures and sounds: star sounds
        ("search", "the sound of a circle", "--kind", "audio", "-k", "3"),
        ("search", "--image", str(query), "--kind", "audio", "-k", "3"),  # a square's sound
        ("show", str(like)),
        ("stats",),
    ):
        if everlook(*args) != 0:
            return 1
    print(
        f"Done in {time.time() - t0:.0f}s. Try your own queries with "
        f"EVERLOOK_HOME={base} EVERLOOK_CLIP_MODEL=everlook-demo EVERLOOK_CLIP_PRETRAINED=v1 "
        f'EVERLOOK_SPACES=\'["clip", "imagebind"]\' '
        f"EVERLOOK_IMAGEBIND_MODEL=everlook-demo-imagebind "
        f'.venv/bin/everlook search "..." (tools/demo.py lists the other demo settings)\n'
    )
    print("Search it in your browser:  make serve-demo   then open http://127.0.0.1:8000/")
    print(f"  (that runs: everlook serve {lib}  with the demo settings; Ctrl-C stops it)")
    return 0


def serve() -> int:
    """`make serve-demo`: the web page and API over the demo library (built if missing)."""
    from everlook.settings import Settings

    base = Settings().home / "demo"
    lib = base / "library"
    env = {**os.environ, "EVERLOOK_HOME": str(base), **demo_settings()}
    if not lib.is_dir():
        build_library(lib)
    args = [sys.executable, "-m", "everlook", "serve", str(lib), *sys.argv[2:]]
    os.execve(sys.executable, args, env)  # the server is this process: Ctrl-C reaches it


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:2] == ["serve"] else main())
