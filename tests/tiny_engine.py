"""A whole engine around a small random Llama (transformers' own, so it is also the oracle), for the
engine and speculative decoding tests: fast enough to sample thousands of requests. Also the oracles
those tests compare with (greedy continuations, exact sampling distributions) and spies that record what
the engine ran."""

from __future__ import annotations

import random

import pytest
import torch

from kilotok import SamplingParams
from kilotok.llm import LLM
from kilotok.loader.checkpoint import Checkpoint
from kilotok.models import builder
from kilotok.models.registry import model_config
from kilotok.speculative.policy import SpecPolicy, TreeShape
from kilotok.speculative.tree import DraftTree, DraftTrees

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

    def propose(self, seqs, shape: TreeShape) -> DraftTrees:
        max_nodes = min(self.max_nodes, shape.tree_size)
        return DraftTrees.from_trees([self._tree(random.Random(f"{self.seed}:{seq.token_ids}"), max_nodes)
                                      for seq in seqs])

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

    def release(self, seq) -> None:
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


@torch.no_grad()
def greedy_with_logits(reference, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], torch.Tensor]:
    """The greedy continuation of `prompt_ids` and the logits the first token was picked from, from
    full (uncached) forwards of the reference model."""
    ids = list(prompt_ids)
    first_logits = None
    for _ in range(max_tokens):
        logits = reference(torch.tensor([ids])).logits[0, -1]
        first_logits = logits if first_logits is None else first_logits
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):], first_logits


def random_prompt(length: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def record_calls(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name so every call's positional arguments and result are appended to the returned list."""
    calls = []
    original = getattr(owner, name)

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(owner, name, recorded)
    return calls


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def mixed_prompts(count: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for index in range(count):
        length = 1 + index % 13
        # Half the prompts repeat a short pattern, so prompt lookup finds matches and gets accepted.
        if index % 2:
            pattern = torch.randint(0, EOS, (3,), generator=generator).tolist()
            ids = (pattern * length)[:length]
        else:
            ids = torch.randint(0, EOS, (length,), generator=generator).tolist()
        prompts.append({"prompt_token_ids": ids})
    return prompts


def mixed_greedy_params(count: int) -> list[SamplingParams]:
    lengths = (1, 2, 5, 17, 40)
    return [SamplingParams(temperature=0.0, max_tokens=lengths[i % len(lengths)], ignore_eos=bool(i % 3),
                           stop=["<3><3><3>"] if i % 4 == 0 else None)
            for i in range(count)]


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The target distribution, written out directly: temperature, top-k, then top-p on the rest."""
    scaled = logits.double() / temperature
    if top_k:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(dim=-1)
    if top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)
        drop = (ranked.cumsum(dim=-1) - ranked) >= top_p
        probs = probs.scatter(-1, order, ranked.masked_fill(drop, 0.0))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def first_three_token_counts(outputs) -> torch.Tensor:
    """How often each (token 1, token 2, token 3) continuation was sampled: [VOCAB, VOCAB, VOCAB]."""
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for output in outputs:
        counts[tuple(output.token_ids[:3])] += 1
    return counts


def exact_joint(reference, prompt: list[int], settings: dict) -> torch.Tensor:
    """P(x1, x2, x3 | prompt) [V, V, V] from transformers' logits over every two-token continuation."""
    pairs = torch.cartesian_prod(torch.arange(VOCAB), torch.arange(VOCAB))
    inputs = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
    with torch.no_grad():
        logits = reference(inputs).logits
    n = len(prompt)
    first = filtered_probs(logits[0, n - 1], **settings)
    second = filtered_probs(logits[::VOCAB, n], **settings)
    third = filtered_probs(logits[:, n + 1], **settings).view(VOCAB, VOCAB, VOCAB)
    return first[:, None, None] * second[:, :, None] * third


def chi_square_p_value(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Cells expected fewer than 5 times are pooled into one, as the chi-square approximation needs."""
    total = observed.sum()
    expected = expected_probs.flatten() * total
    observed = observed.flatten().double()
    small = expected < 5
    bins_observed = torch.cat([observed[~small], observed[small].sum().view(1)])
    bins_expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    statistic = ((bins_observed - bins_expected) ** 2 / bins_expected.clamp(min=1e-12)).sum()
    degrees = len(bins_observed) - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2), statistic / 2))
