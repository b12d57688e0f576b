"""Texts waiting for the model are embedded in one forward pass, each request getting
exactly its own vectors."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from api.batching import TextBatcher


def fake_tower(calls: list[list[str]]) -> object:
    """A deterministic stand-in for a text tower: the vector spells the text's length
    and first letter, so a mixed-up answer is visible."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        time.sleep(0.02)  # a forward pass takes time; others queue meanwhile
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)

    return embed


def test_waiting_requests_share_forward_passes_and_get_their_own_vectors() -> None:
    calls: list[list[str]] = []
    gate = threading.RLock()
    batcher = TextBatcher(fake_tower(calls), gate, max_texts=8)  # type: ignore[arg-type]
    texts = [[f"{chr(97 + n)}{'x' * n}", f"{chr(65 + n)}"] for n in range(12)]
    got: dict[int, np.ndarray] = {}

    def ask(n: int) -> None:
        got[n] = batcher(texts[n])

    with gate:  # the model is busy (an image, say): every request queues
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(timeout=10)
    for n in range(12):
        want = np.array([[len(s), ord(s[0])] for s in texts[n]], dtype=np.float32)
        assert np.array_equal(got[n], want), n
    assert len(calls) <= 4  # 24 texts in batches of at most 8, not 12 passes
    assert all(len(c) <= 8 for c in calls)
    assert batcher.calls == len(calls)


def test_a_failing_forward_pass_fails_every_request_in_it() -> None:
    gate = threading.RLock()

    def broken(texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("out of memory")

    batcher = TextBatcher(broken, gate)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            batcher(["a dog"])
        except RuntimeError as exc:
            errors.append(exc)

    with gate:
        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 3 and all("out of memory" in str(e) for e in errors)
    with pytest.raises(RuntimeError):
        batcher(["alone"])  # and nothing is left queued that would hang a later call
