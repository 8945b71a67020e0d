"""`kilotok bench spec-policy`: argument parsing, and the choice of the fastest tree per batch size."""

from __future__ import annotations

import pytest

from kilotok.bench import spec_policy
from kilotok.errors import InvalidRequestError
from kilotok.speculative.policy import SpecPolicy, TreeShape


def test_shapes_and_batch_sizes_parse():
    assert spec_policy.parse_shapes("0, 3x3,6x10") == [None, TreeShape(3, 3), TreeShape(6, 10)]
    assert spec_policy.parse_batch_sizes("8,1,2,2") == [1, 2, 8]
    for bad in ("3", "x4", "0x2"):
        with pytest.raises(InvalidRequestError):
            spec_policy.parse_shapes(bad)
    with pytest.raises(InvalidRequestError):
        spec_policy.parse_batch_sizes("0,4")


def test_each_batch_size_keeps_its_fastest_shape(monkeypatch):
    # Hand-made rates: the 3x3 tree wins at batch 1, nothing at batch 2, the 1x1 tree at batch 4.
    rates = {(1, "3x3"): 90.0, (1, "0"): 50.0, (1, "1x1"): 70.0,
             (2, "3x3"): 60.0, (2, "0"): 80.0, (2, "1x1"): 79.0,
             (4, "3x3"): 10.0, (4, "0"): 100.0, (4, "1x1"): 101.0}
    shapes = [None, TreeShape(3, 3), TreeShape(1, 1)]

    class SpeculativeDecoder:
        policy = None

    class FakeLLM:
        class engine:  # noqa: N801 - mimics the attribute path llm.engine.decoder
            decoder = SpeculativeDecoder()

    def fake_rate(llm, batch_size, max_tokens):
        shape = llm.engine.decoder.policy.shape_for(batch_size)
        label = "0" if shape is None else f"{shape.depth}x{shape.tree_size}"
        return rates[(batch_size, label)], 1.0

    monkeypatch.setattr(spec_policy, "decode_rate", fake_rate)
    policy, measurements = spec_policy.calibrate(FakeLLM(), [1, 2, 4], shapes, max_tokens=8)
    assert policy == SpecPolicy(((1, TreeShape(3, 3)), (2, None), (4, TreeShape(1, 1))))
    assert len(measurements) == 9
