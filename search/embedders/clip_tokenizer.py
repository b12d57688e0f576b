"""open_clip's CLIP tokenizer (byte-level BPE) without torch or open_clip.

A cold text query must not pay for importing torch and open_clip (~3.9 s, ~850 MB here)
just to turn "a dog on a beach" into 77 integers. This module gives the same tokens as
``open_clip.tokenize`` / open_clip's ``SimpleTokenizer`` (a test compares them token for
token): ftfy's ``fix_text``, HTML unescaping (twice, as open_clip does), whitespace
collapsed, lower case, the same regex pre-split, byte-level BPE over open_clip's own
merges file, start/end tokens, zero padding, and truncation that keeps the end token.

The merges file is read from the installed open_clip package, found without importing it.
Only models whose config selects open_clip's default tokenizer can use this
(:func:`uses_default_tokenizer`); the others keep open_clip's own.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import html
import importlib.util
import itertools
import marshal
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77
START, END = "<start_of_text>", "<end_of_text>"
# The merges open_clip uses: lines 1..48894 of the file (line 0 is a version header);
# 256 byte units + 256 word-final units + 48894 merges + 2 specials = 49408 ids.
N_MERGES = 49152 - 256 - 2
# open_clip's pre-split: its special tokens, English contractions, runs of letters,
# single digits, runs of anything else that is not a space.
SPLIT = START + "|" + END + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Text ftfy and HTML unescaping leave as it is: printable ASCII and whitespace, no "&"
# (entities) and no control characters (terminal escapes): most queries (tested).
PLAIN = re.compile(r"[\t\n\r -%'-~]*")


def vocab_path() -> Path:
    """open_clip's merges file, located through the import system without importing
    open_clip (which would import torch)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{VOCAB_FILE} not found: is open_clip_torch installed?")


def uses_default_tokenizer(model_name: str, config: dict[str, Any]) -> bool:
    """Whether open_clip.get_tokenizer(model_name) is a plain SimpleTokenizer, which this
    module reproduces: no Hugging Face tokenizer, not a SigLIP name, no tokenizer options."""
    if not config or ":" in model_name or "siglip" in model_name.lower():
        return False
    text = config.get("text_cfg", {})
    if "hf_tokenizer_name" in text or "hf_model_name" in text:
        return False
    defaults = {("clean", "lower"), ("reduction_mask", "")}
    return all((k, v) in defaults for k, v in text.get("tokenizer_kwargs", {}).items())


def _byte_units() -> tuple[list[str], dict[int, str]]:
    """Every byte as one printable character (BPE works on text, and whitespace or control
    characters would break its merges). Printable Latin-1 bytes stand for themselves; the
    other 68 borrow the characters from U+0100 on. Returns the units in open_clip's vocab
    order (printables first) and the byte -> unit map."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    kept = set(keep)
    others = [b for b in range(256) if b not in kept]
    unit = {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [unit[b] for b in [*keep, *others]], unit


@functools.cache
def _tables(path: Path, cache: Path | None) -> tuple[dict[str, int], dict[str, int]]:
    """(piece -> id, "left right" merge -> rank). Building them from the merges file
    takes ~0.1 s of a cold query's ~0.6 s; a marshal copy under ``cache`` (for this
    merges file and this Python) loads in ~0.04 s."""
    st = path.stat()
    name = f"clip-bpe-{sys.implementation.cache_tag}-{st.st_size}-{st.st_mtime_ns}.marshal"
    if cache is not None:
        with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
            ids, rank = marshal.loads((cache / name).read_bytes())
            if ids.get(END) == N_MERGES + 513 and len(rank) == N_MERGES:
                return ids, rank
    order, _ = _byte_units()
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]  # each "left right": the key of its pair as it is
    vocab = [*order, *(u + "</w>" for u in order), *(m.replace(" ", "") for m in merges)]
    ids = {piece: i for i, piece in enumerate([*vocab, START, END])}
    rank = {m: i for i, m in enumerate(merges)}
    if cache is not None:
        from search.embedders.clip_cache import write_atomic

        with contextlib.suppress(OSError):
            write_atomic(cache / name, marshal.dumps((ids, rank)))
    return ids, rank


class ClipTokenizer:
    """Text -> int64 token ids [n, context_length], as open_clip's SimpleTokenizer."""

    def __init__(
        self,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        path: Path | None = None,
        cache: Path | None = None,
    ) -> None:
        import regex

        self.context_length = context_length
        _, self._unit = _byte_units()
        self._ids, self._rank = _tables(path or vocab_path(), cache)
        self.start_id, self.end_id = self._ids[START], self._ids[END]
        self._split = regex.compile(SPLIT, regex.IGNORECASE)
        self._words: dict[str, list[int]] = {}

    @staticmethod
    def clean(text: str) -> str:
        if PLAIN.fullmatch(text) is None:
            import ftfy  # ~0.09 s to import: only for text it could change

            text = html.unescape(html.unescape(ftfy.fix_text(text)))
        return " ".join(text.strip().split()).lower()

    def _word(self, word: str) -> list[int]:
        """Ids of one pre-split piece: its UTF-8 bytes as units, the last one marked as
        the end of a word, then merged pair by pair, the lowest-ranked pair first."""
        if word in (START, END):
            return [self._ids[word]]
        got = self._words.get(word)
        if got is not None:
            return got
        units = [self._unit[b] for b in word.encode("utf-8")]
        parts = [*units[:-1], units[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [
                (self._rank.get(f"{a} {b}", N_MERGES), i)
                for i, (a, b) in enumerate(itertools.pairwise(parts))
            ]
            best, at = min(ranked)
            if best == N_MERGES:
                break
            pair = (parts[at], parts[at + 1])  # every occurrence merges, left to right
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self._ids[p] for p in parts]
        if len(self._words) > 50_000:  # a server runs for months; words are unbounded
            self._words.clear()
        self._words[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of text, without start/end tokens or padding."""
        out: list[int] = []
        for word in self._split.findall(self.clean(text)):
            out.extend(self._word(word))
        return out

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        n = self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > n:  # too long: cut, and the last kept position ends the text
                ids = [*ids[: n - 1], self.end_id]
            out[row, : len(ids)] = ids
        return out


@functools.cache
def tokenizer(
    context_length: int = DEFAULT_CONTEXT_LENGTH, cache: Path | None = None
) -> ClipTokenizer:
    """One tokenizer per process, context length and cache folder (see _tables)."""
    return ClipTokenizer(context_length, cache=cache)


def trim_after_end(tokens: np.ndarray) -> np.ndarray:
    """A padded batch cut after its last end-of-text token (the highest id of each row,
    where CLIP pools). Under CLIP's causal mask no position sees the ones after it, so the
    cut leaves every pooled vector the same (see clip.py's encode_text_trimmed) at a
    fraction of the cost: ~10 of 77 positions for "a photo of a {}"."""
    if tokens.size == 0:
        return tokens
    n = int(tokens.argmax(axis=1).max()) + 1
    return np.ascontiguousarray(tokens[:, :n])
