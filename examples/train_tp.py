"""Tensor parallelism (Megatron-style MLP blocks) with fastreg's fused ops on DTensors.

    torchrun --standalone --nproc_per_node=2 examples/train_tp.py            # CPU: gloo
    torchrun --standalone --nproc_per_node=2 examples/train_tp.py --steps 50  # GPUs: NCCL, one per rank

Each block is fc1 (ColwiseParallel) -> fastreg bias + GELU + dropout, its bias sharded like
fc1's columns -> fc2 (RowwiseParallel) -> fastreg dropout + residual. The fused op runs on
each rank's columns; its dropout mask is, bit for bit, the mask one process draws for the
whole hidden activation (fastreg's draws depend on the element's place in the whole tensor,
not on the shard), so no model-parallel RNG tracker is needed: seed the ranks alike.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import fastreg
import fastreg.functional as FR


class Block(torch.nn.Module):
    def __init__(self, d, h, p):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, h, bias=False)
        self.act = fastreg.nn.BiasActDropout(h, "gelu", p)
        self.fc2 = torch.nn.Linear(h, d)
        self.p = p

    def forward(self, x):
        return FR.dropout_add(self.fc2(self.act(self.fc1(x))), x, self.p)


def parallelize(block, mesh):
    parallelize_module(
        block,
        mesh,
        {"fc1": ColwiseParallel(use_local_output=False), "fc2": RowwiseParallel(input_layouts=Shard(-1))},
    )
    block.act.bias = torch.nn.Parameter(distribute_tensor(block.act.bias.detach(), mesh, [Shard(0)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device_type = "cuda" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    mesh = init_device_mesh(device_type, (world,))

    torch.manual_seed(0)  # every rank alike: the same weights and the same draws
    d, h = 64, 256
    model = torch.nn.Sequential(Block(d, h, p=0.1), Block(d, h, p=0.1), torch.nn.Linear(d, 1)).to(device_type)
    for block in model[:2]:
        parallelize(block, mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)  # DTensor and plain parameters
    data = torch.Generator().manual_seed(1)  # every rank sees the whole batch (tensor parallel)
    teacher = torch.randn(d, 1, generator=data)
    for step in range(args.steps):
        x = torch.randn(16, 8, d, generator=data)
        loss = torch.nn.functional.mse_loss(model(x.to(device_type)), (x @ teacher).tanh().to(device_type))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
