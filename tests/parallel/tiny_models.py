"""Random small models saved as Hugging Face folders for the parallel tests, and greedy runs of them at a
given parallel layout (spawned ranks, gloo)."""

from __future__ import annotations

from pathlib import Path

import torch

from kilotok.llm import LLM
from kilotok.sampling_params import SamplingParams
from tests.models.moe_reference import perturb, save_folder

PROMPTS = [[3, 4, 5, 6, 3, 4, 5, 6, 3, 4], [9, 2, 11, 9, 2, 11, 9, 2, 11, 7, 8, 9, 10], [5, 13]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def llama4_folder(folder: Path) -> Path:
    """Llama 4 with MoE and dense layers, a shared expert, chunked and NoPE attention; a sharp head over a
    small vocabulary so greedy continuations repeat (n-gram drafts get accepted)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(
        vocab_size=16, hidden_size=32, intermediate_size=32, intermediate_size_mlp=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4, interleave_moe_layer_step=2,
        attention_chunk_size=8, floor_scale=4, max_position_embeddings=128)
    return save_folder(perturb(transformers.Llama4ForCausalLM(config), 0, {"router": 5.0, "lm_head": 20.0}), folder)


def eagle3_head(target: Path, folder: Path) -> Path:
    """An untrained EAGLE-3 head for a target, started as train-draft starts one (from the target's last
    layers and head, so it sometimes proposes what the target says)."""
    from kilotok.models.registry import load_checkpoint, model_config
    from kilotok.speculative.eagle3.checkpoint import save_eagle3
    from kilotok.speculative.eagle3.config import Eagle3Config
    from kilotok.speculative.eagle3.model import Eagle3DraftModel
    from kilotok.train.init import init_from_target, target_head_weight

    checkpoint = load_checkpoint(str(target), progress=False)
    config = Eagle3Config.for_target(model_config(checkpoint.config), 16, aux_layer_ids=(0, 2, 3))
    head = Eagle3DraftModel(config, checkpoint.weights["model.embed_tokens.weight"])
    init_from_target(head, checkpoint, target_head_weight(checkpoint), torch.Generator().manual_seed(1))
    return save_eagle3(head, folder, dtype=torch.float32)


def mixtral_folder(folder: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=96, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, num_local_experts=4,
        num_experts_per_tok=2)
    return save_folder(perturb(transformers.MixtralForCausalLM(config), 0, {"gate.weight": 5.0}), folder)


def llama_folder(folder: Path) -> Path:
    """6 query heads over 3 KV heads (tensor parallel 3 splits both, 6 replicates KV heads)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, max_position_embeddings=256, tie_word_embeddings=False)
    return save_folder(perturb(transformers.LlamaForCausalLM(config), 0, {"lm_head": 10.0}), folder)


def greedy_ids(folder: Path, prompts: list[list[int]] = PROMPTS, **settings) -> list[list[int]]:
    with LLM(str(folder), dtype="fp32", compile=False, progress=False, block_size=4, **settings) as llm:
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY)
    return [list(output.token_ids) for output in outputs]
