"""Building the tokenizer a GGUF file describes from its `tokenizer.*` metadata.

A GGUF has no tokenizer.json: it stores the vocabulary, merges, token kinds and special ids, and names the
pre-tokenizer (`tokenizer.ggml.pre`) instead of spelling out its regex. We map that name to the regexes
llama.cpp applies for it (each regex splits the pieces the previous one left, keeping matches and gaps as
separate pieces) and hand everything to a Rust `tokenizers` byte-level BPE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from kilotok.errors import ModelFormatError
from kilotok.tokenizer.tokenizer import Tokenizer

# GGUF token kinds (llama.cpp's llama_token_type).
_CONTROL = 3
_USER_DEFINED = 4

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama 3 and Qwen2 differ only in how many digits stay together. llama.cpp spells the contractions as
# '[sS]... because its regex engine lacks (?i:); the models' own tokenizer.json files use (?i:), kept here.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True)
class PreTokenizerSpec:
    """The regexes one `tokenizer.ggml.pre` name stands for, applied in order, and whether a piece that is
    already a whole vocabulary entry skips the merges (llama.cpp's `ignore_merges`, set for Llama 3)."""

    splits: tuple[str, ...]
    ignore_merges: bool = False


_GPT2 = PreTokenizerSpec((_GPT2_SPLIT,))
_DIGITS_THEN_GPT2 = PreTokenizerSpec((r"\p{N}", _GPT2_SPLIT))  # StarCoder-family vocabularies
_LLAMA3 = PreTokenizerSpec((_LLAMA3_SPLIT,), ignore_merges=True)
_QWEN2 = PreTokenizerSpec((_QWEN2_SPLIT,))
# llama.cpp's fallback for BPE files that name no pre-tokenizer.
_DEFAULT = PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]"))

_PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "default": _DEFAULT,
    "falcon": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_SPLIT, r"[0-9][0-9][0-9]")),
    **dict.fromkeys(
        ("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"), _GPT2
    ),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), _DIGITS_THEN_GPT2
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), _LLAMA3
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizerSpec((_LLAMA3_SPLIT,))),
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan"), _QWEN2
    ),
}


def pre_tokenizer_spec(name: str) -> PreTokenizerSpec:
    """The splitting rules for a `tokenizer.ggml.pre` name; ModelFormatError if kilotok does not know it."""
    spec = _PRE_TOKENIZERS.get(name or "default")
    if spec is None:
        raise ModelFormatError(
            f"unsupported GGUF pre-tokenizer {name!r} (tokenizer.ggml.pre); kilotok supports "
            f"{', '.join(sorted(_PRE_TOKENIZERS))}. Load the model's Hugging Face folder instead"
        )
    return spec


def byte_level_pre_tokenizer(spec: PreTokenizerSpec) -> pre_tokenizers.PreTokenizer:
    """Regex splits, then the byte-to-character mapping byte-level BPE vocabularies are spelled in."""
    splits = [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in spec.splits]
    to_byte_alphabet = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, to_byte_alphabet])


def _metadata(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _required(reader: gguf.GGUFReader, key: str) -> Any:
    value = _metadata(reader, key)
    if value is None:
        raise ModelFormatError(f"the GGUF file has no {key}; it cannot be tokenized. Re-convert the model")
    return value


def _merge_pairs(merges: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for merge in merges:
        # Search from 1: a merge's left side may itself be a single space in non-byte-level spellings.
        split_at = merge.find(" ", 1)
        if split_at < 0:
            raise ModelFormatError(f"malformed GGUF merge {merge!r}: expected 'left right'")
        pairs.append((merge[:split_at], merge[split_at + 1:]))
    return pairs


def _byte_level_backend(tokens: list[str], merges: list[str], spec: PreTokenizerSpec) -> BackendTokenizer:
    # Keep the first id when a file repeats a string (some pad their vocabulary with duplicates).
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    bpe = models.BPE(vocab=vocab, merges=_merge_pairs(merges), ignore_merges=spec.ignore_merges)
    backend = BackendTokenizer(bpe)
    backend.pre_tokenizer = byte_level_pre_tokenizer(spec)
    backend.decoder = decoders.ByteLevel()
    return backend


def _add_marked_tokens(backend: BackendTokenizer, tokens: list[str], token_types: list[int]) -> None:
    """Control tokens (`<|im_start|>`) become special and user-defined ones (`<think>`) plain added tokens,
    so both are matched whole in text instead of being cut into byte pieces, as llama.cpp does."""
    control = [tokens[i] for i, kind in enumerate(token_types) if kind == _CONTROL]
    user_defined = [tokens[i] for i, kind in enumerate(token_types) if kind == _USER_DEFINED]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])


