"""A compiled step (a decode forward, a draft head's call) that, once compiled for an input layout, calls the
compiled graph directly instead of going through dynamo's guards on every step.

Before each call of a compiled function, dynamo checks one guard per graph input: here several hundred
(every parameter, quantized weight buffer and KV cache of the model) against a handful that change from
step to step. On a small model at batch 1 that check is a measurable share of the step. The model and its
caches are the same objects for the runner's whole life, and a step's own arguments (token ids, positions,
the attention metadata) differ between steps only in their values and in the dimensions marked dynamic, so
after dynamo has compiled a graph for one layout of those arguments, the graph can be called with the
step's tensors put in its input order: the CPU counterpart of replaying a captured CUDA graph.

What a replay assumes, and how it is kept true: the model's tensors are resolved once, when the graph is
recorded, so they must not be replaced afterwards (the runner allocates its caches once, and weights are
never swapped). The step's arguments are matched by their layout (each tensor's dtype, device, static
shape and contiguity, or strides where not contiguous, a dataclass's fields the same way, any other
argument's value), which is what dynamo's guards on them check. A graph that dynamo split in several, or
whose inputs cannot be named, or whose replay does not reproduce the traced call's outputs exactly, is
never replayed: those layouts keep going through dynamo.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
from torch._inductor.compile_fx import compile_fx

CPU_STEP_OPTIONS = {"cpp.threads": 1, "size_asserts": False}
"""Inductor options for steps of one or a few rows on the CPU. The fused elementwise kernels are tiny:
spreading them over OpenMP threads costs more in barriers than it saves (matrix products still use every
thread). The graph's own checks of its inputs' sizes and strides repeat what the replay's layout match or
dynamo's guards already checked, hundreds of calls a step."""


def _layout(value: Any) -> Hashable:
    """What a compiled graph is specialized on in one argument: equal layouts run the same graph."""
    if isinstance(value, torch.Tensor):
        dynamic = getattr(value, "_dynamo_dynamic_indices", ())
        shape = tuple(-1 if dim in dynamic else size for dim, size in enumerate(value.shape))
        # A graph reads its inputs through the strides it was traced with: two views of one shape whose
        # strides differ (slices of different tensors) must not share it.
        return value.dtype, value.device, shape, value.is_contiguous() or value.stride()
    if is_dataclass(value):
        return type(value), tuple(_layout(getattr(value, field.name)) for field in fields(value))
    return value


@dataclass
class _Graph:
    """What the recording backend saw: the compiled graph and the source of each of its inputs."""

    compiled: Callable[..., Any]
    sources: list[str | None]


class _Replay:
    """Calls one compiled graph with a step's arguments, bypassing dynamo."""

    def __init__(self, graph: _Graph, forward: Callable[..., Any], arguments: tuple[str, ...],
                 output_slots: tuple[int | None, ...]) -> None:
        """`arguments`: the forward's parameter names after `self`; `output_slots[i]`: which graph output
        the forward's i-th return value is (None where it returns None)."""
        self._compiled = graph.compiled
        self._arguments = arguments
        self._output_slots = output_slots
        names = {"L": {"self": forward.__self__}, "G": forward.__func__.__globals__}
        per_step = tuple(f"L['{name}']" for name in arguments)
        self._static: list[Any] = []
        self._step_positions: list[int] = []
        step_sources = []
        for position, source in enumerate(graph.sources):
            if source is None:
                raise ValueError("a graph input without a source")
            if source.startswith(per_step):
                self._static.append(None)
                self._step_positions.append(position)
                step_sources.append(source)
            else:
                self._static.append(eval(source, names))  # noqa: S307 - dynamo's own source names
        # One compiled expression reads every per-step input: the only Python a replay adds.
        self._read_step_inputs = eval("lambda L: (" + "".join(f"{s}, " for s in step_sources) + ")")  # noqa: S307

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        inputs = list(self._static)
        step_inputs = self._read_step_inputs(dict(zip(self._arguments, args, strict=True)))
        for position, value in zip(self._step_positions, step_inputs, strict=True):
            inputs[position] = value
        # Positional, as dynamo's own bytecode calls it.
        outputs = self._compiled(*inputs)
        return tuple(None if slot is None else outputs[slot] for slot in self._output_slots)


