"""Draft heads on disk in the EAGLE-3 reference layout: `config.json` + `model.safetensors`.

The config carries the Hugging Face Llama fields that the reference, vLLM and SGLang read
(`architectures: LlamaForCausalLMEagle3`, `draft_vocab_size`, `target_hidden_size`, the fused layer ids
both at top level and under `eagle_config`), plus kilotok's own record under the `kilotok` key: the
target fingerprint and training statistics. Tensors use the reference names; `d2t` holds offsets
(target id = draft id + d2t[draft id]) and `t2d` marks which target ids are in the draft vocabulary.
The target's embedding is shared at run time and is not stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kilotok.errors import ModelFormatError, ModelNotFoundError
from kilotok.layers.rotary import RopeScaling
from kilotok.models.config import ModelConfig
from kilotok.speculative.eagle3.config import Eagle3Config, TargetFingerprint, default_aux_layer_ids
from kilotok.speculative.eagle3.model import Eagle3DraftModel

ARCHITECTURE = "LlamaForCausalLMEagle3"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
DRAFTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "drafts"
SHIPPED_DRAFTS = {"smollm2-135m": "smollm2-135m-eagle3", "SmolLM2-135M-Instruct.Q4_1.gguf": "smollm2-135m-eagle3"}
REDO = "copy the head folder again, or train a head with `kilotok train-draft`"
SIZE_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
               "vocab_size", "draft_vocab_size", "max_position_embeddings")


def default_draft_path(model_name: str) -> Path | None:
    """The head shipped with kilotok for a model name (alias or GGUF file name), if there is one."""
    folder = SHIPPED_DRAFTS.get(model_name) or SHIPPED_DRAFTS.get(Path(model_name).name)
    if folder is None or not (DRAFTS_DIR / folder / CONFIG_FILE).is_file():
        return None
    return DRAFTS_DIR / folder


def save_eagle3(model: Eagle3DraftModel, folder: str | Path, training: dict[str, Any] | None = None,
                dtype: torch.dtype = torch.float16) -> Path:
    """Write the head (floating tensors in `dtype`) and its config; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.to(dtype) if t.is_floating_point() else t).detach().contiguous().cpu()
        for name, t in model.state_dict().items() if not name.startswith("embed_tokens.")
    }
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = config_to_json(model.config, dtype)
    if training:
        config["kilotok"]["training"] = training
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_training_record(folder: str | Path) -> dict[str, Any]:
    """kilotok's training statistics saved with a head (empty for heads trained elsewhere)."""
    return _read_config(Path(folder)).get("kilotok", {}).get("training", {})


def load_eagle3(folder: str | Path, target_config: ModelConfig, target_embedding: torch.Tensor) -> Eagle3DraftModel:
    """Load a head for `target_config`; raises ModelFormatError listing every mismatch with the target."""
    folder = Path(folder)
    raw = _read_config(folder)
    try:
        config = config_from_json(raw, target_config)
    except ModelFormatError as error:
        raise ModelFormatError(f"{folder / CONFIG_FILE}: {error}; fix the field, or {REDO}") from error
    problems = config.mismatches(target_config)
    if tuple(target_embedding.shape) != (target_config.vocab_size, target_config.hidden_size):
        problems.append(f"target embedding has shape {tuple(target_embedding.shape)}, expected "
                        f"({target_config.vocab_size}, {target_config.hidden_size})")
    if problems:
        raise ModelFormatError(f"draft head {folder} does not fit this target model: " + "; ".join(problems)
                               + ". Train a head for this model with `kilotok train-draft`.")
    model = Eagle3DraftModel(config, target_embedding)
    weights_path = folder / WEIGHTS_FILE
    _load_tensors(model, _read_weights(weights_path), weights_path)
    return model.eval()


def config_to_json(config: Eagle3Config, dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    aux_ids = list(config.aux_layer_ids)
    scaling = config.rope_scaling
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "target_hidden_size": config.target.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if scaling is None else {"rope_type": "llama3", **scaling.__dict__},
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.target_vocab_size,
        "draft_vocab_size": config.draft_vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "eagle_aux_hidden_state_layer_ids": aux_ids,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": aux_ids, "use_aux_hidden_state": True},
        "kilotok": {"format_version": FORMAT_VERSION, "aux_layer_ids": aux_ids,
                    "target": dict(config.target.__dict__)},
    }


