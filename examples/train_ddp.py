"""Data-parallel training with fastreg modules under DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py            # CPU: gloo
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --steps 50  # GPUs: NCCL, one per rank

Every rank is seeded alike and runs its slice of each global batch inside
fastreg.distributed.batch_offset, so the dropout, drop path and fused bias+activation+dropout
masks of the whole run are those one process draws for the whole batch: the run does not
change with the number of ranks (up to float summation order). Seeding the ranks apart
instead (torch.manual_seed(seed + rank)) gives each rank its own draws.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import fastreg


def make_model(features=32, hidden=128, classes=10):
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden, bias=False),
        fastreg.nn.BiasActDropout(hidden, "gelu", p=0.1),  # dropout(gelu(x + bias)), one kernel
        fastreg.nn.DropConnectLinear(hidden, hidden, p=0.2),
        fastreg.nn.PReLU(hidden),
        fastreg.nn.DropPath(0.1),
        fastreg.nn.Dropout(0.1),
        torch.nn.Linear(hidden, classes),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=64)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} is not a multiple of {world} ranks")
    local = args.global_batch // world

    torch.manual_seed(0)  # every rank alike: the same weights and the same draws
    model = DistributedDataParallel(make_model().to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(1)  # a synthetic task, the same global batches everywhere
    teacher = torch.randn(32, 10, generator=data)
    for step in range(args.steps):
        x = torch.randn(args.global_batch, 32, generator=data)
        y = (x @ teacher).argmax(1)
        mine = slice(rank * local, (rank + 1) * local)
        x, y = x[mine].to(device), y[mine].to(device)
        with fastreg.distributed.batch_offset(rank * local):  # this rank's rows of the global batch
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"step {step:3d}  loss {mean.item() / world:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
