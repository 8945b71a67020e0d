"""What `kilotok bench gpu` (bench/gpu.py) measures, one function per kind of case: the copy bandwidth,
kilotok at batch 1 over prompts and at a batch of users, and transformers on the same weights.

Timings are host clocks around whole generate calls, as a user sees them: kilotok's own TTFT and decode
rate per request (RequestOutput), and for transformers the same from a streamer that waits for the device
at each token. Each engine warms up first on the longest prompt (compilation, graph capture, allocator),
and is freed before the next one loads, so no case runs beside another's weights.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kilotok.bench.baselines import _TokenClock, measurement_from_token_times
from kilotok.errors import KilotokError
from kilotok.loader.tensor import as_float
from kilotok.models.config import ModelConfig
from kilotok.models.family import expected_shapes
from kilotok.models.registry import FAMILIES, load_checkpoint, model_config
from kilotok.speculative.config import SpecConfig
from kilotok.speculative.policy import SpecPolicy, TreeShape

AGREEMENT_TOKENS = 32
"""Leading greedy tokens each batch-1 run keeps, to compare engines on the same weights."""
SPEC_TREES = {"ngram": {"depth": 5}, "eagle3": {"depth": 5, "topk": 4, "tree_size": 16}}
"""Draft trees for a GPU, where verifying a few dozen rows at batch 1 costs about what one row does (a guess
until `kilotok bench spec-policy` has measured them on one), at every batch size, as the engine runs the
configured tree on a GPU without a shipped table; given as a file, so a table shipped later for the card
does not change what this bench measures."""


def bench_spec(method: str, folder: Path) -> SpecConfig:
    """The speculative settings of `method` with its SPEC_TREES tree at every batch size."""
    tree = SPEC_TREES[method]
    policy = SpecPolicy.fixed(TreeShape(tree["depth"], tree.get("tree_size", tree["depth"])))
    return SpecConfig(method, policy=str(policy.save(folder / f"{method}-policy.json")), **tree)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth_gbps(device: torch.device, num_bytes: int, repeats: int = 10) -> float:
    """A large device-to-device copy, counting bytes read plus bytes written (median of `repeats`)."""
    source = torch.randn(num_bytes // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * num_bytes / statistics.median(times) / 1e9


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every linear layer and the head (modules with `weight_bytes`,
    counted once where one wraps another), not the embedding table, of which a step reads one row."""
    counted = [m for m in model.modules() if hasattr(m, "weight_bytes")]
    nested = {id(inner) for m in counted for inner in m.modules() if inner is not m}
    return sum(m.weight_bytes for m in counted if id(m) not in nested)


def random_prompts(count: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (count, length), generator=generator).tolist()


def engine_facts(llm) -> dict:
    """What a kilotok engine ran with (CUDA graphs replay its decode step on CUDA with the Triton kernels)."""
    engine = llm.engine
    return {"weight_format": engine.weight_format.name, "backend": engine.backend.value,
            "cuda_graphs": engine.config.cuda_graphs, "compile": engine.config.compile}


def _greedy(max_tokens: int):
    from kilotok import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def time_prompts(llm, prompt_ids: list[list[int]], max_tokens: int) -> list[dict]:
    """kilotok at batch 1: one greedy run per prompt after a warm-up on the longest."""
    params = _greedy(max_tokens)
    llm.generate([{"prompt_token_ids": max(prompt_ids, key=len)}], params)
    runs = []
    for ids in prompt_ids:
        out = llm.generate([{"prompt_token_ids": ids}], params)[0]
        runs.append({"prompt_tokens": len(ids), "ttft_s": out.ttft_s, "decode_tokens_per_s": out.decode_tokens_per_s,
                     "acceptance_length": out.acceptance_length, "token_ids": list(out.token_ids[:AGREEMENT_TOKENS])})
    return runs


def time_batch(llm, prompt_ids: list[list[int]], max_tokens: int) -> dict:
    """kilotok with len(prompt_ids) users at once, after one warm-up round of the same batch."""
    params = _greedy(max_tokens)
    requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
    llm.generate(requests, params)
    start = time.perf_counter()
    outputs = llm.generate(requests, params)
    wall_s = time.perf_counter() - start
    per_user = [out.decode_tokens_per_s for out in outputs]
    return {"batch": len(prompt_ids), "per_user_decode_tokens_per_s": statistics.median(per_user),
            "total_decode_tokens_per_s": sum(per_user), "total_tokens_per_s_wall": len(outputs) * max_tokens / wall_s,
            "median_ttft_s": statistics.median(out.ttft_s for out in outputs), "wall_s": wall_s}


