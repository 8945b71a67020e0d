"""The tokenizer every loader returns: text to ids and back, chat prompts, and the ids that end a reply.

The heavy lifting is a `tokenizers.Tokenizer` (Rust BPE); this class adds what an inference engine needs
on top: which BOS/EOS/pad ids apply, which tokens stop generation, and the model's chat template. GGUF
files build the backend from metadata (`gguf_vocab.py`); Hugging Face folders ship `tokenizer.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from kilotok.errors import InvalidRequestError, ModelFormatError
from kilotok.tokenizer.chat_template import ChatTemplate

# Tokens that close a turn in common chat formats. Templates end each turn with one of these while the
# model's EOS may be a different token (e.g. `<|end_of_text|>`), so generation must stop on both.
_END_OF_TURN_TEXTS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")


class Tokenizer:
    """Encode/decode with a model's vocabulary and render its chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        chat_template: str | None = None,
        chat_template_origin: str | None = None,
        name: str = "this model",
    ):
        """`chat_template_origin` names the file (and key) the template was read from, for error messages.
        A template that does not compile fails here, when the model loads, not at its first chat request."""
        self._backend = backend
        self._bos_token_id = bos_token_id
        self._pad_token_id = pad_token_id
        special_ids = {"bos_token": bos_token_id, "eos_token": eos_token_id,
                       "unk_token": unk_token_id, "pad_token": pad_token_id}
        self._chat_template_source = chat_template
        origin = f"the chat template in {chat_template_origin}" if chat_template_origin else "the model's chat template"
        tokens = {key: self._token_text(i) for key, i in special_ids.items()}
        self._chat_template = ChatTemplate(chat_template, tokens, origin) if chat_template else None
        self._name = name
        stop_ids = [eos_token_id, *extra_eos_token_ids, *self._end_of_turn_ids(chat_template)]
        self._eos_token_ids = tuple(dict.fromkeys(i for i in stop_ids if i is not None))

    def _end_of_turn_ids(self, chat_template: str | None) -> list[int]:
        if not chat_template:
            return []
        ids = (self._backend.token_to_id(text) for text in _END_OF_TURN_TEXTS if text in chat_template)
        return [i for i in ids if i is not None]

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: EOS first, then end-of-turn ids from the model's metadata
        (GGUF eot/eom, generation_config.json) and turn-closing tokens its chat template writes."""
        return self._eos_token_ids

    @property
    def pad_token_id(self) -> int | None:
        return self._pad_token_id

    @property
    def add_bos_token(self) -> bool:
        """Whether `encode(text)` puts BOS in front, as the model's tokenizer settings ask."""
        ids = self._backend.encode("", add_special_tokens=True).ids
        return self._bos_token_id is not None and ids[:1] == [self._bos_token_id]

    @property
    def chat_template(self) -> str | None:
        return self._chat_template_source

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`. Special tokens written in the text (`<|im_start|>`) become their ids;
        `add_special_tokens` adds BOS/EOS only where the model's settings say so."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text to encode must be a string, got {type(text).__name__}")
        try:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:  # what the Rust binding raises for a string that is not valid Unicode, among others
            _check_unicode(text)
            raise

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **variables: Any) -> str:
        """The prompt text the model's chat template makes of `messages`."""
        return self._template().render(messages, add_generation_prompt=add_generation_prompt, **variables)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    **variables: Any) -> list[int]:
        """Prompt ids for `messages`. No BOS is added: the template writes it where the model wants one."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False)

    def _template(self) -> ChatTemplate:
        if self._chat_template is None:
            raise InvalidRequestError(
                f"{self._name} has no chat template, so it cannot take chat messages; "
                "send a plain text prompt (completion) instead"
            )
        return self._chat_template

    def _token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self._backend.id_to_token(token_id)


def _check_unicode(text: str) -> None:
    """Python strings can hold lone surrogates (JSON's "\\ud800", undecodable bytes of a command line)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequestError(f"the text is not valid Unicode ({error.reason} at character {error.start}); "
                                  "send UTF-8 text without lone surrogates") from error


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFormatError(f"{path} is not readable JSON ({error}); restore it from the model") from error
    if not isinstance(content, dict):
        raise ModelFormatError(f"{path} should hold a JSON object; restore it from the model")
    return content


def _token_name(value: object) -> str | None:
    # tokenizer_config stores special tokens either as text or as a serialized AddedToken.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template_from(folder: Path, config: dict) -> tuple[str | None, str]:
    """The folder's chat template and where it was found."""
    template_file = folder / "chat_template.jinja"
    if template_file.is_file():
        try:
            return template_file.read_text(encoding="utf-8"), str(template_file)
        except (OSError, UnicodeDecodeError) as error:
            raise ModelFormatError(f"{template_file} is not readable UTF-8 text ({error}); restore it from the "
                                   "model, or remove it to use tokenizer_config.json's template") from error
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return (template if isinstance(template, str) else None), f"{folder / 'tokenizer_config.json'} (chat_template)"


def tokenizer_from_hf_folder(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face model folder: `tokenizer.json` plus its config files.

    As in transformers, tokenizer.json's post-processor alone decides whether BOS/EOS are added; the
    `add_bos_token` flags in tokenizer_config.json are ignored when tokenizer.json exists.
    """
    folder = Path(folder)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelFormatError(
            f"{folder} has no tokenizer.json; kilotok needs the fast-tokenizer file (save the tokenizer "
            "with transformers' save_pretrained to create it)"
        )
    try:
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as error:  # the Rust loader raises bare Exceptions on malformed files
        raise ModelFormatError(f"{tokenizer_file} could not be loaded: {error}; restore it from the model (or save "
                               "the tokenizer again with transformers' save_pretrained)") from error
    # Older repositories name their special tokens in special_tokens_map.json only.
    config = _read_json(folder / "special_tokens_map.json") | _read_json(folder / "tokenizer_config.json")
    ids = {key: _id_of(backend, config.get(key), key, folder) for key in
           ("bos_token", "eos_token", "pad_token", "unk_token")}
    chat_template, chat_template_origin = _chat_template_from(folder, config)
    return Tokenizer(
        backend,
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
        pad_token_id=ids["pad_token"],
        unk_token_id=ids["unk_token"],
        extra_eos_token_ids=_generation_eos_ids(folder),
        chat_template=chat_template,
        chat_template_origin=chat_template_origin,
        name=folder.name,
    )


def _id_of(backend: tokenizers.Tokenizer, value: object, key: str, folder: Path) -> int | None:
    name = _token_name(value)
    if name is None:
        return None
    token_id = backend.token_to_id(name)
    if token_id is None:
        raise ModelFormatError(f"{folder}: {key} {name!r} of tokenizer_config.json is not in tokenizer.json; the "
                               "two files come from different tokenizers: restore both from the model")
    return token_id


def _generation_eos_ids(folder: Path) -> list[int]:
    eos = _read_json(folder / "generation_config.json").get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    return [i for i in ids if isinstance(i, int)]
