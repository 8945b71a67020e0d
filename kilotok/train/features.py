"""Target hidden states for prompt + response: the three fused layers and the final normed state.

The target runs over a fresh single-block KV cache per sequence (no engine, no paging across requests),
with `aux_layers` given so one forward returns what the draft reads. The final hidden state is kept
instead of the logits: the soft labels over the draft vocabulary are recomputed from it with the target's
head rows at training time, which stores d numbers per token instead of draft_vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.models.causal_lm import CausalLM

STORAGE_DTYPE = torch.bfloat16


@dataclass
class FeatureSet:
    """Sequences stored back to back; sequence i is rows offsets[i]:offsets[i+1]."""

    token_ids: torch.Tensor  # [N] int64
    aux_hidden: torch.Tensor  # [N, 3d], the target layers in aux_layer_ids order
    final_hidden: torch.Tensor  # [N, d], after the target's final norm
    offsets: torch.Tensor  # [S + 1] int64
    prompt_lens: torch.Tensor  # [S] int64

    def __len__(self) -> int:
        return self.prompt_lens.numel()

    def sequence(self, index: int) -> tuple[slice, int]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return slice(start, end), int(self.prompt_lens[index])

    @property
    def num_response_tokens(self) -> int:
        lengths = self.offsets[1:] - self.offsets[:-1]
        return int((lengths - self.prompt_lens).sum())

    def save(self, path: Path) -> None:
        save_file({name: getattr(self, name).contiguous() for name in self.__dataclass_fields__}, str(path))

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        return cls(**load_file(str(path)))


@torch.inference_mode()
def target_features(model: CausalLM, token_ids: list[int],
                    aux_layer_ids: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence through the target, on the target's device: ([T, 3d] fused-layer inputs, [T, d] final
    normed hidden)."""
    length = len(token_ids)
    config = model.config
    device = model.embed_tokens.weight.device
    model.allocate_kv_cache((1, length, config.num_kv_heads, config.head_dim), device)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(length, device=device),
        block_tables=torch.zeros(1, 1, dtype=torch.int32, device=device),
        context_lens=torch.tensor([length], dtype=torch.int32, device=device),
        query_start_loc=torch.tensor([0, length], dtype=torch.int32, device=device),
    )
    final, aux = model(torch.tensor(token_ids, device=device), torch.arange(length, device=device), meta,
                       aux_layers=tuple(aux_layer_ids))
    return torch.cat(aux, dim=-1), final


def build_feature_set(model: CausalLM, records: list[dict], aux_layer_ids: tuple[int, ...],
                      desc: str = "target features") -> FeatureSet:
    tokens, aux_parts, final_parts, offsets, prompt_lens = [], [], [], [0], []
    for record in tqdm(records, desc=desc):
        ids = record["prompt_token_ids"] + record["response_token_ids"]
        aux, final = target_features(model, ids, aux_layer_ids)
        tokens.append(torch.tensor(ids))
        aux_parts.append(aux.to(STORAGE_DTYPE).cpu())
        final_parts.append(final.to(STORAGE_DTYPE).cpu())
        offsets.append(offsets[-1] + len(ids))
        prompt_lens.append(len(record["prompt_token_ids"]))
    return FeatureSet(torch.cat(tokens), torch.cat(aux_parts), torch.cat(final_parts), torch.tensor(offsets),
                      torch.tensor(prompt_lens))


def draft_vocabulary(records: list[dict], draft_vocab_size: int, target_vocab_size: int) -> torch.Tensor:
    """The target ids the draft may propose: the most frequent in the target's own answers, then in the
    prompts, then the lowest ids, so the size is exact even on tiny data. Sorted ascending."""
    response_counts = torch.zeros(target_vocab_size, dtype=torch.long)
    prompt_counts = torch.zeros(target_vocab_size, dtype=torch.long)
    for record in records:
        for counts, key in ((response_counts, "response_token_ids"), (prompt_counts, "prompt_token_ids")):
            ids = torch.tensor(record[key], dtype=torch.long)
            counts += torch.bincount(ids[ids < target_vocab_size], minlength=target_vocab_size)
    # Responses dominate, prompts break ties, and a stable sort puts lower ids first among equals.
    score = response_counts * (int(prompt_counts.max()) + 1) + prompt_counts
    chosen = score.sort(descending=True, stable=True).indices[:draft_vocab_size]
    return chosen.sort().values
