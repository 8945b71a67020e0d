"""The process group's device: gloo on the CPU, also where torch sees a GPU (a torchrun launch of one rank,
joined in this process)."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist

from kilotok.parallel.launch import join_group
from kilotok.parallel.layout import ParallelConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ranks_join_over_gloo_on_the_cpu_where_a_gpu_is_visible(monkeypatch):
    threads = torch.get_num_threads()
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    group = join_group(ParallelConfig(1), lambda comm: None, ())
    try:
        assert group.comm.device == torch.device("cpu")
        assert dist.get_backend() == "gloo"
    finally:
        group.close()
    assert not dist.is_initialized() and torch.get_num_threads() == threads
