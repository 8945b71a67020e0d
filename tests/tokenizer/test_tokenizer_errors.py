"""Bad tokenizer files and chat templates fail with an error that names the file and the fault: when the
model loads for files and templates that cannot be read or compiled, on the request for a template that
cannot render the messages."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models

from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.tokenizer.gguf_vocab import tokenizer_from_gguf
from kilotok.tokenizer.tokenizer import tokenizer_from_hf_folder
from tests.loader.tiny_gguf import write_gguf

HELLO = [{"role": "user", "content": "t3"}]
TINY_GGUF_VOCAB = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
                   "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A word-level tokenizer (token i is `t{i}`) whose chat template joins the messages."""
    BackendTokenizer(models.WordLevel({f"t{i}": i for i in range(8)}, unk_token="t0")).save(
        str(tmp_path / "tokenizer.json"))
    write_config(tmp_path, "{% for m in messages %}{{ m.content }}{% endfor %}")
    return tmp_path


def write_config(folder: Path, chat_template: str) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "t2", "chat_template": chat_template}))


def test_a_good_folder_loads_and_renders(folder):
    assert tokenizer_from_hf_folder(folder).encode_chat(HELLO) == [3]


@pytest.mark.parametrize(("file", "content", "fault"), [
    ("tokenizer.json", "{oops", "could not be loaded: .*restore it from the model"),
    ("tokenizer.json", '{"model": 5}', "could not be loaded"),
    ("tokenizer_config.json", "{oops", "not readable JSON .*restore it from the model"),
    ("tokenizer_config.json", "[]", "should hold a JSON object"),
    ("special_tokens_map.json", "{oops", "not readable JSON"),
    ("generation_config.json", "{oops", "not readable JSON"),
    ("chat_template.jinja", b"\xff\xfe", "not readable UTF-8 text .*restore it from the model"),
])
def test_an_unreadable_file_is_named(folder, file, content, fault):
    path = folder / file
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ModelFormatError, match=fault) as error:
        tokenizer_from_hf_folder(folder)
    assert str(path) in str(error.value)


def test_special_tokens_missing_from_the_vocabulary_name_both_files(folder):
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ModelFormatError, match="eos_token '<nope>' of tokenizer_config.json is not in "
                                               "tokenizer.json; .*restore both from the model"):
        tokenizer_from_hf_folder(folder)


@pytest.mark.parametrize(("file", "origin"), [
    ("tokenizer_config.json", "tokenizer_config.json (chat_template)"),
    ("chat_template.jinja", "chat_template.jinja"),
])
def test_a_template_that_does_not_compile_fails_at_load_naming_its_file(folder, file, origin):
    broken = "{% for m in messages %}{{ m.content }"
    if file == "chat_template.jinja":
        (folder / file).write_text(broken)
    else:
        write_config(folder, broken)
    with pytest.raises(ModelFormatError) as error:
        tokenizer_from_hf_folder(folder)
    assert str(error.value).startswith(f"the chat template in {folder / origin} is not valid Jinja (line 1: ")
    assert "fix the template there, or remove it" in str(error.value)


@pytest.mark.parametrize(("template", "fault"), [
    ("{{ messages[0].content + 1 }}", r"TypeError: can only concatenate str"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ messages[5].content }}", "no element 5"),
    ("{{ raise_exception('roles must alternate') }}", r"\(roles must alternate\)"),
])
def test_a_template_that_cannot_render_is_a_request_error_naming_its_file(folder, template, fault):
    write_config(folder, template)
    tokenizer = tokenizer_from_hf_folder(folder)
    with pytest.raises(InvalidRequestError, match=fault) as error:
        tokenizer.encode_chat(HELLO)
    assert str(error.value).startswith(f"the chat template in {folder / 'tokenizer_config.json'} (chat_template) "
                                       "could not render these messages")


def test_a_gguf_template_is_named_by_file_and_key(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", {**TINY_GGUF_VOCAB, "tokenizer.chat_template": "{% if %}"})
    with pytest.raises(ModelFormatError, match=rf"the chat template in {path} \(tokenizer.chat_template\) is not"):
        tokenizer_from_gguf(gguf.GGUFReader(path))


def test_text_that_is_not_unicode_is_a_request_error(folder):
    # Python keeps bytes that are not UTF-8 in command-line arguments as lone surrogates.
    with pytest.raises(InvalidRequestError, match="not valid Unicode .*surrogates not allowed at character 1"):
        tokenizer_from_hf_folder(folder).encode("a\udcffb")
