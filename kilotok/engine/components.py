"""What an engine runs for one EngineConfig, built once: the model in its weight format on its device, the
model runner with its KV cache (and, on CUDA, its captured decode graphs), and the decoder (plain, or
speculative when the config asks for it). This is the one place the engine learns that speculative
decoding exists; the loop itself sees only a `Decoder`."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from kilotok.engine.engine_config import EngineConfig
from kilotok.engine.gpu_memory import describe, measure_step_peaks, plan_kv_cache
from kilotok.engine.ranks import leader_runner, start_ranks
from kilotok.kernels.backend import KernelBackend
from kilotok.models.builder import LoadedModel, load_model
from kilotok.models.causal_lm import CausalLM
from kilotok.quant.formats import WeightFormat
from kilotok.runner.decoder import Decoder, PlainDecoder
from kilotok.runner.model_runner import ModelRunner
from kilotok.speculative.decoder import build_decoder
from kilotok.speculative.verify_inputs import TREE_ALIGN
from kilotok.tokenizer.tokenizer import Tokenizer


@dataclass
class EngineComponents:
    model_name: str
    tokenizer: Tokenizer
    weight_format: WeightFormat
    backend: KernelBackend
    model: CausalLM
    max_model_len: int
    num_blocks: int
    runner: ModelRunner
    decoder: Decoder


def build_components(config: EngineConfig) -> EngineComponents:
    """With tensor_parallel_size > 1 the model is rank 0's shard, and its runner leads the other ranks."""
    group, loaded = start_ranks(config) if config.parallel.world_size > 1 else (None, load_model(
        config.model, config.dtype, progress=config.progress, check_tensors=config.check_tensors,
        backend=config.backend, pdl=config.pdl, device=config.torch_device))
    model = loaded.model
    max_model_len = min(config.max_model_len or model.config.max_position_embeddings,
                        model.config.max_position_embeddings)
    if group is not None:
        num_blocks = kv_cache_blocks_on_cpu(config, model)
        runner = leader_runner(group, config, loaded, num_blocks, max_model_len)
        graphs = False
    else:
        num_blocks, runner, graphs = _runner(config, loaded, max_model_len)
    decoder = build_decoder(config.spec, PlainDecoder(runner), model, loaded.name, max_model_len, config.max_num_seqs,
                            config.compile)
    if graphs:
        # After the decoder: a drafter asks the runner for features, which the graphs must capture too.
        runner.capture_decode_graphs(config.max_num_seqs, progress=config.progress, verify=_verify_shape(config))
    return EngineComponents(loaded.name, loaded.tokenizer, loaded.weight_format, loaded.backend, model,
                            max_model_len, num_blocks, runner, decoder)


def _verify_shape(config: EngineConfig) -> tuple[int, int] | None:
    """(most verification rows, tree width) a speculative step can run: every sequence with the largest tree."""
    if not config.spec.enabled:
        return None
    width = 1 + config.spec.max_draft_nodes
    return config.max_num_seqs * width, -(-width // TREE_ALIGN) * TREE_ALIGN


def kv_cache_blocks_on_cpu(config: EngineConfig, model: CausalLM) -> int:
    return config.kv_cache_blocks or max(
        2, int(config.kv_cache_gb * 2**30) // ModelRunner.kv_bytes_per_block(model, config.block_size))


def _runner(config: EngineConfig, loaded: LoadedModel, max_model_len: int) -> tuple[int, ModelRunner, bool]:
    """(KV blocks, the runner, whether to capture CUDA graphs). On CUDA the cache takes the memory that
    gpu_memory_utilization leaves after the weights and the steps' measured peaks."""
    model, device = loaded.model, config.torch_device
    graphs = config.cuda_graphs and device.type == "cuda" and loaded.backend is KernelBackend.TRITON
    if device.type != "cuda":
        num_blocks = kv_cache_blocks_on_cpu(config, model)
    elif config.kv_cache_blocks:
        num_blocks = config.kv_cache_blocks
    else:
        probe = ModelRunner(model, 2, config.block_size, max_model_len, False, loaded.backend)
        decode_rows = config.max_num_seqs * (1 + (config.spec.max_draft_nodes if config.spec.enabled else 0))
        reserve = measure_step_peaks(probe, decode_rows, min(config.max_num_batched_tokens, max_model_len))
        del probe
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        block_bytes = ModelRunner.kv_bytes_per_block(model, config.block_size)
        lookahead = 1 + (config.spec.max_draft_nodes if config.spec.enabled else 0)
        blocks_per_seq = -(-(max_model_len + lookahead) // config.block_size)
        plan = plan_kv_cache(device, config.gpu_memory_utilization, block_bytes, reserve,
                             max_blocks=config.max_num_seqs * blocks_per_seq + 1)
        num_blocks = plan.num_blocks
        if config.progress:
            print(describe(plan, device, weights, config.block_size), file=sys.stderr)
    runner = ModelRunner(model, num_blocks, config.block_size, max_model_len, config.compile and not graphs,
                         loaded.backend)
    return num_blocks, runner, graphs