class CompiledStep:
    """`forward`, a bound method whose arguments are tensors, dataclasses of tensors or hashable values
    and which returns a tuple of tensors or None, compiled by torch.compile with inductor `options`; each
    layout of its arguments is replayed without dynamo once its graph is recorded."""

    def __init__(self, forward: Callable[..., tuple[Any, ...]], options: dict[str, Any] = CPU_STEP_OPTIONS) -> None:
        # Dynamo counts graphs per code object, across every engine in the process: one graph per batch
        # bucket per engine would pass its default limit of 8 and silently fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
        self._forward = forward
        self._arguments = tuple(inspect.signature(forward).parameters)
        self._options = options
        self._compiled = torch.compile(forward, backend=self._record, dynamic=False)
        self._recorded: list[_Graph] | None = None
        self._replays: dict[Hashable, _Replay] = {}

    def _record(self, graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        compiled = compile_fx(graph_module, example_inputs, config_patches=self._options)
        if self._recorded is not None:
            sources = []
            for node in graph_module.graph.find_nodes(op="placeholder"):
                graph_arg = node.meta.get("grapharg")
                sources.append(None if graph_arg is None else graph_arg.source.name)
            self._recorded.append(_Graph(compiled, sources))
        return compiled

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        layout = tuple(_layout(arg) for arg in args)
        replay = self._replays.get(layout)
        if replay is not None:
            return replay(*args)
        self._recorded = []
        try:
            outputs = self._compiled(*args)
        finally:
            recorded, self._recorded = self._recorded, None
        if len(recorded) == 1:
            replay = self._checked_replay(recorded[0], outputs, args)
            if replay is not None:
                self._replays[layout] = replay
        return outputs

    def _checked_replay(self, graph: _Graph, outputs: tuple[Any, ...], args: tuple[Any, ...]) -> _Replay | None:
        """A replay of `graph`, if replaying the call that traced it gives the same outputs bit for bit.
        Running a step twice is harmless: it writes the same keys and values to the same cache slots."""
        if type(outputs) is not tuple:
            return None
        returned = [index for index, value in enumerate(outputs) if value is not None]
        slots: list[int | None] = [None] * len(outputs)
        for slot, index in enumerate(returned):
            slots[index] = slot
        try:
            replay = _Replay(graph, self._forward, self._arguments, tuple(slots))
            again = replay(*args)
        except Exception:  # noqa: BLE001 - any failure to replay leaves this layout to dynamo
            return None
        same = all((a is None) == (b is None) and (a is None or torch.equal(a, b))
                   for a, b in zip(outputs, again, strict=True))
        return replay if same else None


class CompiledCalls:
    """An owner's few named steps, each a `CompiledStep` of its eager function, that all run eagerly for
    good once compiling one fails (one line on stderr says so); eager from the start without
    `compile_steps`."""

    def __init__(self, eager: dict[str, Callable[..., Any]], compile_steps: bool, owner: str) -> None:
        """`owner`: what runs eagerly after a failure, for the message ("the draft head")."""
        self.eager = eager
        self.compiled = {name: CompiledStep(call) for name, call in eager.items()} if compile_steps else {}
        self.failed = not compile_steps
        self._owner = owner

    def __call__(self, name: str, *args: Any) -> Any:
        if self.failed:
            return self.eager[name](*args)
        try:
            return self.compiled[name](*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
            print(f"kilotok: {self._owner} runs eager (torch.compile failed: {type(error).__name__}: {error})",
                  file=sys.stderr)
            self.failed = True
            return self.eager[name](*args)
