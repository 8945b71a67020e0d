"""The process group of a parallel run, one code path for two launches:

- kilotok spawns its ranks: the calling process is rank 0, and it starts ranks 1..N-1 itself (spawned
  processes, rendezvous on a free loopback port);
- torchrun (or any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT) starts every rank,
  on one node or several, and each joins over env://.

Either way rank 0 returns a `RankGroup` and the other ranks run `follower(comm, *args)` (they never return
from `join_group` under torchrun: their process exits when rank 0 closes the group). Ranks run on CPUs
and talk over gloo, on machines with GPUs too (EngineConfig refuses a CUDA device with several ranks: a
rank per GPU over NCCL is not built yet). A spawned follower exits when rank 0's process goes away; rank 0
ends every spawned rank when it closes, when it exits, or when a collective fails.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kilotok.errors import ParallelError
from kilotok.parallel.comm import Communicator
from kilotok.parallel.layout import ParallelConfig

Follower = Callable[..., None]
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""How long a rank waits at a collective for a peer that neither answers nor drops its connection."""


@dataclass
class RankGroup:
    """Rank 0's handle on the group."""

    comm: Communicator
    spawned: mp.ProcessContext | None = None
    _closed: bool = field(default=False, repr=False)
    _threads: int = field(default=0, repr=False)

    def close(self, say_stop: Callable[[], None] | None = None, timeout_s: float = 20.0) -> None:
        """Tell the followers to stop (best effort), leave the group and end any spawned rank still running."""
        if self._closed:
            return
        self._closed = True
        try:
            if say_stop is not None:
                say_stop()
        except ParallelError:
            pass
        finally:
            _leave()
            _end_processes(self.spawned, timeout_s)
            torch.set_num_threads(self._threads)

    def failed_ranks(self) -> dict[int, int]:
        """Spawned ranks that have exited, with their exit codes."""
        if self.spawned is None:
            return {}
        return {index + 1: process.exitcode for index, process in enumerate(self.spawned.processes)
                if process.exitcode is not None}


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_group(parallel: ParallelConfig, follower: Follower, args: tuple) -> RankGroup:
    """Rank 0's group of `parallel.world_size` ranks, spawning the others or joining a torchrun launch."""
    world = parallel.world_size
    threads = torch.get_num_threads()
    if launched_by_torchrun():
        rank, launched = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if launched != world:
            raise ParallelError(f"torchrun started {launched} processes but tensor_parallel_size is {world}; "
                                "they must be equal")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        comm = _init(rank, world, "env://", local_world)
        if rank:
            _follow(comm, follower, args)
            raise SystemExit(0)
        return RankGroup(comm, _threads=threads)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    spawned = mp.start_processes(_spawned_follower, args=(init_method, world, follower, args, os.getpid()),
                                 nprocs=world - 1, join=False, daemon=True, start_method="spawn")
    try:
        group = RankGroup(_init(0, world, init_method, world), spawned, _threads=threads)
    except BaseException:
        _end_processes(spawned, 5.0)
        raise
    return group


def _init(rank: int, world: int, init_method: str, local_world: int) -> Communicator:
    # Ranks sharing a machine share its cores: more threads than cores would only crowd each other out.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    return Communicator(rank, world, torch.device("cpu"))


def _spawned_follower(index: int, init_method: str, world: int, follower: Follower, args: tuple,
                      leader_pid: int) -> None:
    _exit_with_leader(leader_pid)
    _follow(_init(index + 1, world, init_method, world), follower, args)


def _follow(comm: Communicator, follower: Follower, args: tuple) -> None:
    try:
        follower(comm, *args)
    except KeyboardInterrupt:
        pass
    except ParallelError as error:
        print(f"kilotok rank {comm.rank}: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        _leave()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _exit_with_leader(leader_pid: int) -> None:
    """A follower whose leader process is gone has nobody to follow: exit, even if blocked in a collective."""
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != leader_pid:
                os._exit(1)
    threading.Thread(target=watch, daemon=True, name="kilotok-leader-watch").start()


def _end_processes(spawned: mp.ProcessContext | None, timeout_s: float) -> None:
    if spawned is None:
        return
    deadline = time.monotonic() + timeout_s
    for process in spawned.processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in spawned.processes:
        if process.is_alive():
            process.terminate()
            process.join(2.0)
        if process.is_alive():
            process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