def summarize_prompts(runs: list[dict]) -> dict:
    return {"median_decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
            "median_ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "median_acceptance_length": statistics.median(r["acceptance_length"] for r in runs)}


class _DeviceTokenClock(_TokenClock):
    """Stamps a token once the device has produced it: generate() launches work asynchronously."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self._device = device

    def put(self, value: object) -> None:
        synchronize(self._device)
        super().put(value)


def transformers_model(model: str, device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """transformers' model of `model` holding the weights kilotok loads (dequantized, in `dtype`)."""
    try:
        import transformers
    except ImportError as error:
        raise KilotokError(f"the transformers baseline needs transformers ({error}): pip install -e .[test]") from error
    checkpoint = load_checkpoint(model, progress=False)
    config = transformers.AutoConfig.for_model(**checkpoint.config)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {name: as_float(weight).to(device, dtype) for name, weight in checkpoint.weights.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise KilotokError(f"transformers' {type(hf).__name__} does not match the checkpoint: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    return hf.eval()


def time_transformers(hf, prompt_ids: list[list[int]], max_tokens: int, static_cache: bool) -> list[dict]:
    """Greedy generate() at batch 1, exactly max_tokens tokens per prompt. With `static_cache`, transformers
    compiles its decoding forward by itself on a GPU (its "static cache + torch.compile" recipe)."""
    device = hf.device
    options = {"cache_implementation": "static"} if static_cache else {}

    def run(ids: list[int], streamer=None):
        input_ids = torch.tensor([ids], device=device)
        with torch.inference_mode():
            return hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                               max_new_tokens=max_tokens, min_new_tokens=max_tokens, streamer=streamer, **options)

    run(max(prompt_ids, key=len))
    runs = []
    for ids in prompt_ids:
        clock = _DeviceTokenClock(device)
        start = time.perf_counter()
        output = run(ids, clock)
        new_ids = output[0, len(ids):].tolist()
        measured = measurement_from_token_times(ids, start, clock.token_times_s, new_ids)
        runs.append({"prompt_tokens": len(ids), "ttft_s": measured.ttft_s,
                     "decode_tokens_per_s": measured.decode_tokens_per_s, "acceptance_length": 1.0,
                     "token_ids": new_ids[:AGREEMENT_TOKENS]})
    return runs


def layer_bytes(config: ModelConfig) -> tuple[int, list[int]]:
    """Estimated device bytes of a model built from `config`: (embedding and head, [each layer]). Routed
    experts count one byte a parameter (FP8), everything else two (bf16)."""
    shapes = expected_shapes(config, FAMILIES[config.architecture])
    per_layer = [0] * config.num_layers
    fixed = 0
    for name, shape in shapes.items():
        size = torch.Size(shape).numel() * (1 if ".experts." in name else 2)
        if name.startswith("model.layers."):
            per_layer[int(name.split(".")[2])] += size
        else:
            fixed += size
    return fixed, per_layer


def layers_that_fit(config_json: dict, free_bytes: int, reserve_bytes: int, step: int = 2) -> int:
    """The most layers (a multiple of `step`, so dense and MoE layers stay paired) whose estimated bytes fit
    in `free_bytes` less `reserve_bytes` (KV cache, activations, the builder's temporaries)."""
    fixed, per_layer = layer_bytes(model_config(config_json))
    room, layers = free_bytes - reserve_bytes - fixed, 0
    while layers + step <= len(per_layer) and sum(per_layer[: layers + step]) <= room:
        layers += step
    return layers


def per_layer_cost(points: list[dict], full_layers: int) -> dict:
    """From the step times at two layer counts: the cost of each dense+MoE pair, what the rest of the step
    costs (embedding, head, sampling, the engine), and the full model's batch-1 rate they imply."""
    (few, many) = sorted(points, key=lambda p: p["layers"])
    step_ms = {p["layers"]: 1e3 / p["per_user_decode_tokens_per_s"] for p in points}
    pair_ms = (step_ms[many["layers"]] - step_ms[few["layers"]]) / ((many["layers"] - few["layers"]) / 2)
    fixed_ms = step_ms[many["layers"]] - pair_ms * many["layers"] / 2
    full_ms = fixed_ms + pair_ms * full_layers / 2
    return {"step_ms_by_layers": step_ms, "layer_pair_ms": pair_ms, "rest_of_step_ms": fixed_ms,
            "full_layers": full_layers, "extrapolated_full_model_step_ms": full_ms,
            "extrapolated_full_model_tokens_per_s": 1e3 / full_ms if full_ms > 0 else None}


def timed(fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    record = fn()
    return record | {"seconds": time.perf_counter() - start}
