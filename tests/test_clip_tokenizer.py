"""The torch-free tokenizer gives open_clip's tokens, token for token."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.embedders.clip_tokenizer import (
    ClipTokenizer,
    tokenizer,
    trim_after_end,
    uses_default_tokenizer,
)
from tests.helpers import python_alone

TEXTS = [
    "a dog",
    "A Dog On A Beach!!",
    "a photo of a very small red bicycle leaning on a brick wall",
    "",
    "     ",
    "tabs\tand\nnewlines\r\n  and   runs   of spaces",
    "it's they're we've I'm you'll he'd DON'T",
    "3.14159, 1,000,000 and 2024-11-27 at 10:30pm",
    "#hashtag @someone https://example.com/a?b=c&d=e",
    "???!!!...;;;---___",
    "😀 emoji 🐶🐕‍🦺 👩🏽‍🚀 flags 🇫🇷",
    "日本語のテキストと東京タワー",
    "한국어 문장 그리고 中文句子",
    "Ünïcödé áccénts: crème brûlée, naïve, Ångström, Øresund",
    "Ωμέγα русский текст مرحبا بالعالم שלום",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;x&#39; &amp;amp;",
    "âœ” mojibake: cafÃ© and donâ€™t",  # ftfy turns these back into ✔, café, don't
    "ﬁ ﬂ ligatures and full-width ＡＢＣ１２３",
    "<start_of_text> a literal <end_of_text> in the text",
    "a\u00a0non-breaking\u2009thin\u200bzero-width space",
    "word " * 100,  # truncated: 77 tokens, the last one the end token
    "x" * 400,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def reference() -> object:
    import open_clip

    return open_clip.tokenize


@pytest.mark.parametrize("text", TEXTS)
def test_tokens_equal_open_clips_for_every_kind_of_text(text: str, reference) -> None:
    want = reference([text]).numpy()
    got = tokenizer(77)([text])
    assert got.dtype == np.int64 and got.shape == (1, 77)
    assert got.tolist() == want.tolist()


def test_a_batch_equals_open_clips_batch_and_long_texts_end_with_the_end_token(reference):
    got = tokenizer(77)(TEXTS)
    assert np.array_equal(got, reference(TEXTS).numpy())
    long = got[TEXTS.index("word " * 100)]
    assert long[0] == 49406 and long[-1] == 49407 and (long != 0).all()


def test_a_shorter_context_equals_open_clips_tokenizer_of_that_length() -> None:
    """The demo model's context is 32 tokens; open_clip's get_tokenizer gives a
    SimpleTokenizer of that length."""
    import open_clip

    ref = open_clip.SimpleTokenizer(context_length=32)
    got = ClipTokenizer(32)(TEXTS)
    assert got.shape == (len(TEXTS), 32)
    assert np.array_equal(got, ref(TEXTS).numpy())


def test_a_single_string_is_a_batch_of_one() -> None:
    assert tokenizer(77)("a dog").shape == (1, 77)


def test_trimming_cuts_after_the_last_end_token_of_the_batch() -> None:
    tokens = tokenizer(77)(["a dog", "a photo of a cat on a mat"])
    trimmed = trim_after_end(tokens)
    ends = tokens.argmax(axis=1)
    assert trimmed.shape == (2, int(ends.max()) + 1)
    assert np.array_equal(trimmed, tokens[:, : trimmed.shape[1]])
    assert (trimmed.argmax(axis=1) == ends).all(), "each row still pools at its end token"
    assert trim_after_end(np.zeros((0, 77), np.int64)).shape == (0, 77)


def test_only_models_with_open_clips_default_tokenizer_qualify() -> None:
    plain = {"text_cfg": {"context_length": 77, "vocab_size": 49408}}
    assert uses_default_tokenizer("ViT-B-32", plain)
    lower = {"text_cfg": {"tokenizer_kwargs": {"clean": "lower"}}}
    assert uses_default_tokenizer("ViT-B-32", lower)
    assert not uses_default_tokenizer("ViT-B-32", {})  # no config found: cannot tell
    assert not uses_default_tokenizer("x", {"text_cfg": {"hf_tokenizer_name": "bert"}})
    assert not uses_default_tokenizer("ViT-B-16-SigLIP", plain)
    assert not uses_default_tokenizer("hf-hub:org/model", plain)
    canon = {"text_cfg": {"tokenizer_kwargs": {"clean": "canonicalize"}}}
    assert not uses_default_tokenizer("ViT-B-32", canon)


def test_the_tokenizer_imports_neither_torch_nor_open_clip(tmp_path) -> None:
    code = (
        "import json, sys\n"
        "from search.embedders.clip_tokenizer import tokenizer\n"
        "ids = tokenizer(77)(['a dog on a beach'])[0].tolist()\n"
        "print(json.dumps({'ids': ids, 'heavy': [m for m in ('torch', 'open_clip')"
        " if m in sys.modules]}))\n"
    )
    res = python_alone(code, tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["heavy"] == []
    import open_clip

    assert out["ids"] == open_clip.tokenize(["a dog on a beach"])[0].tolist()


@pytest.mark.slow
def test_every_builtin_model_that_qualifies_gets_a_plain_simple_tokenizer_from_open_clip():
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from search.embedders.clip_weights import read_model_config

    qualified = 0
    for name in open_clip.list_models():
        cfg = read_model_config(name, None)
        if not uses_default_tokenizer(name, cfg):
            continue
        qualified += 1
        tok = open_clip.get_tokenizer(name)
        assert type(tok) is SimpleTokenizer, name
        assert tok.reduction_fn is None and tok.clean_fn.__name__ == "_clean_lower", name
        want = int(cfg.get("text_cfg", {}).get("context_length", 77))
        assert tok.context_length == want, name
    assert qualified >= 20  # ViT-B-32, ViT-L-14, RN50... (not the SigLIP or HF-text ones)


def test_text_that_skips_ftfy_is_text_ftfy_and_unescaping_would_leave_alone() -> None:
    """Plain ASCII queries skip ftfy's import (~0.09 s of a cold query): for every such
    text, the cleaned text is open_clip's (ftfy may turn \\r into \\n; both are spaces)."""
    import random
    import string

    from open_clip.tokenizer import _clean_lower

    from search.embedders.clip_tokenizer import PLAIN

    rng = random.Random(0)
    alphabet = string.printable  # letters, digits, punctuation, whitespace
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    texts += ["a dog", "don't", "<b>bold</b>", "50% off!", "C:\\path\\x", "a\r\nb"]
    plain = [t for t in texts if PLAIN.fullmatch(t)]
    assert len(plain) > 500
    for text in texts:
        assert ClipTokenizer.clean(text) == _clean_lower(text), repr(text)
    for text in ["&amp;", "a &lt; b", "\x1b[31mred", "caf\u00e9", "\x00x", "x\x0b"]:
        assert PLAIN.fullmatch(text) is None, repr(text)


def test_the_tables_are_kept_in_the_cache_and_a_damaged_copy_is_rebuilt(tmp_path, monkeypatch):
    import gzip

    from search.embedders.clip_tokenizer import _tables, vocab_path

    build = _tables.__wrapped__  # type: ignore[attr-defined]
    built = build(vocab_path(), tmp_path)
    (kept,) = tmp_path.glob("clip-bpe-*.marshal")
    with monkeypatch.context() as mp:
        mp.setattr(gzip, "decompress", lambda data: pytest.fail("rebuilt from the merges file"))
        assert build(vocab_path(), tmp_path) == built
    kept.write_bytes(kept.read_bytes()[:1000])
    assert build(vocab_path(), tmp_path) == built
    assert build(vocab_path(), None) == built
