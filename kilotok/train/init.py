"""Start a fresh head from the target's own weights where the shapes allow.

The draft layer predicts from a late-layer feature, which is what the target's last decoder layer does,
so that layer's attention (on the feature half of the 2d input), MLP and norms are a far better start than
noise (a mixture-of-experts target gives the MLP of its last dense layer, if it has one); the LM head starts
as the target's head rows for the draft vocabulary, and `fc` starts by passing the highest fused layer
through. This matters when the data is small (see the field notes).
"""

from __future__ import annotations

import torch

from kilotok.loader.checkpoint import Checkpoint
from kilotok.loader.tensor import QuantizedTensor
from kilotok.models.family import last_dense_mlp
from kilotok.models.registry import FAMILIES, model_config
from kilotok.speculative.eagle3.model import Eagle3DraftModel

EMBEDDING_HALF_STD = 0.02


def dense_weight(checkpoint: Checkpoint, name: str) -> torch.Tensor:
    weight = checkpoint.weights[name]
    return weight.dequantize().float() if isinstance(weight, QuantizedTensor) else weight.float()


def target_head_weight(checkpoint: Checkpoint) -> torch.Tensor:
    """[vocab, d] the target's output head (the embedding when the two are tied)."""
    name = "lm_head.weight" if "lm_head.weight" in checkpoint.weights else "model.embed_tokens.weight"
    return dense_weight(checkpoint, name)


@torch.no_grad()
def init_from_target(draft: Eagle3DraftModel, checkpoint: Checkpoint, head_weight: torch.Tensor,
                     generator: torch.Generator) -> None:
    d = draft.config.hidden_size
    layer = draft.midlayer
    config = model_config(checkpoint.config)
    prefix = f"model.layers.{config.num_layers - 1}."
    for name in ("q_proj", "k_proj", "v_proj"):
        projection = getattr(layer.self_attn, name).weight
        projection[:, :d] = torch.randn(projection.shape[0], d, generator=generator) * EMBEDDING_HALF_STD
        projection[:, d:] = dense_weight(checkpoint, f"{prefix}self_attn.{name}.weight")
    copies = {
        layer.self_attn.o_proj.weight: "self_attn.o_proj.weight",
        layer.hidden_norm.weight: "input_layernorm.weight",
        layer.input_layernorm.weight: "input_layernorm.weight",
        layer.post_attention_layernorm.weight: "post_attention_layernorm.weight",
    }
    for parameter, name in copies.items():
        parameter.copy_(dense_weight(checkpoint, prefix + name))
    mlp = last_dense_mlp(config, FAMILIES[config.architecture])
    if mlp is not None:
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer.mlp, name).weight.copy_(dense_weight(checkpoint, f"{mlp}{name}.weight"))
    draft.norm.weight.copy_(dense_weight(checkpoint, "model.norm.weight"))
    draft.lm_head.weight.copy_(head_weight[draft.draft_vocab_target_ids()])
    draft.fc.weight.zero_()
    draft.fc.weight[:, 2 * d :] = torch.eye(d)