def _token_id(reader: gguf.GGUFReader, key: str, vocab_size: int) -> int | None:
    token_id = _metadata(reader, f"tokenizer.ggml.{key}")
    if token_id is None:
        return None
    if not 0 <= token_id < vocab_size:
        raise ModelFormatError(
            f"tokenizer.ggml.{key} = {token_id} is outside the {vocab_size}-token vocabulary; re-convert"
        )
    return int(token_id)


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> Tokenizer:
    """The tokenizer stored in a GGUF file's metadata (byte-level BPE only, `tokenizer.ggml.model = gpt2`)."""
    model = _required(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelFormatError(
            f"unsupported GGUF tokenizer model {model!r} (tokenizer.ggml.model); kilotok reads only "
            "byte-level BPE ('gpt2'). Load the model's Hugging Face folder instead"
        )
    spec = pre_tokenizer_spec(_metadata(reader, "tokenizer.ggml.pre", "default"))
    tokens = _required(reader, "tokenizer.ggml.tokens")
    token_types = _metadata(reader, "tokenizer.ggml.token_type", [])
    if token_types and len(token_types) != len(tokens):
        raise ModelFormatError(
            f"tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens; re-convert"
        )
    backend = _byte_level_backend(tokens, _required(reader, "tokenizer.ggml.merges"), spec)
    _add_marked_tokens(backend, tokens, token_types)

    ids = {key: _token_id(reader, key, len(tokens)) for key in
           ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id", "eot_token_id",
            "eom_token_id")}
    add_bos = bool(_metadata(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(_metadata(reader, "tokenizer.ggml.add_eos_token", False))
    backend.post_processor = _bos_eos_post_processor(
        _named(tokens, ids["bos_token_id"]) if add_bos else None,
        _named(tokens, ids["eos_token_id"]) if add_eos else None,
    )
    return Tokenizer(
        backend,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["padding_token_id"],
        unk_token_id=ids["unknown_token_id"],
        extra_eos_token_ids=[i for i in (ids["eot_token_id"], ids["eom_token_id"]) if i is not None],
        chat_template=_metadata(reader, "tokenizer.chat_template"),
        chat_template_origin=f"{reader.data.filename} (tokenizer.chat_template)",
        name=_metadata(reader, "general.name", "this model"),
    )


def _bos_eos_post_processor(
    bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> processors.TemplateProcessing:
    """Wrap each encoded text in the given BOS/EOS `(text, id)`; None leaves that end bare."""
    single = " ".join([*([f"{bos[0]}:0"] if bos else []), "$A:0", *([f"{eos[0]}:0"] if eos else [])])
    pair = " ".join([single, *([f"{bos[0]}:1"] if bos else []), "$B:1", *([f"{eos[0]}:1"] if eos else [])])
    special_tokens = [token for token in (bos, eos) if token]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)


def _named(tokens: list[str], token_id: int | None) -> tuple[str, int] | None:
    if token_id is None:
        raise ModelFormatError(
            "the GGUF asks to add BOS/EOS (tokenizer.ggml.add_*_token) but names no such token id"
        )
    return tokens[token_id], token_id
