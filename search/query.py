"""Query language and paging shared by the CLI and the API.

A text query may carry negatives: ``beach -people -"red car"`` searches for "beach"
away from "people" and "red car". The query vector is

    q = normalise( mean(positives) - w * sum(negatives) )

where the positives are the unit text vector of the words that are not negated and the
unit image vector when an image is given (text and image weigh the same), each negative
is a unit text vector, and w is the ``negative_weight`` setting (0.5 by default: strong
enough to push the negated content down the list, not so strong that the query turns
into "anything but people").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import shlex
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TextQuery:
    positive: str  # the words not negated, in order ("" when there are none)
    negatives: list[str] = field(default_factory=list)


def parse(text: str) -> TextQuery:
    """Split a query into its positive words and its ``-negated`` words or phrases.
    Only a word that starts with "-" is negated, so "black-and-white" stays whole; only
    double quotes group, so apostrophes ("Monet's garden") are ordinary letters."""
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split = True
    lex.quotes = '"'
    lex.commenters = ""
    lex.escape = ""
    try:
        tokens = list(lex)
    except ValueError:  # an unbalanced quote: read the text as plain words
        tokens = text.replace('"', " ").split()
    pos: list[str] = []
    neg: list[str] = []
    for tok in tokens:
        if tok.startswith("-") and len(tok.strip("- ")) > 0:
            neg.append(tok[1:].strip())
        elif tok.strip("- "):
            pos.append(tok)
    return TextQuery(" ".join(pos), neg)


def compose(
    positives: list[np.ndarray], negatives: list[np.ndarray], negative_weight: float
) -> np.ndarray:
    """The query vector of the formula above, as float32 of unit length."""
    if not positives:
        raise ValueError("a query needs something to look for, not only -negatives")
    v = np.mean([_unit(p) for p in positives], axis=0)
    for n in negatives:
        v = v - negative_weight * _unit(n)
    return _unit(v).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


# How deep pages may go: each page searches down to its own depth, so a forged cursor
# must not ask for millions of results.
MAX_DEPTH = 100_000


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last result's score (None for a newest-first listing)
    and id. The next page holds what ranks strictly after it in the order (score
    descending, then id ascending; or id descending), so pages neither skip nor repeat
    even while items are added: a new item that ranks above the cursor belongs to a
    page already shown and is not slipped into a later one."""

    score: float | None
    item_id: int
    seen: int  # results shown so far: how deep the next page starts (a fetch hint)

    def encode(self) -> str:
        raw = json.dumps({"s": self.score, "i": self.item_id, "n": self.seen})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            d = json.loads(raw)
            score = d["s"]
            finite = isinstance(score, float | int) and math.isfinite(score)
            if score is not None and not finite:
                raise ValueError
            item_id, seen = d["i"], d["n"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (item_id, seen)):
                raise ValueError
            if seen < 0 or seen > MAX_DEPTH:
                raise ValueError
            return cls(None if score is None else float(score), item_id, seen)
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ValueError("cursor is not one this server gave out") from None

    def admits(self, item_id: int, score: float) -> bool:
        """Does (item_id, score) rank after this cursor?"""
        assert self.score is not None
        return score < self.score or (score == self.score and item_id > self.item_id)
