"""A whole engine around a small random Llama (transformers' own, so it is also the oracle), for the
speculative decoding tests: fast enough to sample thousands of requests."""

from __future__ import annotations

import random

import pytest
import torch

from kilotok.llm import LLM
from kilotok.loader.checkpoint import Checkpoint
from kilotok.models import builder
from kilotok.models.registry import model_config
from kilotok.speculative.policy import SpecPolicy, TreeShape
from kilotok.speculative.tree import DraftTree

transformers = pytest.importorskip("transformers")

VOCAB = 8
EOS = VOCAB - 1


class StubTokenizer:
    """Only what the output processor needs: EOS ids and a decode that keeps every token visible."""

    eos_token_ids = frozenset({EOS})

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids)


def random_reference(vocab: int = VOCAB, seed: int = 0, sharpness: float = 20.0):
    """transformers' Llama with random weights; the head is scaled so distributions are far from
    uniform (a near-uniform target would hide a wrong acceptance rule)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_theta=1000.0,
    )
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        reference.lm_head.weight.mul_(sharpness)
    return reference


def tiny_llm(monkeypatch: pytest.MonkeyPatch, reference, **settings) -> LLM:
    weights = {name: t.clone() for name, t in reference.state_dict().items()}
    checkpoint = Checkpoint(reference.config.to_dict(), weights, tokenizer=StubTokenizer(), path=None,
                            name="tiny-random")
    monkeypatch.setattr(builder, "load_checkpoint", lambda model, progress: checkpoint)
    defaults = {"dtype": "fp32", "compile": False, "progress": False, "kv_cache_blocks": 512, "block_size": 4}
    llm = LLM("tiny-random", **(defaults | settings))
    if llm.engine.config.spec.enabled:
        # Draft at every batch size: the statistical tests verify hundreds of sequences in one batch.
        spec = llm.engine.config.spec
        llm.engine.decoder.policy = SpecPolicy.fixed(TreeShape(spec.depth, spec.max_draft_nodes))
    return llm


class RandomTreeDrafter:
    """A deliberately bad drafter: random tokens in a random tree (up to three children per node), so
    that verification sees every mix of acceptance and rejection. The randomness is a fixed function of
    the context, as any real drafter's proposals are: proposals drawn afresh for every request would
    average a biased acceptance rule back to the right marginals and hide it."""

    aux_layer_ids: tuple[int, ...] = ()

    def __init__(self, vocab: int, max_nodes: int, seed: int) -> None:
        self.vocab = vocab
        self.max_nodes = max_nodes
        self.seed = seed

    def propose(self, seqs, shape: TreeShape) -> list[DraftTree]:
        max_nodes = min(self.max_nodes, shape.tree_size)
        return [self._tree(random.Random(f"{self.seed}:{seq.token_ids}"), max_nodes) for seq in seqs]

    def _tree(self, rng: random.Random, max_nodes: int) -> DraftTree:
        """Up to three distinct random children per node, breadth first, until max_nodes."""
        tokens: list[int] = []
        parents: list[int] = []
        frontier = [-1]
        while frontier and len(tokens) < max_nodes:
            parent = frontier.pop(0)
            width = min(rng.randint(1, 3), max_nodes - len(tokens))
            for token in rng.sample(range(self.vocab), width):
                frontier.append(len(tokens))
                tokens.append(token)
                parents.append(parent)
        return DraftTree(tokens, parents)

    def prefilled(self, seq, start, features, next_token) -> None:
        """Proposals depend on the context alone: nothing to keep."""

    def verified(self, seq, tokens, features) -> None:
        """As `prefilled`."""


def use_drafter(llm: LLM, drafter) -> None:
    llm.engine.decoder.drafter = drafter


def random_head_folder(reference, folder, draft_vocab: int = VOCAB - 2, seed: int = 0):
    """A randomly initialised EAGLE-3 head for the tiny target, saved as kilotok ships heads. The draft
    vocabulary leaves tokens out, so the draft-to-target id map is exercised."""
    from kilotok.speculative.eagle3.checkpoint import save_eagle3
    from kilotok.speculative.eagle3.config import Eagle3Config
    from kilotok.speculative.eagle3.model import Eagle3DraftModel

    torch.manual_seed(seed)
    target_config = model_config(reference.config.to_dict())
    config = Eagle3Config.for_target(target_config, draft_vocab, aux_layer_ids=(0, 1, 1))
    head = Eagle3DraftModel(config, reference.model.embed_tokens.weight.detach().clone())
    with torch.no_grad():
        # Sharp attention and a sharp head, so a wrong position or mask changes which token wins.
        head.lm_head.weight.mul_(20.0)
        head.midlayer.self_attn.q_proj.weight.mul_(8.0)
        head.midlayer.self_attn.k_proj.weight.mul_(8.0)
    head.set_draft_vocab(torch.tensor([0, 2, 3, 4, 5, 6][:draft_vocab]))
    return save_eagle3(head, folder, dtype=torch.float32)
