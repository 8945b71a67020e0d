"""The draft head against plain math: masks, cache continuation, fusion, the draft-to-target map."""

from __future__ import annotations

import pytest
import torch

from kilotok.speculative.eagle3 import Eagle3Config, default_aux_layer_ids
from tests.speculative.eagle3.heads import TARGET, causal, make_draft


def test_default_aux_layers_are_low_middle_high():
    assert default_aux_layer_ids(30) == (2, 15, 27)
    assert Eagle3Config.for_target(TARGET, 40).aux_layer_ids == (2, 4, 5)


def test_fuse_maps_three_layers_to_one_width():
    model = make_draft()
    aux = torch.randn(2, 5, 96)
    fused = model.fuse(aux)
    assert fused.shape == (2, 5, 32)
    torch.testing.assert_close(fused, aux @ model.fc.weight.T)


def test_output_shapes():
    model = make_draft()
    out = model(torch.randint(0, 97, (2, 5)), torch.randn(2, 5, 32), torch.arange(5).expand(2, 5), None, None,
                causal(5, 2))
    assert out.hidden.shape == (2, 5, 32)
    assert out.logits.shape == (2, 5, 40) and out.logits.dtype == torch.float32
    assert out.k.shape == out.v.shape == (2, 5, 2, 8)


@torch.no_grad()
def test_masked_batch_equals_separate_prefix_forwards():
    """A tree-shaped mask: each query must equal a plain causal forward over exactly its visible keys."""
    model = make_draft()
    ids, hidden = torch.randint(0, 97, (1, 5)), torch.randn(1, 5, 32)
    positions = torch.tensor([[0, 1, 2, 2, 3]])
    parents = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 3], 4: [0, 1, 3, 4]}  # node 3 is a sibling of 2
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    for node, visible in parents.items():
        mask[0, node, visible] = True
    batched = model(ids, hidden, positions, None, None, mask)
    for node, visible in parents.items():
        alone = model(ids[:, visible], hidden[:, visible], positions[:, visible], None, None, causal(len(visible)))
        torch.testing.assert_close(batched.logits[0, node], alone.logits[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.hidden[0, node], alone.hidden[0, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_past_kv_continuation_equals_one_full_forward():
    model = make_draft()
    ids, hidden, positions = torch.randint(0, 97, (2, 7)), torch.randn(2, 7, 32), torch.arange(7).expand(2, 7)
    full = model(ids, hidden, positions, None, None, causal(7, 2))
    first = model(ids[:, :4], hidden[:, :4], positions[:, :4], None, None, causal(4, 2))
    rest = model(ids[:, 4:], hidden[:, 4:], positions[:, 4:], first.k, first.v, causal(7, 2)[:, 4:])
    torch.testing.assert_close(torch.cat((first.logits, rest.logits), 1), full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat((first.k, rest.k), 1), full.k)


@torch.no_grad()
def test_one_token_matches_hand_computed_layer():
    """With a single key, attention returns v: the layer reduces to matrix products we can write out."""
    model = make_draft()
    layer = model.midlayer
    token, feature = torch.tensor([[5]]), torch.randn(1, 1, 32)
    out = model(token, feature, torch.zeros(1, 1, dtype=torch.long), None, None, causal(1))

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + TARGET.rms_norm_eps)

    x = torch.cat((rms(model.embed_tokens.weight[5], layer.input_layernorm.weight),
                   rms(feature[0, 0], layer.hidden_norm.weight)))
    v = (layer.self_attn.v_proj.weight @ x).view(2, 8)
    attended = v.repeat_interleave(2, dim=0).reshape(-1)  # each KV head serves 2 query heads
    h = feature[0, 0] + layer.self_attn.o_proj.weight @ attended
    mlp = layer.mlp
    normed = rms(h, layer.post_attention_layernorm.weight)
    h = h + mlp.down_proj.weight @ (torch.nn.functional.silu(mlp.gate_proj.weight @ normed)
                                    * (mlp.up_proj.weight @ normed))
    torch.testing.assert_close(out.hidden[0, 0], h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits[0, 0], model.lm_head.weight @ rms(h, model.norm.weight),
                               atol=1e-5, rtol=1e-5)


def test_draft_to_target_map_uses_reference_offsets():
    model = make_draft(draft_vocab=4)
    target_ids = torch.tensor([90, 3, 17, 42])
    model.set_draft_vocab(target_ids)
    assert model.d2t.tolist() == [3 - 0, 17 - 1, 42 - 2, 90 - 3]
    assert model.draft_to_target(torch.tensor([0, 3, 1])).tolist() == [3, 90, 17]
    assert model.t2d.nonzero().flatten().tolist() == [3, 17, 42, 90]


def test_draft_vocab_of_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="need 4 draft tokens"):
        make_draft(draft_vocab=4).set_draft_vocab(torch.tensor([1, 2]))
