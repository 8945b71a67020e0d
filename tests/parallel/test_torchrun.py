"""A two-node launch on one machine: two `torchrun` invocations on loopback (node ranks 0 and 1, one
process each) run `kilotok generate --tensor-parallel-size 2` as one group, and print what one process
prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kilotok.llm import LLM
from kilotok.sampling_params import SamplingParams
from tests.parallel.tiny_models import mixtral_folder

pytest.importorskip("transformers")
TIMEOUT_S = 240


PROMPT = "t5 t6 t7 t5 t6"


def _generate_args(folder: Path) -> list[str]:
    return ["generate", "--model", str(folder), "--prompt", PROMPT, "--max-tokens", "8", "--ignore-eos",
            "--dtype", "fp32", "--no-compile"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_torchrun_nodes_print_the_single_process_output(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    folder = mixtral_folder(tmp_path / "mixtral")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    with LLM(str(folder), dtype="fp32", compile=False, progress=False) as llm:
        text = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0].text
    port = str(_free_port())
    nodes = [subprocess.Popen([torchrun, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                               "--master-addr", "127.0.0.1", "--master-port", port, "-m", "kilotok.cli",
                               *_generate_args(folder), "--tensor-parallel-size", "2", "--expert-parallel-size", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT_S) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert text.strip()
    assert outputs[0][0].splitlines()[0] == text
    assert outputs[1][0] == ""
