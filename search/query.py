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
import hashlib
import hmac
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

    def encode(self, key: bytes = b"") -> str:
        """The cursor as an opaque token, signed with key when one is given (a server
        signs its cursors, so a forged one is refused before it costs a search)."""
        raw = json.dumps({"s": self.score, "i": self.item_id, "n": self.seen}).encode()
        token = _b64(raw)
        return f"{token}.{_b64(_mac(key, raw))}" if key else token

    @classmethod
    def decode(cls, token: str, key: bytes = b"") -> Cursor:
        try:
            body, _, sig = token.partition(".")
            raw = _unb64(body)
            if key and not hmac.compare_digest(_unb64(sig), _mac(key, raw)):
                raise ValueError
            d = json.loads(raw)
            score = d["s"]
            finite = isinstance(score, float | int) and math.isfinite(score)
            if score is not None and not finite:
                raise ValueError
            item_id, seen = d["i"], d["n"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (item_id, seen)):
                raise ValueError
            if not 0 <= item_id < 2**63:  # a catalog id: what the database can compare
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, raw: bytes) -> bytes:
    return hmac.new(key, raw, hashlib.sha256).digest()[:16]
