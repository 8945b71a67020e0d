"""CUDA graphs of the decode step: captured once per batch size at start-up, replayed every step.

A captured graph replays the exact kernels it recorded, on the exact memory it recorded: so every graph
reads its inputs from one set of static buffers (sized for the largest captured batch; a batch of B rows
uses their first B rows) and writes its outputs into memory it owns. A step copies its padded inputs into
the buffers, replays the graph of its size and reads the outputs, which stay valid until the next replay.
Every shape is static: block tables are padded to the runner's `max_blocks_per_seq` columns and the
decode attention kernel reads each row's context length on the device, so one graph per batch size serves
every context length. Batch sizes outside the captured set run eagerly (`DecodeGraphs.run` returns None).

Draft-tree verification rows are decode rows plus a tree mask (kernels/attention_metadata.py):
a second set of graphs captures them with that buffer at a fixed tree width, a step's narrower tree
padded with invisible columns (which the decode kernel ignores: a row's prefix is its context length less
the tree keys it sees).

Capture goes through a `GraphCapture` seam: `capture_cuda_graph` on a GPU, and in CPU tests a stand-in
that records the callable and replays it into the same output tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from kilotok.kernels.attention_metadata import AttentionMetadata

DecodeOutputs = tuple[torch.Tensor, torch.Tensor | None]
"""(logits [R, V], features [R, k * d] or None)."""
DecodeForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], DecodeOutputs]


class CapturedGraph(Protocol):
    outputs: DecodeOutputs
    """What the captured call returned: replay overwrites these tensors in place."""

    def replay(self) -> None: ...


GraphCapture = Callable[[Callable[[], DecodeOutputs], object], CapturedGraph]
"""(the call to capture, the memory pool the runner's graphs share) -> the captured graph."""


class CudaGraph:
    """One `torch.cuda.CUDAGraph` of `call`, after warm-up calls on a side stream (Triton's compilation and
    autotuning, cuBLAS workspaces: nothing allocated or compiled lazily may happen during capture)."""

    WARM_UP_CALLS = 2

    def __init__(self, call: Callable[[], DecodeOutputs], pool: object) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARM_UP_CALLS):
                call()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = call()

    def replay(self) -> None:
        self.graph.replay()


def capture_cuda_graph(call: Callable[[], DecodeOutputs], pool: object) -> CapturedGraph:
    return CudaGraph(call, pool)


def new_graph_pool(device: torch.device) -> object:
    """The memory pool every graph of a runner shares: captured largest first, the smaller graphs reuse
    the largest one's intermediate memory, since only one graph runs at a time."""
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


@dataclass
class StaticDecodeInputs:
    """The buffers every captured graph reads, for the largest captured batch."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    tree_mask: torch.Tensor | None = None

    @classmethod
    def allocate(cls, rows: int, max_blocks: int, padding_block: int, block_size: int, device: torch.device,
                 tree_width: int = 0) -> StaticDecodeInputs:
        """Padding rows throughout (token 0 at position 0, writing the first slot of `padding_block`, one
        key, no tree key), so capturing reads and writes only that block. `tree_width` > 0: verification
        rows, with a tree mask of that many columns."""
        def full(shape, value: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full(shape, value, dtype=dtype, device=device)

        return cls(
            input_ids=full((rows,), 0, torch.int64),
            positions=full((rows,), 0, torch.int64),
            slot_mapping=full((rows,), padding_block * block_size, torch.int64),
            block_tables=full((rows, max_blocks), padding_block, torch.int32),
            context_lens=full((rows,), 1, torch.int32),
            query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=device),
            tree_mask=full((rows, tree_width), 0, torch.bool) if tree_width else None,
        )

    @property
    def max_blocks(self) -> int:
        return self.block_tables.shape[1]

    @property
    def tree_width(self) -> int:
        return 0 if self.tree_mask is None else self.tree_mask.shape[1]

    def fits(self, meta: AttentionMetadata) -> bool:
        """Whether a step's rows are of this kind: plain decode rows, or trees no wider than the buffers."""
        if meta.tree_mask is None:
            return self.tree_mask is None
        return 0 < meta.tree_mask.shape[1] <= self.tree_width

    def fill(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> None:
        """Copy one step's inputs (R rows, already padded to a captured size) into the first R rows."""
        rows, width = meta.block_tables.shape
        if width != self.max_blocks:
            raise ValueError(f"block tables have {width} columns; the captured graphs read {self.max_blocks}")
        self.input_ids[:rows].copy_(input_ids, non_blocking=True)
        self.positions[:rows].copy_(positions, non_blocking=True)
        self.slot_mapping[:rows].copy_(meta.slot_mapping, non_blocking=True)
        self.block_tables[:rows].copy_(meta.block_tables, non_blocking=True)
        self.context_lens[:rows].copy_(meta.context_lens, non_blocking=True)
        if self.tree_mask is not None:
            width = meta.tree_mask.shape[1]
            self.tree_mask[:rows, :width].copy_(meta.tree_mask, non_blocking=True)
            self.tree_mask[:rows, width:].zero_()

    def view(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """The first `rows` rows as a decode step's inputs (what a graph of that size captures)."""
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:rows],
            block_tables=self.block_tables[:rows],
            context_lens=self.context_lens[:rows],
            query_start_loc=self.query_start_loc[: rows + 1],
            decode_rows=True,
            tree_mask=None if self.tree_mask is None else self.tree_mask[:rows],
        )
        return self.input_ids[:rows], self.positions[:rows], meta


class DecodeGraphs:
    """The decode step `forward` captured for each of `sizes` (batch sizes, in rows); with `tree_width`, for
    verification rows with draft trees up to that width."""

    def __init__(self, forward: DecodeForward, sizes: Iterable[int], max_blocks: int, padding_block: int,
                 block_size: int, device: torch.device, capture: GraphCapture = capture_cuda_graph,
                 progress: bool = True, tree_width: int = 0, pool: object | None = None) -> None:
        """`pool`: a graph memory pool to share with other graphs that never run at the same time."""
        self.sizes = sorted(set(sizes))
        if not self.sizes or self.sizes[0] < 1:
            raise ValueError(f"graph batch sizes must be positive, got {self.sizes}")
        self.inputs = StaticDecodeInputs.allocate(self.sizes[-1], max_blocks, padding_block, block_size, device,
                                                  tree_width)
        pool = new_graph_pool(device) if pool is None else pool
        self.pool = pool
        self.graphs: dict[int, CapturedGraph] = {}
        desc = "capturing CUDA graphs" + (" (draft-tree verification)" if tree_width else "")
        for size in tqdm(self.sizes[::-1], desc=desc, disable=not progress, leave=False):
            self.graphs[size] = capture(self._call(forward, size), pool)

    def _call(self, forward: DecodeForward, size: int) -> Callable[[], DecodeOutputs]:
        return lambda: forward(*self.inputs.view(size))

    def size_for(self, rows: int) -> int | None:
        """The captured size `rows` rows pad to, or None above the largest (those run eagerly)."""
        return next((size for size in self.sizes if size >= rows), None)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> DecodeOutputs | None:
        """Replay the graph of exactly this row count; None when no graph has it (the caller runs eagerly).
        The outputs are the graph's own tensors: read them before the next replay."""
        graph = self.graphs.get(input_ids.shape[0])
        if graph is None or not self.inputs.fits(meta):
            return None
        self.inputs.fill(input_ids, positions, meta)
        graph.replay()
        return graph.outputs
