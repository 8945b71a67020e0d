"""The streaming detokenizer on generated token sequences, with the default model's byte-level BPE: the
streamed pieces concatenate to the full decode, and no piece is ever taken back. Three kinds of sequence:
encoded text mixing scripts and emoji, bytes fed one byte-token at a time (every multibyte character split
across tokens, invalid UTF-8 included), and any ids at all (special tokens included)."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from kilotok.tokenizer.detokenizer import IncrementalDetokenizer
from kilotok.tokenizer.gguf_vocab import tokenizer_from_gguf
from kilotok.tokenizer.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
MULTIBYTE = "éñß€中文字한국어Ελληνικάмир🤗👍🏽🇫🇷👨‍👩‍👧🦀"
# The default model's vocabulary has no token for a few bytes (some control characters, the lead bytes of
# planes 4 to 11): text using them does not survive encoding, whatever the detokenizer does.
UNENCODABLE = "\x04\x06\x13\x14\x16\x1d"
characters = st.characters(codec="utf-8", max_codepoint=0x3FFFF, exclude_characters=UNENCODABLE)
ascii_characters = st.characters(codec="ascii", exclude_characters=UNENCODABLE)
texts = st.text(st.one_of(ascii_characters, st.sampled_from(MULTIBYTE), characters), max_size=40)
chunk_sizes = st.lists(st.integers(1, 4), max_size=60)


@pytest.fixture(scope="module")
def tokenizer(default_gguf_path: Path) -> Tokenizer:
    return tokenizer_from_gguf(gguf.GGUFReader(default_gguf_path))


@pytest.fixture(scope="module")
def byte_ids(tokenizer: Tokenizer) -> dict[int, int]:
    """Byte value -> id of the token that is that one byte, for the bytes the vocabulary has alone."""
    chars = byte_level_chars()
    assert set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    ids = {byte: tokenizer.token_to_id(char) for byte, char in chars.items()}
    return {byte: token_id for byte, token_id in ids.items() if token_id is not None}


def byte_level_chars() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the others for the
    characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + i) for i, byte in enumerate(others)}}


def stream(tokenizer: Tokenizer, ids: list[int], sizes: list[int], skip_special_tokens: bool = True) -> list[str]:
    """Feed `ids` in chunks of `sizes` (then one at a time), checking after each that the text so far is a
    prefix of the decode of the ids so far: streamed text is final. Returns the pieces and the flush."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    pieces, start, sizes = [], 0, iter(sizes)
    while start < len(ids):
        end = start + next(sizes, 1)
        pieces.append(detokenizer.add(ids[start:end]))
        assert tokenizer.decode(ids[:end], skip_special_tokens=skip_special_tokens).startswith("".join(pieces))
        start = end
    return [*pieces, detokenizer.flush()]


@SETTINGS
@given(text=texts, sizes=chunk_sizes)
def test_encoded_text_streams_back_whole_characters(tokenizer, text, sizes):
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(tokenizer, ids, sizes, skip_special_tokens=False)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=False) == text
    if REPLACEMENT not in text:
        assert not any(REPLACEMENT in piece for piece in pieces) and pieces[-1] == ""


@SETTINGS
@given(data=st.one_of(texts.map(str.encode), st.binary(max_size=40)), sizes=chunk_sizes)
def test_bytes_split_across_tokens_match_the_full_decode(tokenizer, byte_ids, data, sizes):
    ids = [byte_ids[byte] for byte in data if byte in byte_ids]
    assert "".join(stream(tokenizer, ids, sizes)) == tokenizer.decode(ids)


@SETTINGS
@given(ids=st.lists(st.integers(0, 49151), max_size=40), sizes=chunk_sizes, skip_special_tokens=st.booleans())
def test_any_ids_match_the_full_decode(tokenizer, ids, sizes, skip_special_tokens):
    pieces = stream(tokenizer, ids, sizes, skip_special_tokens)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
