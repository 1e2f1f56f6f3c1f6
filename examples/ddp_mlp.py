"""Data-parallel training of a small MLP with ``torch.distributed`` (DDP), as one task
whose attempt runs as several ranks.

    python examples/ddp_mlp.py                        # 2 ranks on this machine (torchrun)
    python examples/ddp_mlp.py --slurm --nodes 2      # 2 Slurm nodes, 1 rank each
    python examples/ddp_mlp.py --ray 127.0.0.1:6379 --nodes 2

The training function calls ``init_process_group()`` with no arguments: the launcher set
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and the rest. Every rank trains on its shard of
each batch and DDP averages the gradients, so every rank ends with the same weights; the
task's value is rank 0's return value. The backend is ``gloo`` on CPU and ``nccl`` when
each rank has a GPU (``--gpus-per-rank 1``). ``steadyrun logs ID train --rank 1`` shows
one rank's output; ``steadyrun report ID`` each rank's CPU and memory.
"""

from __future__ import annotations

import argparse
import os

import steadyrun as run


def train(steps: int = 50, batch: int = 64, features: int = 32, lr: float = 0.05,
          seed: int = 0) -> dict:
    """Train with DDP; return the final loss, the world size and a checksum of the
    weights (equal on every rank when the gradients were averaged)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(seed)  # the same initial weights on every rank
    net = torch.nn.Sequential(torch.nn.Linear(features, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 1)).to(device)
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(features, 1, generator=gen)
    shard = batch // world
    loss = torch.tensor(0.0)
    for step in range(steps):
        x = torch.randn(batch, features, generator=gen)
        y = torch.sin(x @ w)
        xb = x[rank * shard:(rank + 1) * shard].to(device)
        yb = y[rank * shard:(rank + 1) * shard].to(device)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"rank {rank} step {step} loss {loss.item():.4f}", flush=True)
    checksum = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum()
    sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(sums, checksum)
    dist.destroy_process_group()
    return {"loss": round(loss.item(), 5), "world_size": world,
            "checksums": [round(s.item(), 8) for s in sums]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="run on the Slurm cluster")
    where.add_argument("--ray", metavar="ADDRESS", help="run on the Ray cluster at ADDRESS")
    p.add_argument("--nodes", type=int, default=None, help="nodes (Slurm, Ray; default 2)")
    p.add_argument("--ranks", type=int, default=None,
                   help="ranks per node (default: 2 on this machine, 1 on a cluster)")
    p.add_argument("--gpus-per-rank", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    launcher = run.Torchrun()
    if args.slurm:
        executor: run.Executor = run.SlurmExecutor(
            nodes=args.nodes or 2, ntasks_per_node=args.ranks or 1, launcher=launcher,
            time="00:10:00")
    elif args.ray:
        executor = run.RayExecutor(address=args.ray, nodes=args.nodes or 2,
                                   ntasks_per_node=args.ranks or 1, launcher=launcher)
    else:
        executor = run.LocalExecutor(ntasks_per_node=args.ranks or 2, launcher=launcher)
    exp = run.Experiment("ddp-mlp", executor=executor)
    exp.add(run.Partial(train, steps=args.steps), name="train",
            resources=run.Resources(cpus=1, memory="1GiB", gpus=args.gpus_per_rank))
    result = exp.run()["train"]
    value = result.value
    same = len(set(value["checksums"])) == 1
    print(f"{value['world_size']} ranks, final loss {value['loss']}, "
          f"weights equal on every rank: {same}")
    print(f"experiment {exp.id}: `steadyrun logs {exp.id} train --rank 1`, "
          f"`steadyrun report {exp.id}`")


if __name__ == "__main__":
    main()
