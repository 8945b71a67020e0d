"""Streamed text pieces concatenate to the reference decode of all ids, never show half a character, and
each step decodes only a short window."""

from __future__ import annotations

import random
from pathlib import Path

import gguf
import pytest

from kilotok.tokenizer.detokenizer import IncrementalDetokenizer
from kilotok.tokenizer.gguf_vocab import tokenizer_from_gguf

pytestmark = pytest.mark.slow

TEXTS = [
    "Hello 🤗 world! 👨‍👩‍👧‍👦 family, 🇫🇷 flag, 👍🏽 thumbs.",
    "中文字符测试：你好，世界！日本語のテキスト、한국어 텍스트.",
    "naïve café — Ελληνικά, Привет, मिश्रित 🦀🧑🏿‍💻 text\n\twith code: `x = 1`",
    "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇",
    "plain ascii only, nothing split",
]


@pytest.fixture(scope="module")
def tokenizer(default_gguf_path: Path):
    return tokenizer_from_gguf(gguf.GGUFReader(default_gguf_path))


def stream(tokenizer, ids, chunk_sizes=None, skip_special_tokens=True) -> list[str]:
    """Deltas from feeding `ids` in chunks (one id at a time when no sizes are given), then the flush."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas, start = [], 0
    sizes = iter(chunk_sizes or [])
    while start < len(ids):
        size = next(sizes, 1)
        chunk = ids[start:start + size]
        deltas.append(detokenizer.add(chunk[0] if size == 1 else chunk))
        start += size
    return [*deltas, detokenizer.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_concatenate_to_reference_decode(tokenizer, hf_reference_tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == hf_reference_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert deltas[-1] == ""  # valid text leaves nothing to flush


def test_multibyte_characters_are_held_back_until_complete(tokenizer):
    ids = tokenizer.encode("🤗", add_special_tokens=False)
    assert len(ids) > 1, "the emoji should span several byte-level tokens for this test to mean anything"
    assert stream(tokenizer, ids) == [""] * (len(ids) - 1) + ["🤗", ""]


def test_chunks_of_several_ids(tokenizer, hf_reference_tokenizer):
    rng = random.Random(0)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        sizes = [rng.randint(1, 4) for _ in ids]
        expected = hf_reference_tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(stream(tokenizer, ids, sizes)) == expected


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_special_tokens_follow_the_skip_flag(tokenizer, hf_reference_tokenizer, skip_special_tokens):
    ids = tokenizer.encode("<|im_start|>assistant\n你好 🤗<|im_end|>", add_special_tokens=False)
    text = "".join(stream(tokenizer, ids, skip_special_tokens=skip_special_tokens))
    assert text == hf_reference_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_random_ids_including_broken_utf8_match_reference(tokenizer, hf_reference_tokenizer):
    """Sampled ids can form invalid UTF-8; whatever comes out, it must equal the full decode."""
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(1, 40))]
        deltas = stream(tokenizer, ids)
        assert "".join(deltas) == hf_reference_tokenizer.decode(ids, skip_special_tokens=True)


def test_reply_cut_in_mid_character_is_flushed(tokenizer, hf_reference_tokenizer):
    ids = tokenizer.encode("ok 🤗", add_special_tokens=False)[:-1]
    deltas = stream(tokenizer, ids)
    assert deltas[-1].endswith("\ufffd")
    assert "".join(deltas) == hf_reference_tokenizer.decode(ids, skip_special_tokens=True)


class CountingDecoder:
    """Records how many ids each decode call gets, to check the detokenizer's work per step."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.window_sizes: list[int] = []

    def decode(self, ids, skip_special_tokens=True):
        self.window_sizes.append(len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_each_step_decodes_a_short_window(tokenizer):
    ids = tokenizer.encode(" ".join(TEXTS * 4), add_special_tokens=False)
    assert len(ids) > 300
    counting = CountingDecoder(tokenizer)
    detokenizer = IncrementalDetokenizer(counting)
    for token_id in ids:
        detokenizer.add(token_id)
    assert max(counting.window_sizes) <= 8
