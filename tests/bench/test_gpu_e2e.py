"""`kilotok bench gpu` on the CPU, on its tiny random models: the structure of its JSON (saved after every
case), figures that are positive, the budget, a failing case, and the arithmetic it derives. Never speed."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from kilotok.bench import gpu_cases
from kilotok.bench.gpu import TINY, GpuE2eBench, GpuE2eSettings, summary_rows
from kilotok.cli.main import main
from kilotok.models.random_weights import random_model_config

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_SETTINGS = replace(GpuE2eSettings(device="cpu"), **TINY)


def _positive(*values) -> bool:
    return all(isinstance(v, float | int) and math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def document():
    saved = []
    result = GpuE2eBench(TINY_SETTINGS, save=lambda doc: saved.append(json.loads(json.dumps(doc)))).run()
    assert [len(doc["cases"]) for doc in saved] == list(range(1, len(result["cases"]) + 1))
    return result


def test_every_case_ran_and_reports_positive_figures(document):
    assert document["device"] == "cpu" and _positive(document["copy_gbps"])
    names = [(case["section"], case["name"], case["status"]) for case in document["cases"]]
    assert names == [
        ("smollm2", "kilotok bf16 none", "ok"), ("smollm2", "kilotok bf16 ngram", "ok"),
        ("smollm2", "transformers static+compile", "ok"), ("smollm2", "transformers eager", "ok"),
        ("smollm2", "kilotok fp8-block none", "ok"), ("smollm2", "kilotok fp8-block ngram", "ok"),
        *[("dense", f"kilotok {d} batch {b}", "ok") for d in ("bf16", "fp8-block") for b in TINY["batch_sizes"]],
        ("moe", "kilotok 4 layers", "ok"), ("moe", "kilotok 2 layers", "ok"), ("moe", "per layer pair", "ok"),
    ]
    for case in document["cases"]:
        assert _positive(case["seconds"])
        for run in case.get("runs", []):
            assert _positive(run["ttft_s"], run["decode_tokens_per_s"], run["acceptance_length"], run["prompt_tokens"])
            assert len(run["token_ids"]) == TINY["max_tokens"]
        if "per_user_decode_tokens_per_s" in case:
            assert _positive(case["per_user_decode_tokens_per_s"], case["total_decode_tokens_per_s"],
                             case["total_tokens_per_s_wall"], case["median_ttft_s"], case["batch"])
    by_name = {(c["section"], c["name"]): c for c in document["cases"]}
    assert by_name["dense", "kilotok bf16 batch 3"]["batch"] == 3
    for key in (("smollm2", "kilotok bf16 none"), ("smollm2", "kilotok fp8-block none")):
        assert _positive(by_name[key]["weight_bytes_per_token"], by_name[key]["copy_bandwidth_share"])
    assert _positive(by_name["dense", "kilotok fp8-block batch 1"]["copy_bandwidth_share"])
    assert by_name["moe", "kilotok 4 layers"]["weight_format"] == "fp8-stored"
    assert by_name["smollm2", "transformers eager"]["prompts_agreeing_with_kilotok_bf16"] in (0, 1, 2)
    assert set(by_name["moe", "per layer pair"]["step_ms_by_layers"]) == {2, 4}
    assert len(summary_rows(document)) == 1 + len(document["cases"])


def test_the_weight_bytes_per_token_are_every_linear_layer_and_the_head():
    from kilotok import LLM

    config = random_model_config("random:tiny-llama")
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * kv * hidden + 3 * inter * hidden
    llm = LLM("random:tiny-llama", dtype="bf16", device="cpu", compile=False, progress=False, kv_cache_gb=0.01)
    expected = 2 * (config["num_hidden_layers"] * per_layer + vocab * hidden)
    assert gpu_cases.weight_bytes_per_token(llm.engine.runner.model) == expected


def test_a_spent_budget_skips_the_cases_and_a_failing_case_does_not_stop_the_rest(tmp_path):
    skipped = GpuE2eBench(replace(TINY_SETTINGS, budget_s=1e-9, sections=("dense",))).run()
    assert [c["status"] for c in skipped["cases"]] == ["skipped: time budget spent"] * 4
    # The shipped EAGLE-3 head belongs to the default model, not to the tiny one: that case fails, alone.
    settings = replace(TINY_SETTINGS, sections=("smollm2",), specs=("eagle3", "none"), smollm_dtypes=("bf16",),
                       transformers=False)
    statuses = [c["status"] for c in GpuE2eBench(settings).run()["cases"]]
    assert statuses == ["error", "ok"]


def test_the_cli_writes_the_json_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "gpu", "--tiny", "--device", "cpu", "--sections", "dense", "--json-out", str(out)]) == 0
    names = [c["name"] for c in json.loads(out.read_text())["cases"]]
    assert names == [f"kilotok {d} batch {b}" for d in ("bf16", "fp8-block") for b in TINY["batch_sizes"]]
    assert "kilotok fp8-block batch 3" in capsys.readouterr().out


def test_per_layer_cost_from_two_layer_counts():
    points = [{"layers": 4, "per_user_decode_tokens_per_s": 1e3 / 16},
              {"layers": 2, "per_user_decode_tokens_per_s": 1e3 / 10}]
    cost = gpu_cases.per_layer_cost(points, full_layers=48)
    assert cost["layer_pair_ms"] == pytest.approx(6) and cost["rest_of_step_ms"] == pytest.approx(4)
    assert cost["extrapolated_full_model_step_ms"] == pytest.approx(4 + 24 * 6)


def test_layers_that_fit_count_fp8_experts_at_a_byte_and_keep_layer_pairs():
    config = random_model_config("random:tiny-llama4")
    fixed, per_layer = gpu_cases.layer_bytes(gpu_cases.model_config(config))
    assert per_layer[1] > per_layer[0]  # the MoE layer
    assert gpu_cases.layers_that_fit(config, fixed + sum(per_layer[:2]), 0) == 2
    assert gpu_cases.layers_that_fit(config, fixed + sum(per_layer[:3]), 0) == 2
    assert gpu_cases.layers_that_fit(config, fixed + sum(per_layer) + 10**9, 10**9) == 4
    assert gpu_cases.layers_that_fit(config, fixed, 0) == 0


def test_the_transformers_baseline_holds_kilotoks_weights():
    from kilotok import LLM, SamplingParams

    hf = gpu_cases.transformers_model("random:tiny-llama", torch.device("cpu"), torch.float32)
    llm = LLM("random:tiny-llama", dtype="fp32", device="cpu", compile=False, progress=False, kv_cache_gb=0.01)
    prompt = gpu_cases.random_prompts(1, 9, 320)[0]
    ours = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    theirs = gpu_cases.time_transformers(hf, [prompt], 8, static_cache=False)
    assert theirs[0]["token_ids"] == ours[0].token_ids
