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
    if stylize_demo(base, like, env) != 0:
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


def stylize_demo(base: Path, picture: Path, env: dict[str, str]) -> int:
    """A style-transfer job (random VGG-19: nothing to download) from the demo library's
    strongest mosaic artwork, shown side by side with how far it moved."""
    import numpy as np
    from PIL import Image

    out = base / "stylized.png"
    args = ["stylize", str(picture), "--artist", "mosaic", "--side", "256", "--steps", "60",
            "--wait", "--out", str(out)]  # fmt: skip
    print(f"$ everlook {' '.join(args)}", flush=True)
    run = [sys.executable, "-m", "everlook"]
    done = subprocess.run([*run, *args, "--json"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout + done.stderr)
        return 1
    job = json.loads(done.stdout)
    shown = subprocess.run([*run, "show", str(job["style"]["item_id"]), "--json"], env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    style_path = Path(json.loads(shown.stdout)["paths"][0])
    content, style, result = (Image.open(p).convert("RGB") for p in (picture, style_path, out))

    def mean(img: Image.Image) -> np.ndarray:
        return np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(0)

    before = np.linalg.norm(mean(content) - mean(style))
    after = np.linalg.norm(mean(result) - mean(style))
    h = 256
    row = [im.resize((round(im.width * h / im.height), h)) for im in (content, style, result)]
    sheet = Image.new("RGB", (sum(im.width for im in row) + 16, h), "white")
    x = 0
    for im in row:
        sheet.paste(im, (x, 0))
        x += im.width + 8
    side_by_side = base / "stylized-side-by-side.png"
    sheet.save(side_by_side)
    prov = json.loads(Image.open(out).info["everlook:provenance"])
    print(f"job {job['id']} done in {job['seconds']:.1f}s ({job['total']} L-BFGS steps, "
          f"{job['model_id']}): style loss {prov['style_loss'][0]:.3g} -> "
          f"{prov['style_loss'][1]:.3g}; mean colour distance to the style picture "
          f"{before:.0f} -> {after:.0f} (of 441)")  # fmt: skip
    print(f"picture | style ({style_path.name}) | result: {side_by_side}\n")
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
