"""Deterministic synthetic sounds, one family per synthworld shape, for the ImageBind demo.

Each shape "sounds" like something of its own, so that a model can bind a sound to the
pictures and the words of its shape:

  circle    a pure tone (sine), a little vibrato
  square    a square-wave buzz (odd harmonics), low and harsh
  triangle  rising chirps (sine sweeps upwards), repeated
  star      rhythmic clicks (short decaying broadband bursts) at a steady rate
  moon      a low band of noise (rumble), slowly swelling
  cross     two tones alternating (a "nee-naw" siren)

Within a family everything else varies: pitch, tempo, length (1-6 s), loudness, when the
sound starts (onset), fade in/out and a background of broadband noise at a random level.
Everything is a pure function of the random.Random passed in: the same seed gives the
same samples, bit for bit.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tools.synthworld import SHAPES

RATE = 16_000
SOUND_CAPTIONS = ("the sound of a {shape}", "a {shape} sound", "what a {shape} sounds like",
                  "the noise of a {shape}", "a {shape} making a sound", "{shapes} sounding",
                  "a recording of a {shape}")  # fmt: skip


def sound(shape: str, rng: random.Random, rate: int = RATE) -> np.ndarray:
    """A mono float32 waveform in [-1, 1] of the given shape's family."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    nrng = np.random.default_rng(rng.randrange(2**32))
    length = rng.uniform(1.0, 6.0)
    n = int(length * rate)
    onset = int(rng.uniform(0.0, min(1.0, length / 3)) * rate)
    body_n = n - onset
    t = np.arange(body_n, dtype=np.float64) / rate
    body = _FAMILIES[shape](t, rng, nrng, rate)
    body *= _envelope(body_n, rng, rate)
    peak = float(np.max(np.abs(body))) or 1.0
    amplitude = rng.uniform(0.15, 0.9)
    out = np.zeros(n, dtype=np.float64)
    out[onset:] = body / peak * amplitude
    # A background hiss under the whole recording, 12 to 40 dB below the sound.
    noise_level = amplitude * 10 ** (-rng.uniform(12.0, 40.0) / 20)
    out += nrng.normal(0.0, noise_level, n)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = RATE) -> None:
    import soundfile

    soundfile.write(str(path), samples, rate, subtype="PCM_16")


def _envelope(n: int, rng: random.Random, rate: int) -> np.ndarray:
    """Fade in and out (a few ms to a fraction of a second), so that no family starts
    with a click that only clicks should have."""
    env = np.ones(n)
    fade_in = min(n // 2, int(rng.uniform(0.005, 0.15) * rate))
    fade_out = min(n // 2, int(rng.uniform(0.02, 0.4) * rate))
    env[:fade_in] = np.linspace(0.0, 1.0, fade_in, endpoint=False)
    if fade_out:
        env[n - fade_out :] = np.linspace(1.0, 0.0, fade_out)
    return env


def _tone(t, rng, nrng, rate):
    f = rng.uniform(250.0, 1000.0)
    depth, speed = rng.uniform(0.0, 0.01), rng.uniform(3.0, 6.0)
    phase = 2 * np.pi * np.cumsum(f * (1 + depth * np.sin(2 * np.pi * speed * t))) / rate
    return np.sin(phase)


def _buzz(t, rng, nrng, rate):
    f = rng.uniform(70.0, 220.0)
    wave = np.sign(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)))
    return wave


def _chirps(t, rng, nrng, rate):
    period = rng.uniform(0.25, 0.9)
    f0 = rng.uniform(250.0, 700.0)
    f1 = f0 * rng.uniform(2.0, 4.0)
    gap = rng.uniform(0.0, 0.3) * period
    local = np.mod(t, period)
    frac = np.clip(local / (period - gap), 0.0, 1.0)
    freq = f0 + (f1 - f0) * frac
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return np.sin(phase) * (local < period - gap)


def _clicks(t, rng, nrng, rate):
    interval = 1.0 / rng.uniform(3.0, 12.0)
    decay = rng.uniform(0.002, 0.012)
    local = np.mod(t, interval)
    burst = np.exp(-local / decay)
    return nrng.standard_normal(t.size) * burst


def _rumble(t, rng, nrng, rate):
    lo = rng.uniform(40.0, 120.0)
    hi = lo + rng.uniform(80.0, 280.0)
    spectrum = np.fft.rfft(nrng.standard_normal(t.size))
    freqs = np.fft.rfftfreq(t.size, 1 / rate)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    band = np.fft.irfft(spectrum, t.size)
    swell = 1 + rng.uniform(0.0, 0.6) * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
    return band * swell


def _siren(t, rng, nrng, rate):
    f0 = rng.uniform(350.0, 900.0)
    f1 = f0 * rng.uniform(1.25, 1.6)
    half = rng.uniform(0.15, 0.6)
    freq = np.where(np.mod(t, 2 * half) < half, f0, f1)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return np.sin(phase)


_FAMILIES = {"circle": _tone, "square": _buzz, "triangle": _chirps, "star": _clicks,
             "moon": _rumble, "cross": _siren}  # fmt: skip
