"""`kilotok bench parallel` on a small random Llama (6 query heads, 3 KV heads): sizes that do not split are
skipped with the reason, and the measured sizes report the same tokens as tp 1 and their all-reduces."""

from __future__ import annotations

import pytest

from kilotok.bench.parallel import ParallelBenchSettings, format_results, run_size, usable_sizes
from tests.parallel.tiny_models import llama_folder

pytest.importorskip("transformers")


def test_bench_parallel_reports_every_shardable_size(tmp_path):
    settings = ParallelBenchSettings(model=str(llama_folder(tmp_path)), dtype="fp32", sizes=(1, 3, 4),
                                     prompt_tokens=6, max_tokens=5)
    sizes, skipped = usable_sizes(settings, explicit=True)
    assert sizes == [1, 3] and "num_heads) of 6" in skipped[4]
    results = [run_size(settings, size) for size in sizes]
    assert results[1].token_ids == results[0].token_ids
    assert results[0].all_reduces_per_step == 0
    # Per forward: the embedding, two per layer (2 layers); the prefill and decode steps each run one.
    assert results[1].all_reduces_per_step == 5
    report = format_results(settings, results, skipped)
    assert "tp 4 skipped" in report and report.count("yes") == 2
