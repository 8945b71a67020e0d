"""A compiled step replayed without dynamo: same outputs and cache writes as the eager forward, one graph
per input layout, and no replay where replaying would not reproduce the traced call."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from kilotok.runner.compiled_step import CompiledCalls, CompiledStep


@dataclass
class Slots:
    slots: torch.Tensor
    window: torch.Tensor


class TinyStep:
    """A step with weights, a cache written in place at `meta.slots`, and a read of a key window."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(8, 8, generator=generator)
        self.cache = torch.zeros(32, 8)

    def forward(self, x: torch.Tensor, scale: float, meta: Slots) -> tuple[torch.Tensor, None]:
        y = torch.tanh(x @ self.weight) * scale
        self.cache.index_copy_(0, meta.slots, y)
        return y + self.cache[meta.window].sum(dim=1), None


def inputs(rows: int, window: int, seed: int) -> tuple[torch.Tensor, Slots]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 8, generator=generator)
    slots = torch.randperm(32, generator=generator)[:rows]
    meta = Slots(slots, torch.randint(0, 32, (rows, window), generator=generator))
    torch._dynamo.mark_dynamic(meta.window, 1)
    return x, meta


def test_replays_match_the_eager_step_and_write_the_cache():
    compiled, eager = TinyStep(), TinyStep()
    step = CompiledStep(compiled.forward, {})
    for seed, (rows, window) in enumerate([(2, 4), (2, 4), (2, 7), (3, 4), (3, 5), (2, 9)]):
        x, meta = inputs(rows, window, seed)
        got, expected = step(x, 0.5, meta), eager.forward(x, 0.5, meta)
        assert got[1] is None
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled.cache, eager.cache, rtol=1e-5, atol=1e-5)
    # Two row counts, each with any window length (a dynamic dimension): two graphs, both replayed.
    assert len(step._replays) == 2


def test_a_different_python_argument_is_a_different_graph():
    compiled = TinyStep()
    step = CompiledStep(compiled.forward, {})
    x, meta = inputs(2, 4, 0)
    halved, doubled = step(x, 0.5, meta)[0], step(x, 2.0, meta)[0]
    assert len(step._replays) == 2
    assert not torch.allclose(halved, doubled)
    torch.testing.assert_close(step(x, 0.5, meta)[0], halved, rtol=0, atol=0)


class RandomStep:
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x + torch.rand_like(x),)


@pytest.mark.filterwarnings("ignore")
def test_a_step_whose_replay_differs_from_its_traced_call_is_never_replayed():
    step = CompiledStep(RandomStep().forward, {})
    step(torch.zeros(4))
    assert not step._replays


def test_compiled_calls_fall_back_to_eager_for_good(capsys):
    class Owner:
        def double(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (x * 2,)

    calls = CompiledCalls({"double": Owner().double}, compile_steps=True, owner="the test step")

    def broken(*args):
        raise RuntimeError("no compiler")

    calls.compiled["double"] = broken
    assert torch.equal(calls("double", torch.ones(2))[0], torch.full((2,), 2.0))
    assert calls.failed
    assert "the test step runs eager (torch.compile failed: RuntimeError: no compiler)" in capsys.readouterr().err
    del calls.compiled["double"]  # never looked up again
    assert torch.equal(calls("double", torch.ones(3))[0], torch.full((3,), 2.0))
    assert CompiledCalls({"double": Owner().double}, compile_steps=False, owner="").compiled == {}
