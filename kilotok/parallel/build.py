"""A rank's model: the checkpoint is read, cut down to the rank's part (parallel/shard.py), built by the
one builder with the rank's local config, and wrapped with its communication (parallel/modules.py)."""

from __future__ import annotations

from dataclasses import replace

from kilotok.kernels.backend import KernelBackend
from kilotok.loader.tensor import as_float
from kilotok.loader.tensor_check import check_tensors as find_damaged_tensors
from kilotok.models.builder import LoadedModel, build_model
from kilotok.models.registry import FAMILIES, load_checkpoint, model_config
from kilotok.parallel.comm import Communicator
from kilotok.parallel.layout import ParallelConfig, rank_layout
from kilotok.parallel.modules import parallelize
from kilotok.parallel.shard import local_config, shard_weights
from kilotok.quant.formats import WeightFormat, resolve_weight_format


def load_model_shard(name_or_path: str, dtype: str | WeightFormat, parallel: ParallelConfig, comm: Communicator,
                     progress: bool = True, check_tensors: bool = False,
                     whole_embedding_on_leader: bool = False) -> LoadedModel:
    """`load_model` for one rank: the model's config says how it splits (a clear error where it does not
    split evenly); the rank builds and keeps only its slices, except that with `whole_embedding_on_leader`
    rank 0 keeps the whole embedding table (for a draft model that embeds with it)."""
    checkpoint = load_checkpoint(name_or_path, progress and comm.is_leader)
    if check_tensors:
        find_damaged_tensors(checkpoint)
    fmt = resolve_weight_format(dtype, checkpoint.weights)
    config = model_config(checkpoint.config)
    layout = rank_layout(config, parallel, comm.rank)
    whole = as_float(checkpoint.weights["model.embed_tokens.weight"]) \
        if whole_embedding_on_leader and comm.is_leader else None
    weights = shard_weights(checkpoint.weights, config, FAMILIES[config.architecture], layout)
    shard = replace(checkpoint, weights=weights)
    del checkpoint
    model = build_model(shard, fmt, progress and comm.is_leader, config=local_config(config, layout))
    parallelize(model, config.moe, layout, comm, whole)
    return LoadedModel(shard.name, shard.tokenizer, fmt, model.to(comm.device), KernelBackend.TORCH)
