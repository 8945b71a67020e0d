"""Our tokenizers give the reference tokenizer's ids (transformers on the same GGUF) on varied text, and
GGUF metadata and Hugging Face folders load with the right special ids, flags and clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gguf
import pytest
import tokenizers
from tokenizers import Regex, pre_tokenizers

from kilotok.errors import ModelFormatError
from kilotok.tokenizer.gguf_vocab import byte_level_pre_tokenizer, pre_tokenizer_spec, tokenizer_from_gguf
from kilotok.tokenizer.tokenizer import tokenizer_from_hf_folder
from tests.loader.tiny_gguf import write_gguf

pytestmark = pytest.mark.slow

FRAGMENTS = [
    # English, contractions in both cases
    "The quick brown fox jumps over the lazy dog.", "Hello, world!", "It's", "I'm here", "they'll go",
    "we've been", "she'd say", "you're right", "DON'T SHOUT", "I'M DONE", "Y'ALL'RE", "rock 'n' roll",
    # Latin with accents, other scripts
    "naïve café résumé", "Ångström", "Straße", "ÀÉÎÕÜ ñ ç", "Tiếng Việt có dấu", "Ελληνικά γράμματα",
    "Привет, мир!", "עברית", "مرحبا بالعالم", "हिन्दी भाषा", "ภาษาไทย", "한국어 텍스트", "日本語のテキスト",
    "中文字符测试，标点。", "漢字かなカナ", "e\u0301 combining", "ﬁ ligature", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    # emoji, with joiners, flags, skin tones and variation selectors
    "🤗", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "😀😃😄", "👍🏽", "❤️", "🦀 Rust", "🧑🏿‍💻",
    # code
    "def f(x):\n    return x ** 2\n", "const add = (a, b) => a + b;",
    'int main(void) { printf("%d\\n", 42); }', "fn main() { let v: Vec<u8> = vec![1, 2, 3]; }",
    "SELECT * FROM users WHERE id = 7;", '<div class="x">&amp;</div>', "ls -la | grep '.py' && echo $HOME",
    '{"key": [1, 2.5, null, true]}', r"^\d{3}-\d{4}$", r"\frac{a}{b} + \sqrt{x^2}",
    "for (let i = 0; i < n; i++) {\n\tsum += a[i];\n}", "#include <stdio.h>", "x = [i*i for i in range(10)]",
    # whitespace runs
    "   ", "\t\t", "\n\n\n", " \n ", "\r\n", "a  b   c", "  leading", "trailing   ", "\u00a0nbsp",
    "\u3000ideographic", "tab\tseparated\tvalues", "\n    indented\n        more",
    # digits
    "0", "12", "123", "1234567890", "3.14159", "1,000,000", "2024-06-01", "+1 (555) 123-4567",
    "٣٤٥ Arabic-Indic", "１２３ fullwidth", "½ ⅓ ²³", "v1.2.3-rc4", "0x1F600",
    # special tokens inline, and near-misses that must stay plain text
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nhello<|im_end|>", "<repo_name>",
    "<file_sep>", "<|im_start", "im_end|>", "<|im_start|><|im_end|>",
    # punctuation and the rest
    "!!!???...", "—–-", "“quotes” ‘single’", "@user #tag", "https://example.com/path?q=1&r=2",
    "email@example.org", "a\u200bb", "\x07bell", "~`^|\\", "...", "C'est l'été", "l'homme d'affaires",
]
SEPARATORS = ["", " ", "\n", "\t", "  ", "\n\n", " - "]


def varied_texts(mixes: int = 300, seed: int = 1234) -> list[str]:
    """Each fragment alone, then random mixes of 2-4 fragments joined by assorted whitespace."""
    rng = random.Random(seed)
    mixed = []
    for _ in range(mixes):
        parts = rng.sample(FRAGMENTS, rng.randint(2, 4))
        mixed.append("".join(part + rng.choice(SEPARATORS) for part in parts))
    return ["", " ", "a", *FRAGMENTS, *mixed]


TEXTS = varied_texts()


@pytest.fixture(scope="module")
def gguf_reader(default_gguf_path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(default_gguf_path)


@pytest.fixture(scope="module")
def tokenizer(gguf_reader):
    return tokenizer_from_gguf(gguf_reader)


@pytest.fixture(scope="module")
def smollm2_reference(hf_reference_tokenizer) -> tokenizers.Tokenizer:
    """The reference vocabulary with SmolLM2's own pre-tokenizer, from its tokenizer.json: every \\p{N}
    character split off alone, then GPT-2's regex. llama.cpp's `smollm` does the same. transformers' GGUF
    loader skips the digit step, so a whitespace run or a space before a digit splits differently there."""
    backend = tokenizers.Tokenizer.from_str(hf_reference_tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return backend


def mismatches(ours, reference_ids, texts, add_special_tokens=True) -> list[str]:
    return [text for text in texts
            if ours.encode(text, add_special_tokens=add_special_tokens)
            != reference_ids(text, add_special_tokens)]


def hf_encoder(reference):
    return lambda text, special: reference.encode(text, add_special_tokens=special)


def pieces(pre_tokenizer, text: str) -> list[str]:
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_ids_match_reference_on_varied_texts(tokenizer, hf_reference_tokenizer, smollm2_reference,
                                             add_special_tokens):
    assert len(TEXTS) > 350
    bad = mismatches(tokenizer, lambda text, special: smollm2_reference.encode(
        text, add_special_tokens=special).ids, TEXTS, add_special_tokens)
    assert not bad, f"{len(bad)} texts tokenize differently, e.g. {bad[:5]!r}"


def test_ids_match_transformers_gguf_tokenizer_where_it_splits_alike(tokenizer, hf_reference_tokenizer,
                                                                    smollm2_reference):
    hf_split = hf_reference_tokenizer.backend_tokenizer.pre_tokenizer
    alike = [text for text in TEXTS
             if pieces(hf_split, text) == pieces(smollm2_reference.pre_tokenizer, text)]
    assert len(alike) > 200
    bad = mismatches(tokenizer, hf_encoder(hf_reference_tokenizer), alike)
    assert not bad, f"{len(bad)} texts tokenize unlike transformers' GGUF tokenizer, e.g. {bad[:5]!r}"


@pytest.mark.parametrize(("text", "smollm2_pieces"), [(" ½", ["Ġ", "Â½"]), ("a\n\n3", ["a", "ĊĊ", "3"])])
def test_known_gap_with_transformers_gguf_tokenizer(tokenizer, hf_reference_tokenizer, text, smollm2_pieces):
    """Where transformers' GGUF loader splits unlike SmolLM2 and llama.cpp, we follow the latter."""
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode(text)] == smollm2_pieces
    assert tokenizer.encode(text) != hf_reference_tokenizer.encode(text)


