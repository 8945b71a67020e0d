"""`kilotok bench serve`'s command line rejects bad settings before any server starts, saying what to fix."""

from __future__ import annotations

import re

import pytest

from kilotok.cli.main import main


@pytest.mark.parametrize(("flags", "message"), [
    (["--concurrency", "1,x"], "--concurrency must be comma-separated integers"),
    (["--concurrency", "0,2"], "--concurrency levels must be distinct and at least 1"),
    (["--concurrency", "2,2"], "--concurrency levels must be distinct and at least 1"),
    (["--concurrency", "1,4", "--num-prompts", "3"], r"--num-prompts \(3\) must be at least the largest"),
    (["--max-tokens", "1"], "--max-tokens must be at least 2"),
    (["--append"], "--append needs --out"),
    (["--prompts-file", "/nonexistent/prompts.jsonl"], "prompt file /nonexistent/prompts.jsonl not found"),
    (["--url", "http://127.0.0.1:9", "--concurrency", "1"], "cannot list the models of the server"),
])
def test_bad_settings_are_clear_errors(flags: list[str], message: str, capsys):
    assert main(["bench", "serve", *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
