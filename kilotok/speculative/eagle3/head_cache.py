"""The draft head's own cache: for every sequence it drafts for, one row of keys and values (one column per
committed input, in position order) and its output at the newest committed input.

Rows live in shared buffers, so that one head call drafts for a whole batch: the batch's rows are gathered
by index, each masked to its own committed length. A sequence holds its row from its first catch-up until
the engine finishes or preempts it (`release`). The buffers grow by doubling, in rows and in columns, as
sequences and contexts need; a step never writes past a row's committed length except into columns it
made room for (`slots`), which the next commit overwrites.
"""

from __future__ import annotations

import torch

from kilotok.speculative.eagle3.model import Eagle3Output


class HeadCache:
    def __init__(self, rows: int = 4, columns: int = 256) -> None:
        self._rows, self._columns = rows, columns
        self.k: torch.Tensor | None = None
        """[rows, columns, Hkv, D] the head's keys of each row's committed inputs; None until the first commit."""
        self.v: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        """[rows, draft_vocab] the head's output at each row's newest committed input: the root's children's scores."""
        self.hidden: torch.Tensor | None = None
        """[rows, d] the head's output feature there, read by the root's children."""
        self.last_position: torch.Tensor | None = None
        """[rows] the newest committed input's position."""
        self.committed: list[int] = [0] * rows
        """Committed inputs per row, on the host: they size the gathered key windows."""
        self._free = list(range(rows - 1, -1, -1))

    def acquire(self) -> int:
        """A free row, empty; the buffers gain rows when none is free."""
        if not self._free:
            self._resize(2 * self._rows, self._columns)
        row = self._free.pop()
        self.committed[row] = 0
        return row

    def release(self, row: int) -> None:
        self._free.append(row)

    @property
    def held(self) -> int:
        """Rows that sequences hold."""
        return self._rows - len(self._free)

    def index(self, row_ids: list[int], device: torch.device) -> slice | torch.Tensor:
        """What picks these rows out of the buffers: a slice (views, nothing copied) where they are
        consecutive, as rows handed out in admission order mostly are; else an index on `device`."""
        first = row_ids[0]
        if row_ids == list(range(first, first + len(row_ids))):
            return slice(first, first + len(row_ids))
        return torch.tensor(row_ids, device=device)

    def window(self, rows: slice | torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first `width` key and value columns of `rows` (`index`), as contiguous [B, width, Hkv, D] (one
        layout, one compiled graph, whichever way the rows were picked); None for none (no row has
        committed inputs yet)."""
        if width == 0 or self.k is None:
            return None
        return self.k[rows, :width].contiguous(), self.v[rows, :width].contiguous()

    def slots(self, row_ids: list[int], width: int) -> list[list[int]]:
        """Where a catch-up of `width` inputs a row writes its keys and values: each row's next `width`
        columns after its committed ones, as indices into the flattened [rows x columns] buffers. Computed
        on the host, after making room, so that they travel with the step's other host data."""
        needed = max(self.committed[row] for row in row_ids) + width
        if needed > self._columns:
            self._resize(self._rows, max(needed, 2 * self._columns))
        return [[row * self._columns + self.committed[row] + column for column in range(width)] for row in row_ids]

    def commit(self, rows: slice | torch.Tensor, row_ids: list[int], counts: list[int], out: Eagle3Output,
               slots: torch.Tensor, last: torch.Tensor, positions: torch.Tensor) -> None:
        """Keep a catch-up of `rows` (`index`; `row_ids` on the host): its keys and values (`out.k`, `out.v`
        [B, R, Hkv, D]) go to `slots` [B * R] (from `slots`), all R of a row, padding included, so the write
        has one shape; the first `counts[b]` are real and committed. The output at each row's last real
        input (`last` [B], into the flattened B * R inputs; `positions` [B, R]) becomes its newest."""
        if self.k is None:
            self._allocate(out)
        for buffer, new in ((self.k, out.k), (self.v, out.v)):
            buffer.view(-1, *buffer.shape[2:]).index_copy_(0, slots, new.flatten(0, 1))
        for buffer, new in ((self.logits, out.logits), (self.hidden, out.hidden), (self.last_position, positions)):
            buffer[rows] = new.flatten(0, 1)[last]
        for row, count in zip(row_ids, counts, strict=True):
            self.committed[row] += count

    def _allocate(self, out: Eagle3Output) -> None:
        rows, columns = self._rows, self._columns
        self.k = out.k.new_zeros(rows, columns, *out.k.shape[2:])
        self.v = torch.zeros_like(self.k)
        self.logits = out.logits.new_zeros(rows, out.logits.shape[-1])
        self.hidden = out.hidden.new_zeros(rows, out.hidden.shape[-1])
        self.last_position = torch.zeros(rows, dtype=torch.int64, device=out.k.device)

    def _resize(self, rows: int, columns: int) -> None:
        """Copy into larger buffers; every row keeps its index and its columns."""
        if self.k is not None:
            self.k, self.v = (_grown(buffer, (rows, columns)) for buffer in (self.k, self.v))
            self.logits, self.hidden, self.last_position = (
                _grown(buffer, (rows,)) for buffer in (self.logits, self.hidden, self.last_position))
        self._free = list(range(rows - 1, self._rows - 1, -1)) + self._free
        self.committed += [0] * (rows - self._rows)
        self._rows, self._columns = rows, columns


def _grown(old: torch.Tensor, leading: tuple[int, ...]) -> torch.Tensor:
    """`old` copied into the corner of zeros whose leading dimensions are `leading`."""
    new = old.new_zeros(*leading, *old.shape[len(leading):])
    new[tuple(slice(0, size) for size in old.shape[: len(leading)])] = old
    return new
