"""An engine over several ranks (kilotok/parallel/): rank 0 builds its shard of the model and a runner
whose forwards the other ranks follow; every other rank builds its shard and a plain runner over it,
takes the KV-cache size from rank 0 (so every rank's cache has the same blocks) and follows."""

from __future__ import annotations

from kilotok.engine.engine_config import EngineConfig
from kilotok.models.builder import LoadedModel
from kilotok.parallel.build import load_model_shard
from kilotok.parallel.comm import Communicator
from kilotok.parallel.launch import RankGroup, join_group
from kilotok.parallel.steps import LeaderRunner, follow
from kilotok.runner.model_runner import ModelRunner


def start_ranks(config: EngineConfig) -> tuple[RankGroup, LoadedModel]:
    """Rank 0's group (the other ranks started or joined) and its shard of the model."""
    group = join_group(config.parallel, follow_engine, (config,))
    try:
        return group, load_shard(config, group.comm)
    except BaseException:
        group.close()
        raise


def leader_runner(group: RankGroup, config: EngineConfig, loaded: LoadedModel, num_blocks: int,
                  max_model_len: int) -> ModelRunner:
    group.comm.broadcast_object((num_blocks, max_model_len))
    # Eager on every rank: a compile that failed halfway through a forward, after some of its collectives,
    # and fell back to eager would leave the other ranks one collective out of step.
    return LeaderRunner(group, loaded.model, num_blocks, config.block_size, max_model_len, compile_decode=False)


def load_shard(config: EngineConfig, comm: Communicator) -> LoadedModel:
    # The EAGLE-3 head runs on rank 0 alone: the target's features it reads (hidden states between
    # layers) are whole on every rank already, and it embeds tokens with the target's whole table.
    return load_model_shard(config.model, config.dtype, config.parallel, comm, progress=config.progress,
                            check_tensors=config.check_tensors,
                            whole_embedding_on_leader=config.spec.method == "eagle3")


def follow_engine(comm: Communicator, config: EngineConfig) -> None:
    """What every rank but 0 runs: its shard, the same KV cache as rank 0's, then rank 0's steps."""
    loaded = load_shard(config, comm)
    num_blocks, max_model_len = comm.broadcast_object(None)
    follow(ModelRunner(loaded.model, num_blocks, config.block_size, max_model_len, compile_decode=False), comm)
