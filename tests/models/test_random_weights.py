"""Random-weight models (`random:NAME[:LAYERS]`): drawn on demand, the same on every draw, never zero, and
built through the ordinary builder, Llama 4's experts kept in FP8 as drawn."""

from __future__ import annotations

import pytest
import torch

from kilotok.errors import ModelNotFoundError
from kilotok.layers.moe import SparseMoe
from kilotok.loader.fp8_weight import Fp8Weight
from kilotok.models.builder import build_model
from kilotok.models.family import expected_shapes
from kilotok.models.random_weights import RANDOM_MODELS, random_model_config
from kilotok.models.registry import FAMILIES, load_checkpoint, model_config


def test_every_tensor_has_its_shape_is_never_zero_and_draws_the_same_twice():
    checkpoint = load_checkpoint("random:tiny-llama4")
    config = model_config(checkpoint.config)
    shapes = expected_shapes(config, FAMILIES[config.architecture])
    assert set(checkpoint.weights) == set(shapes)
    for name, shape in shapes.items():
        weight = checkpoint.weights[name]
        values = weight.dequantize() if isinstance(weight, Fp8Weight) else weight.float()
        again = checkpoint.weights[name]
        assert torch.equal(values, again.dequantize() if isinstance(again, Fp8Weight) else again.float())
        assert (values != 0).float().mean() > 0.9, name
        if isinstance(weight, Fp8Weight):  # fused experts, turned to nn.Linear layout [E, out, in]
            assert name.endswith(("experts.gate_up_proj", "experts.down_proj"))
            assert weight.shape == (shape[0], shape[2], shape[1])
        else:
            assert tuple(weight.shape) == shape, name
    # Linear weights are N(0, 1/in): a product keeps its input's scale.
    q = checkpoint.weights["model.layers.0.self_attn.q_proj.weight"].float()
    assert 0.8 < q.std().item() * q.shape[1] ** 0.5 < 1.2


def test_names_choose_the_shape_and_layer_count_and_bad_names_say_what_exists():
    assert random_model_config("random:llama4-maverick:12")["num_hidden_layers"] == 12
    assert random_model_config("random:llama-3.1-8b")["hidden_size"] == 4096
    assert random_model_config("random:tiny-llama:99")["num_hidden_layers"] == RANDOM_MODELS["tiny-llama"][
        "num_hidden_layers"]
    for bad in ("random:nope", "random:tiny-llama:0", "random:tiny-llama:x"):
        with pytest.raises(ModelNotFoundError, match="tiny-llama"):
            random_model_config(bad)


def _experts(model) -> list[SparseMoe]:
    return [m for m in model.modules() if isinstance(m, SparseMoe)]


@pytest.mark.parametrize("dtype", ["fp8-stored", "fp8-block"])
def test_stored_fp8_experts_are_kept_as_drawn(dtype):
    checkpoint = load_checkpoint("random:tiny-llama4")
    model = build_model(checkpoint, dtype, progress=False)
    (first, second) = _experts(model)
    stored = checkpoint.weights["model.layers.1.feed_forward.experts.gate_up_proj"]
    assert torch.equal(first.gate_up.view(torch.uint8), stored.data.view(torch.uint8))
    assert torch.equal(first.gate_up_scale, stored.scale)


def test_another_fp8_scheme_requantizes_the_experts_and_a_float_format_widens_them():
    checkpoint = load_checkpoint("random:tiny-llama4")
    stored = checkpoint.weights["model.layers.1.feed_forward.experts.down_proj"]
    channel = _experts(build_model(checkpoint, "fp8-channel", progress=False))[0]
    assert channel.down_scale.shape == (*stored.shape[:2], 1)
    floats = _experts(build_model(checkpoint, "bf16", progress=False))[0]
    assert floats.down.dtype == torch.bfloat16
    torch.testing.assert_close(floats.down.float(), stored.dequantize(), rtol=1e-2, atol=0)
