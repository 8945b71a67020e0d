"""A rank's model: the checkpoint is read, cut down to the rank's part (parallel/shard.py), built by the
one builder with the rank's local config, and wrapped with its communication (parallel/modules.py)."""

from __future__ import annotations

from dataclasses import replace

from kilotok.loader.tensor_check import check_tensors as find_damaged_tensors
from kilotok.models.builder import LoadedModel, build_model
from kilotok.models.registry import FAMILIES, load_checkpoint, model_config
from kilotok.parallel.comm import Communicator
from kilotok.parallel.layout import ParallelConfig, rank_layout
from kilotok.parallel.modules import parallelize
from kilotok.parallel.shard import local_config, shard_weights
from kilotok.quant.formats import WeightFormat, resolve_weight_format


def load_model_shard(name_or_path: str, dtype: str | WeightFormat, parallel: ParallelConfig, comm: Communicator,
                     progress: bool = True, check_tensors: bool = False) -> LoadedModel:
    """`load_model` for one rank: the model's config says how it splits (a clear error where it does not
    split evenly); the rank builds and keeps only its slices."""
    checkpoint = load_checkpoint(name_or_path, progress and comm.is_leader)
    if check_tensors:
        find_damaged_tensors(checkpoint)
    fmt = resolve_weight_format(dtype, checkpoint.weights)
    config = model_config(checkpoint.config)
    layout = rank_layout(config, parallel, comm.rank)
    weights = shard_weights(checkpoint.weights, config, FAMILIES[config.architecture], layout)
    shard = replace(checkpoint, weights=weights)
    del checkpoint
    model = build_model(shard, fmt, progress and comm.is_leader, config=local_config(config, layout))
    parallelize(model, config.moe, layout, comm)
    return LoadedModel(shard.name, shard.tokenizer, fmt, model.to(comm.device))
