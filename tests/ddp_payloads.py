"""Payloads for the distributed-training tests: a small MLP trained with DDP on
synthetic data (CPU, gloo), and the same training in one process for reference.

Every rank draws the same data from one seed and trains on its own shard of each batch;
DDP averages the gradients, so the parameters after training equal, within float
tolerance, those of one process trained on whole batches. Each rank returns its
parameters, so a test can check that every rank ended with the same model.
"""

from __future__ import annotations

import os
from typing import Any

SEED = 1234
BATCH = 16
FEATURES = 8


def _model() -> Any:
    import torch

    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 1))


def _data(steps: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(steps, BATCH, FEATURES, generator=g)
    w = torch.randn(FEATURES, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(steps, BATCH, 1, generator=g)


def _flat(model: Any) -> list[float]:
    import torch

    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def train_ddp(steps: int = 20, lr: float = 0.05, fail_rank: int | None = None,
              fail_marker: str | None = None) -> dict[str, Any]:
    """Train under ``torch.distributed`` (the launcher set the environment); return this
    rank's view: its rank, world size, host, parameters, and every rank's parameters
    gathered (so rank 0's value shows them all). ``fail_rank`` raises on that rank after
    two steps; with ``fail_marker`` only while that file does not exist in the task's
    folder (it is created on failure, so a retry succeeds)."""
    import socket

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = torch.nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = _data(steps)
    shard = BATCH // world
    for step in range(steps):
        if fail_rank == rank and step == 2 and _should_fail(fail_marker):
            raise RuntimeError(f"rank {rank} fails on purpose at step {step}")
        xb = x[step, rank * shard:(rank + 1) * shard]
        yb = y[step, rank * shard:(rank + 1) * shard]
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.5f}", flush=True)
    params = torch.tensor(_flat(model.module))
    gathered = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    dist.destroy_process_group()
    return {"rank": rank, "world_size": world, "host": socket.gethostname(),
            "pid": os.getpid(), "params": params.tolist(),
            "all_params": [g.tolist() for g in gathered]}


def _should_fail(marker: str | None) -> bool:
    if marker is None:
        return True
    import steadyrun as run

    path = run.task_dir() / marker
    if path.exists():
        return False
    path.write_text("failed once")
    return True


def train_single(steps: int = 20, lr: float = 0.05) -> list[float]:
    """The same training in one process on whole batches: the reference."""
    import torch

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = _data(steps)
    for step in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[step]), y[step]).backward()
        opt.step()
    return _flat(model)


def rank_env() -> dict[str, str | None]:
    """The distributed environment this rank saw."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
             "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID", "GROUP_RANK")
    return {n: os.environ.get(n) for n in names}


def init_default_group() -> dict[str, Any]:
    """``init_process_group()`` with no arguments, then one all-reduce of the ranks."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    out = {"rank": dist.get_rank(), "sum": t.item(), "world_size": dist.get_world_size()}
    dist.destroy_process_group()
    return out


def sleep_forever() -> None:
    """A rank that waits until it is stopped."""
    import time

    while True:
        time.sleep(1)


def fail_on_rank(rank: int, after: float = 1.0) -> str:
    """Rank ``rank`` raises after ``after`` seconds (writing the time it raised into
    ``raised_at`` in the task's folder); every other rank waits until it is stopped."""
    import time

    import steadyrun as run

    time.sleep(after)
    if int(os.environ["RANK"]) == rank:
        (run.task_dir() / "raised_at").write_text(repr(time.time()))
        raise ValueError(f"rank {rank} gives up")
    while True:
        time.sleep(0.5)


def grow_on_rank(rank: int, mib: int) -> int:
    """Rank ``rank`` fills ``mib`` MiB of memory; the others wait until stopped."""
    import time

    if int(os.environ["RANK"]) == rank:
        block = bytearray(mib << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return len(block)
    while True:
        time.sleep(0.5)