def config_from_json(raw: dict[str, Any], target: ModelConfig) -> Eagle3Config:
    """Heads trained elsewhere have no `kilotok` record: their target is taken from the reference fields."""
    if ARCHITECTURE not in raw.get("architectures", []):
        raise ModelFormatError(f"not an EAGLE-3 head: architectures is {raw.get('architectures')}, "
                               f"expected [{ARCHITECTURE!r}]")
    for name in SIZE_FIELDS:
        value = raw.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelFormatError(f"EAGLE-3 config field {name!r} must be a positive integer, got {value!r}")
    try:
        ours = raw.get("kilotok", {})
        fingerprint = TargetFingerprint(**ours["target"]) if "target" in ours else TargetFingerprint(
            raw.get("model_type", "llama"), raw.get("target_hidden_size", raw["hidden_size"]), raw["vocab_size"],
            target.num_layers)
        aux_ids = (ours.get("aux_layer_ids") or raw.get("eagle_aux_hidden_state_layer_ids")
                   or raw.get("eagle_config", {}).get("eagle_aux_hidden_state_layer_ids")
                   or default_aux_layer_ids(fingerprint.num_layers))
        num_heads = raw["num_attention_heads"]
        return Eagle3Config(
            hidden_size=raw["hidden_size"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads", num_heads),
            head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
            intermediate_size=raw["intermediate_size"],
            draft_vocab_size=raw.get("draft_vocab_size") or raw["vocab_size"],
            target_vocab_size=raw["vocab_size"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=raw.get("rope_theta", 10000.0),
            rope_scaling=_rope_scaling(raw.get("rope_scaling")),
            max_position_embeddings=raw.get("max_position_embeddings", target.max_position_embeddings),
            aux_layer_ids=tuple(int(i) for i in aux_ids),
            target=fingerprint,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFormatError(f"EAGLE-3 config is missing or has a malformed field: {error}") from error


def _rope_scaling(raw: dict[str, Any] | None) -> RopeScaling | None:
    if raw is None:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind != "llama3":
        raise ModelFormatError(f"draft head rope_scaling type {kind!r} is not supported (only llama3)")
    return RopeScaling(raw["factor"], raw["low_freq_factor"], raw["high_freq_factor"],
                       raw["original_max_position_embeddings"])


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        problem = f"{CONFIG_FILE} is missing" if folder.is_dir() else "the folder does not exist"
        raise ModelNotFoundError(f"no draft head at {folder}: {problem}; pass --draft an EAGLE-3 head folder "
                                 f"({CONFIG_FILE} and {WEIGHTS_FILE}), or train one with `kilotok train-draft`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{path} is not readable JSON ({error}); {REDO}") from error
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{path} should hold a JSON object, not {type(raw).__name__}; {REDO}")
    return raw


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFormatError(f"draft head {path.parent} has no {WEIGHTS_FILE}; {REDO}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelFormatError(f"{path} is not a readable safetensors file ({error}): it is truncated or "
                               f"corrupt; {REDO}") from error


def _load_tensors(model: Eagle3DraftModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {name: t for name, t in model.state_dict().items() if not name.startswith("embed_tokens.")}
    problems = _tensor_problems(expected, tensors, model.config.target_vocab_size)
    if problems:
        raise ModelFormatError(f"{path} does not hold the tensors its {CONFIG_FILE} describes: "
                               f"{'; '.join(problems)}; {REDO}")
    with torch.no_grad():
        for name, target_tensor in expected.items():
            target_tensor.copy_(tensors[name].to(target_tensor.dtype))


def _tensor_problems(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                     target_vocab_size: int) -> list[str]:
    """Missing tensors, wrong shapes, integers where weights belong (or floats for the vocabulary map), and
    draft ids mapped outside the target's vocabulary."""
    problems = [f"{name} is missing" for name in sorted(set(expected) - set(tensors))]
    for name, want in expected.items():
        got = tensors.get(name)
        if got is None:
            continue
        if got.shape != want.shape:
            problems.append(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif got.is_floating_point() != want.is_floating_point():
            problems.append(f"{name} is {str(got.dtype).removeprefix('torch.')}, expected "
                            f"{'floating-point' if want.is_floating_point() else 'integer'} values")
    d2t = tensors.get("d2t")
    if not problems and d2t is not None:
        target_ids = torch.arange(len(d2t)) + d2t
        outside = ((target_ids < 0) | (target_ids >= target_vocab_size)).nonzero().flatten().tolist()
        if outside:
            problems.append(f"d2t maps draft ids {outside[:5]} outside the target vocabulary [0, "
                            f"{target_vocab_size})")
    return problems
