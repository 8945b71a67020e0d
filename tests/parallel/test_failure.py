"""A rank that dies ends the run with a clear error, and no rank is left running."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kilotok.errors import ParallelError
from kilotok.llm import LLM
from tests.parallel.tiny_models import GREEDY, llama_folder

pytest.importorskip("transformers")


def test_killed_follower_ends_the_run_with_a_clear_error(tmp_path):
    llm = LLM(str(llama_folder(tmp_path)), dtype="fp32", compile=False, progress=False, tensor_parallel_size=3)
    followers = llm.engine.runner.group.spawned.processes
    assert llm.generate({"prompt_token_ids": [5, 6, 7]}, GREEDY)[0].token_ids
    os.kill(followers[1].pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(ParallelError, match="rank of the parallel group stopped"):
        llm.generate({"prompt_token_ids": [5, 6, 7]}, GREEDY)
    assert time.monotonic() - started < 60
    llm.close()
    assert not any(process.is_alive() for process in followers)
