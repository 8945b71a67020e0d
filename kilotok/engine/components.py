"""What an engine runs for one EngineConfig, built once: the model in its weight format, the model runner
with its KV cache, and the decoder (plain, or speculative when the config asks for it). This is the one
place the engine learns that speculative decoding exists; the loop itself sees only a `Decoder`."""

from __future__ import annotations

from dataclasses import dataclass

from kilotok.engine.engine_config import EngineConfig
from kilotok.engine.ranks import leader_runner, start_ranks
from kilotok.kernels.backend import KernelBackend
from kilotok.models.builder import load_model
from kilotok.models.causal_lm import CausalLM
from kilotok.quant.formats import WeightFormat
from kilotok.runner.decoder import Decoder, PlainDecoder
from kilotok.runner.model_runner import ModelRunner
from kilotok.speculative.decoder import build_decoder
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
        backend=config.backend, pdl=config.pdl))
    model = loaded.model
    max_model_len = min(config.max_model_len or model.config.max_position_embeddings,
                        model.config.max_position_embeddings)
    num_blocks = config.kv_cache_blocks or max(
        2, int(config.kv_cache_gb * 2**30) // ModelRunner.kv_bytes_per_block(model, config.block_size))
    runner = ModelRunner(model, num_blocks, config.block_size, max_model_len, config.compile, loaded.backend) \
        if group is None else leader_runner(group, config, loaded, num_blocks, max_model_len)
    decoder = build_decoder(config.spec, PlainDecoder(runner), model, loaded.name, max_model_len, config.max_num_seqs,
                            config.compile)
    return EngineComponents(loaded.name, loaded.tokenizer, loaded.weight_format, loaded.backend, model,
                            max_model_len, num_blocks, runner, decoder)
