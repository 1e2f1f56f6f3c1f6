"""A small PyTorch MLP trained on synthetic data, written the way steadyrun likes it:
configurable (a dataclass config), bounded in time (``run.TimeBudget``) and safe against
out-of-memory in the training step (``run.find_executable_batch_size``).

The target is ``y = sin(x · w)`` for a fixed random ``w``. Each epoch draws its
``steps_per_epoch`` batches at once from a seeded generator (as a loader that prefetches
would), so the memory a run needs grows with ``batch_size``.
"""

from __future__ import annotations

import dataclasses
import time

import steadyrun as run


@dataclasses.dataclass
class MLPConfig:
    features: int = 256
    hidden: int = 128
    layers: int = 2


def build_model(cfg: MLPConfig):  # noqa: ANN201 - torch is imported lazily
    import torch

    dims = [cfg.features] + [cfg.hidden] * cfg.layers
    blocks: list[torch.nn.Module] = []
    for a, b in zip(dims, dims[1:], strict=False):
        blocks += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(dims[-1], 1))


def train(model: MLPConfig, lr: float = 1e-2, batch_size: int = 1024, epochs: int = 20,
          steps_per_epoch: int = 8, time_budget: str = "30s", seed: int = 0) -> dict:
    """Train until ``epochs`` are done or the time budget would be exceeded; return the
    final loss, the epochs run and the batch size that fitted."""
    import torch

    torch.manual_seed(seed)
    net = build_model(model)
    target = torch.randn(model.features, 1)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    budget = run.TimeBudget(time_budget)

    @run.find_executable_batch_size(starting_batch_size=batch_size)
    def epoch(bs: int) -> float:
        total = 0.0
        data = torch.randn(steps_per_epoch * bs, model.features, generator=gen)
        for step in range(steps_per_epoch):
            x = data[step * bs:(step + 1) * bs]
            y = torch.sin(x @ target)
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        return total / steps_per_epoch

    started = time.perf_counter()
    loss = float("nan")
    done = 0
    for i in budget.epochs(epochs):
        loss = epoch()
        done = i + 1
        print(f"epoch {done}: loss {loss:.4f} batch {epoch.batch_size}", flush=True)
    if budget.stopped_early:
        print(f"time budget: {budget.stop_reason}", flush=True)
    return {"loss": loss, "epochs": done, "batch_size": epoch.batch_size,
            "seconds": round(time.perf_counter() - started, 2)}
