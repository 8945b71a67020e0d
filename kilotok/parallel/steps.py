"""Rank 0 leads, the other ranks follow. Rank 0's engine schedules, samples and speaks to clients as in a
single process; its model sends every forward's step inputs (token ids, positions and the
`AttentionMetadata`) to the followers before running, and every LM-head call its hidden rows, and its
runner sends every KV copy (speculative decoding's accepted path). A follower runs exactly what it is
sent, in the same order, so every collective inside the forward meets its partners on all ranks.

Each message is a header (the command and the shapes of its tensors) and then its tensors, broadcast
from rank 0: tensors never go through pickling, so the same code can run over NCCL once ranks run on GPUs.
"""

from __future__ import annotations

import weakref
from dataclasses import fields
from functools import partial

import torch

from kilotok.kernels.attention_metadata import AttentionMetadata
from kilotok.models.causal_lm import CausalLM
from kilotok.parallel.comm import Communicator
from kilotok.parallel.launch import RankGroup
from kilotok.runner.model_runner import ModelRunner

FORWARD, LOGITS, COPY_KV, STOP = "forward", "logits", "copy_kv", "stop"
_META_FIELDS = [f.name for f in fields(AttentionMetadata)]


@torch.compiler.disable
def send(comm: Communicator, command: str, tensors: list[torch.Tensor | bool | None]) -> None:
    """Tensors go as broadcasts; anything else (None, a metadata flag) travels in the object message."""
    specs = [(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else ("value", t) for t in tensors]
    comm.broadcast_object((command, specs))
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            comm.broadcast(tensor.contiguous())


def receive(comm: Communicator) -> tuple[str, list[torch.Tensor | bool | None]]:
    command, specs = comm.broadcast_object(None)
    tensors = [spec[1] if spec[0] == "value"
               else comm.broadcast(torch.empty(spec[0], dtype=spec[1], device=comm.device)) for spec in specs]
    return command, tensors


def lead(model: CausalLM, comm: Communicator) -> None:
    """Have rank 0's model send its step inputs before each forward and its rows before each LM-head call
    (hooks: the runner, compiled or not, calls the model as it always does)."""
    model.register_forward_pre_hook(lambda _, args: _send_forward(comm, *args))
    model.lm_head.register_forward_pre_hook(lambda _, args: send(comm, LOGITS, [args[0]]))


def _send_forward(comm: Communicator, input_ids: torch.Tensor, positions: torch.Tensor,
                  meta: AttentionMetadata) -> None:
    send(comm, FORWARD, [input_ids, positions, *(getattr(meta, name) for name in _META_FIELDS)])


class LeaderRunner(ModelRunner):
    """Rank 0's model runner: a plain runner over its shard whose KV copies the followers repeat, and
    which ends the followers when it closes."""

    def __init__(self, group: RankGroup, model: CausalLM, num_blocks: int, block_size: int, max_model_len: int,
                 compile_decode: bool) -> None:
        lead(model, group.comm)
        super().__init__(model, num_blocks, block_size, max_model_len, compile_decode)
        self.group = group
        # At exit or when the runner is dropped; holds no reference to the runner, so it can be dropped.
        self._close = weakref.finalize(self, group.close, partial(send, group.comm, STOP, []))

    def copy_kv(self, src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
        if src_slots.numel():
            send(self.group.comm, COPY_KV, [src_slots, dst_slots])
        super().copy_kv(src_slots, dst_slots)

    def close(self) -> None:
        self._close()


@torch.inference_mode()
def follow(runner: ModelRunner, comm: Communicator) -> None:
    """Run rank 0's commands on this rank's shard until it sends STOP."""
    model = runner.model
    while True:
        command, tensors = receive(comm)
        if command == STOP:
            return
        if command == FORWARD:
            model(tensors[0], tensors[1], AttentionMetadata(**dict(zip(_META_FIELDS, tensors[2:], strict=True))))
        elif command == LOGITS:
            model.compute_logits(tensors[0])
        elif command == COPY_KV:
            runner.copy_kv(tensors[0], tensors[1])
