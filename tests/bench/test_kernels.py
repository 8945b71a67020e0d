"""`kilotok bench kernels` on the default model: every kernel timed at every row count, on the same
weights (the three kernels agree on the output), and bad settings refused."""

from __future__ import annotations

import pytest
import torch

from kilotok.bench.kernels import KernelBenchSettings, _layers_by_kernel, report, run_kernel_bench
from kilotok.errors import InvalidRequestError
from kilotok.quant.lowbit import lowbit_available

pytestmark = pytest.mark.skipif(not lowbit_available(), reason="needs the low-bit op")


@pytest.mark.slow
def test_every_kernel_is_timed_on_the_same_weights():
    settings = KernelBenchSettings(rows=(1, 3), repeats=1, steps=False)
    document = run_kernel_bench(settings)
    assert [(r["rows"], r["kernel"]) for r in document["calls"]] == [
        (rows, kernel) for rows in (1, 3) for kernel in ("lowbit", "aten", "bf16")]
    assert all(len(r["per_call_ms"]) == 5 and r["projections_ms"] > 0 for r in document["calls"])


@pytest.mark.slow
def test_the_compared_kernels_compute_the_same_layer():
    from kilotok import LLM

    model = LLM("smollm2-135m", progress=False, compile=False).engine.runner.model
    layers = _layers_by_kernel(model)
    for index in range(5):
        x = torch.randn(2, layers["lowbit"][index].in_features)
        ours = layers["lowbit"][index](x)
        for kernel in ("aten", "bf16"):
            other = layers[kernel][index](x).float()
            assert ((ours - other).norm() / ours.norm()).item() < 0.05, (kernel, index)


def test_the_report_gives_the_ratio_to_one_row():
    calls = [{"rows": rows, "kernel": kernel, "projections_ms": float(rows) if kernel == "lowbit" else 9.0}
             for rows in (1, 4) for kernel in ("lowbit", "aten")]
    text = report(calls, [{"rows": 1, "step_ms": 2.0}, {"rows": 4, "step_ms": 3.0}], "lowbit")
    assert "4.00x" in text and "1.50x" in text


def test_bad_settings_are_refused():
    with pytest.raises(InvalidRequestError):
        KernelBenchSettings(rows=(0,))
