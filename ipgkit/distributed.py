"""Data parallelism on torch.distributed: run the same command under ``torchrun`` and prompts are
sharded by rank, per-prompt results gathered, and rank 0 writes.

Attribution and evaluation are sums over prompts, so sharding prompts is exact: each rank handles
a contiguous block of them and the blocks are put back together in order. Training (GRPO, SFT) is
data-parallel the same way: each rank scores its share of a step's rows with the step's global
normalisation, and the gradients are summed over ranks before the optimiser step. gloo on CPU,
NCCL on GPUs (one rank per GPU).

Example:
    torchrun --nproc_per_node 2 -m ipgkit.cli attribute --task arith-word --seeding problem
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from ipgkit.errors import IpgkitError

_LOCAL = False  # set inside local(): the ranks work on their shards independently


def init_from_environment() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); False when not launched by
    torchrun. Idempotent."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        # A rank that exits with the group alive can abort in gloo's teardown ("terminate called
        # without an active exception", seen once in CI) after its work is done; leaving the
        # group first joins its threads. No barrier: a rank that failed must not wait for others.
        atexit.register(_leave_process_group)
    return True


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside torchrun, and inside :func:`local`."""
    if _LOCAL or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process writes results (rank 0)."""
    return dist.get_rank() == 0 if dist.is_available() and dist.is_initialized() else True


def shard(count: int) -> range:
    """The contiguous block of ``count`` items this rank handles (sizes differ by at most 1)."""
    rank, size = world()
    if count < size:
        raise IpgkitError(f"{count} prompts cannot be shared among {size} processes; use fewer")
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (pickled; CPU tensors travel as is)."""
    if world()[1] == 1:
        return [value]
    gathered: list[Any] = [None] * world()[1]
    dist.all_gather_object(gathered, value)
    return gathered


def agreed(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself outside torchrun): for decisions all
    ranks must take alike, such as whether a cached file exists. Each rank looking for itself
    races with rank 0's writes: a rank that looks after rank 0 has written the file skips the
    computation, and the barrier rank 0 waits at after writing, and the run deadlocks."""
    return gather(value)[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing outside torchrun): after rank 0 writes a file
    the others may read, so all of them see it."""
    if world()[1] > 1:
        dist.barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over ranks (``values`` itself outside torchrun), on every rank."""
    if world()[1] == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def sum_gradients(parameters) -> None:
    """Replace each parameter's ``.grad`` by its sum over ranks, as DistributedDataParallel does
    before the optimiser step (a missing gradient counts as zeros); one flat all-reduce."""
    if world()[1] == 1:
        return
    parameters = list(parameters)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for parameter, grad in zip(parameters, grads, strict=True):
        parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block the library runs as a single process (each rank on its own shard)."""
    global _LOCAL
    previous, _LOCAL = _LOCAL, True
    try:
        yield
    finally:
        _LOCAL = previous


__all__ = [
    "agreed",
    "all_sum",
    "barrier",
    "gather",
    "init_from_environment",
    "is_main",
    "local",
    "shard",
    "sum_gradients",
    "world",
]
