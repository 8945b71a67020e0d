"""Engine settings, validated once when the engine is built."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kilotok.errors import InvalidRequestError
from kilotok.kernels.backend import BACKEND_CHOICES, KernelBackend
from kilotok.kernels.device import resolve_device
from kilotok.parallel.layout import ParallelConfig
from kilotok.quant.formats import check_dtype, check_dtype_device
from kilotok.speculative.config import SpecConfig


@dataclass(frozen=True)
class EngineConfig:
    model: str = "smollm2-135m"
    device: str = "auto"
    """Where the model, its KV cache and sampling run: auto (CUDA where torch sees a GPU, else the CPU), cpu,
    cuda or cuda:N (kernels/device.py)."""
    dtype: str = "auto"
    """A weight format of quant/formats.py (DTYPE_CHOICES); auto keeps a GGUF's 4-bit and a checkpoint's
    FP8 weights as stored (a GGUF's 4-bit weights as bf16 on CUDA, where int4 has no kernel), else bf16."""
    block_size: int = 16
    kv_cache_gb: float = 1.0
    """KV-cache memory on the CPU; on CUDA the cache takes what gpu_memory_utilization leaves."""
    gpu_memory_utilization: float = 0.9
    """On CUDA: the share of the GPU's whole memory kilotok may fill (weights, activations, CUDA graphs and the
    KV cache, which gets the rest); memory other processes use counts against it."""
    kv_cache_blocks: int | None = None
    """Overrides kv_cache_gb and gpu_memory_utilization when set."""
    max_model_len: int | None = None
    """Defaults to the model's context window."""
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 4096
    """New tokens per step: every decoding sequence's next token plus chunks of prompts being prefilled."""
    enable_prefix_caching: bool = True
    """Reuse the KV blocks of earlier requests' identical leading tokens (skipped with an EAGLE-3 drafter,
    which needs the target's hidden states at every prompt position)."""
    compile: bool = True
    """torch.compile the decode step; falls back to eager where compiling fails. Not used where CUDA graphs
    run the decode step."""
    cuda_graphs: bool = True
    """On CUDA with the Triton backend: capture the decode step as CUDA graphs, one per batch size up to
    max_num_seqs, at start-up, and replay them (runner/cuda_graphs.py); off, the step runs eagerly."""
    check_tensors: bool = False
    """Look through every loaded weight (values, and the scales of quantized blocks) for NaN and infinity
    before running, to refuse a damaged model file instead of printing garbage."""
    backend: str = "auto"
    """Kernel implementations (kernels/backend.py): auto runs the Triton kernels on a CUDA device where
    Triton is installed and the PyTorch reference elsewhere; torch or triton force one."""
    pdl: bool = True
    """Launch back-to-back Triton kernels with Programmatic Dependent Launch where the GPU has it (Hopper
    and newer); off, each kernel waits for the previous one to finish, as without PDL."""
    progress: bool = True
    spec: SpecConfig | str | None = None
    """Speculative decoding: a SpecConfig, a method name ("ngram", "eagle3") or None for none."""
    tensor_parallel_size: int = 1
    """Processes (ranks) the model is split over; rank 0 runs the engine (parallel/)."""
    expert_parallel_size: int = 1
    """Groups of ranks the experts of a mixture-of-experts model are spread over; divides
    tensor_parallel_size."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", SpecConfig.of(self.spec))
        if isinstance(self.backend, KernelBackend):
            object.__setattr__(self, "backend", self.backend.value)
        if self.backend not in BACKEND_CHOICES:
            raise InvalidRequestError(f"unknown kernel backend {self.backend!r}; choose one of "
                                      f"{', '.join(BACKEND_CHOICES)}")
        self._check_parallel_device()
        check_dtype(self.dtype)
        check_dtype_device(self.dtype, self.torch_device)
        checks = {
            "block_size": self.block_size >= 1,
            "kv_cache_gb": self.kv_cache_gb > 0,
            "gpu_memory_utilization": 0 < self.gpu_memory_utilization <= 1,
            "cuda_graphs": isinstance(self.cuda_graphs, bool),
            "kv_cache_blocks": self.kv_cache_blocks is None or self.kv_cache_blocks >= 2,
            "max_model_len": self.max_model_len is None or self.max_model_len >= 1,
            "max_num_seqs": self.max_num_seqs >= 1,
            "max_num_batched_tokens": self.max_num_batched_tokens >= 1,
            "check_tensors": isinstance(self.check_tensors, bool),
            "pdl": isinstance(self.pdl, bool),
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidRequestError(f"engine setting {name}={getattr(self, name)!r} is out of range")

    @property
    def torch_device(self) -> torch.device:
        """`device` resolved (auto to cuda or cpu); raises InvalidRequestError for a device this machine lacks."""
        return resolve_device(self.device)

    @property
    def parallel(self) -> ParallelConfig:
        return ParallelConfig(self.tensor_parallel_size, self.expert_parallel_size)

    def _check_parallel_device(self) -> None:
        """Validates the parallel sizes, and refuses CUDA with more than one rank: the ranks run on CPUs over
        gloo; a rank per GPU over NCCL is neither built (a rank's shard is built for the CPU: its weight format,
        its attention kernel) nor tested (a lent GPU machine has one GPU)."""
        world_size = self.parallel.world_size
        device = self.torch_device
        if world_size > 1 and device.type != "cpu":
            how = f"--device {self.device}" + (f" picked {device}" if self.device == "auto" else "")
            raise InvalidRequestError(
                f"tensor parallelism runs its ranks on CPUs only (gloo), and {how}: pass --device cpu to split "
                "the model over CPU processes, or drop --tensor-parallel-size to run on one GPU", param="device")