def test_inline_special_tokens_become_their_ids(tokenizer):
    assert tokenizer.encode("<|im_start|>user<|im_end|>") == [1, tokenizer.token_to_id("user"), 2]


def test_decode_round_trips(tokenizer, hf_reference_tokenizer):
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == hf_reference_tokenizer.decode(
                ids, skip_special_tokens=skip
            )


def test_special_ids_and_vocab_match_reference(tokenizer, hf_reference_tokenizer):
    ref = hf_reference_tokenizer
    assert tokenizer.vocab_size == len(ref) == 49152
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id) == (ref.bos_token_id, ref.pad_token_id)
    assert tokenizer.eos_token_ids == (ref.eos_token_id,)
    assert tokenizer.add_bos_token is False
    assert tokenizer.token_to_id("<|im_end|>") == ref.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.token_to_id("no such token, surely") is None


TINY_VOCAB = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
              "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"],
              "tokenizer.ggml.token_type": [1, 1, 1]}


@pytest.fixture(scope="module")
def flagged_tokenizer(tmp_path_factory, gguf_reader):
    """The default model's vocabulary with BOS and EOS added, EOS 0 and EOT 2, and token 16
    (`<empty_output>`) marked user-defined instead of control."""
    meta = {key: gguf_reader.fields[key].contents() for key in
            ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    meta["tokenizer.ggml.token_type"][16] = 4
    meta |= {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.bos_token_id": 1,
             "tokenizer.ggml.eos_token_id": 0, "tokenizer.ggml.eot_token_id": 2,
             "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True}
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "flagged.gguf", meta)
    return tokenizer_from_gguf(gguf.GGUFReader(path))


def test_gguf_flags_add_bos_and_eos_and_extra_stop_ids(flagged_tokenizer, hf_reference_tokenizer):
    for text in [text for text in TEXTS[:100] if not any(ch.isdigit() for ch in text)]:
        assert flagged_tokenizer.encode(text) == [1, *hf_reference_tokenizer.encode(text), 0]
        assert flagged_tokenizer.encode(text, add_special_tokens=False) == hf_reference_tokenizer.encode(text)
    assert flagged_tokenizer.add_bos_token is True
    assert flagged_tokenizer.eos_token_ids == (0, 2)


def test_gguf_user_defined_tokens_stay_whole_and_are_not_skipped(flagged_tokenizer):
    ids = flagged_tokenizer.encode("a<empty_output>b")
    assert 16 in ids
    assert flagged_tokenizer.decode(ids, skip_special_tokens=True) == "a<empty_output>b"


def test_tiny_gguf_vocabulary_merges(tmp_path):
    tiny = tokenizer_from_gguf(gguf.GGUFReader(write_gguf(tmp_path / "t.gguf", TINY_VOCAB)))
    assert tiny.encode("abba") == [2, 1, 0]
    assert tiny.eos_token_ids == ()


@pytest.mark.parametrize(("key", "value", "named"), [
    ("tokenizer.ggml.model", "llama", "'llama'"),
    ("tokenizer.ggml.pre", "no-such-pre", "'no-such-pre'"),
    ("tokenizer.ggml.merges", None, "tokenizer.ggml.merges"),
    ("tokenizer.ggml.token_type", [1, 1], "token_type"),
    ("tokenizer.ggml.eos_token_id", 7, "eos_token_id"),
])
def test_unsupported_or_incomplete_gguf_raises_naming_the_problem(tmp_path, key, value, named):
    path = write_gguf(tmp_path / "t.gguf", TINY_VOCAB | {key: value})
    with pytest.raises(ModelFormatError, match=named):
        tokenizer_from_gguf(gguf.GGUFReader(path))


def reference_pre_tokenizers() -> dict[str, pre_tokenizers.PreTokenizer]:
    """Independent splitters: the regexes transformers' GGUF loader uses, GPT-2's own ByteLevel regex, and
    the StarCoder/SmolLM tokenizer.json (single digits, then GPT-2)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    def split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return {
        "llama-bpe": split_then_bytes(GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"]),
        "qwen2": split_then_bytes(GGUF_PRE_TOKENIZER_SPLITS["qwen2"]),
        "gpt-2": gpt2,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2]),
    }


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "gpt-2", "smollm"])
def test_pre_tokenizers_split_like_references(name):
    ours = byte_level_pre_tokenizer(pre_tokenizer_spec(name))
    reference = reference_pre_tokenizers()[name]
    bad = [text for text in TEXTS if pieces(ours, text) != pieces(reference, text)]
    assert not bad, f"{name}: {len(bad)} texts split differently, e.g. {bad[:3]!r}"


def test_default_pre_tokenizer_applies_llama_cpp_regexes_in_sequence():
    """llama.cpp's fallback: each regex splits the previous pieces, keeping matches and gaps."""
    import regex

    def reference(text: str) -> list[str]:
        spans = [text]
        for pattern in pre_tokenizer_spec("default").splits:
            spans = [part for span in spans for part in regex.split(f"({pattern})", span) if part]
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return [pieces(byte_level, span)[0] for span in spans]

    ours = byte_level_pre_tokenizer(pre_tokenizer_spec("default"))
    for text in ["price: $1234567, +12% <tag>!", "a  b\n\n12,345.678 ~x^y|z", *TEXTS[100:160]]:
        assert pieces(ours, text) == reference(text), text


def test_hf_folder_tokenizer_matches_reference(tmp_path, hf_reference_tokenizer):
    hf_reference_tokenizer.save_pretrained(tmp_path)
    ours = tokenizer_from_hf_folder(tmp_path)
    assert not mismatches(ours, hf_encoder(hf_reference_tokenizer), TEXTS)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert ours.encode_chat(messages) == hf_reference_tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert (ours.bos_token_id, ours.eos_token_ids, ours.pad_token_id) == (1, (2,), 2)


def test_hf_folder_follows_tokenizer_json_over_flags_and_reads_generation_config(tmp_path,
                                                                                  hf_reference_tokenizer):
    from transformers import AutoTokenizer

    hf_reference_tokenizer.save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) | {"add_bos_token": True}
    config_path.write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    ours = tokenizer_from_hf_folder(tmp_path)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    assert not mismatches(ours, hf_encoder(reference), TEXTS[:80])
    assert ours.eos_token_ids == (2, 0)


def test_hf_folder_without_tokenizer_json_raises(tmp_path):
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        tokenizer_from_hf_folder(tmp_path)
