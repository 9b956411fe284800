"""Multi-process training with torch.distributed, as torchrun launches it:

    torchrun --nproc_per_node 2 -m selfsup pretrain ...            # gloo on CPU, NCCL on CUDA

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins the process group from them (one
process without them: nothing to join, and every helper here is the identity). The trainer
wraps the trainable networks in DistributedDataParallel, so gradients are averaged; losses that
need the whole batch (negatives, batch statistics, Sinkhorn, centres) use `gather`, which keeps
gradients: each rank then computes the loss of the global batch, and the sum its backward takes
over ranks, with DDP's average, gives exactly the gradient of one process on the global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def setup(device_type: str) -> World:
    """Join the process group torchrun describes in the environment (gloo for CPU, NCCL for CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return world()


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    # Send and receive in one layout: NCCL's all_gather of channels_last tensors into empty_like
    # buffers returned them with their memory permuted (pytorch/pytorch#163483); MoCo gathers images.
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad):
        # Every rank computed the same global loss; the sum of their gradients for this rank's rows,
        # averaged again by DDP, is the single-process gradient.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world * B, ...), ranks in order, with gradients to this rank's rows."""
    if not active():
        return x
    if not x.requires_grad:
        return _all_gather(x)
    return _Gather.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (with gradients); x itself on one process."""
    return _AllReduceSum.apply(x) if active() else x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / dist.get_world_size() if active() else x


def broadcast_from_first(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's x on every rank (x itself on one process)."""
    if active():
        x = x.clone()
        dist.broadcast(x, src=0)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if active():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch over all ranks, on any
    device (torch's SyncBatchNorm runs on GPUs only); a plain batch norm on one process."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        wide = x.to(torch.promote_types(x.dtype, torch.float32))        # bf16 sums lose digits
        stats = all_reduce_sum(torch.cat([wide.sum(dims), wide.square().sum(dims), count.to(wide.dtype)]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean.view(shape).to(x.dtype)) * torch.rsqrt(var + self.eps).view(shape).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def synchronise_batch_norm(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm layer takes global-batch statistics: torch's SyncBatchNorm on CUDA, GlobalBatchNorm
    elsewhere; weights, buffers and requires_grad are kept."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            if child.affine:
                replacement.weight.requires_grad_(child.weight.requires_grad)
                replacement.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, replacement)
        else:
            synchronise_batch_norm(child, device_type)
    return module


# ----------------------------------------------------------------------------- sharded parameters (FSDP2)

def shard(root: nn.Module, device_type: str) -> nn.Module:
    """train.strategy=fsdp: shard the parameters (and their gradients and optimizer state) of `root`
    over the ranks with FSDP2's fully_shard: every module that declares `shard_unit = True` (a
    Transformer block) becomes a unit of its own, gathered only while it runs; the rest belongs to
    `root`, which must be the module whose forward the training step calls. In place; returns root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for unit in [m for m in root.modules() if getattr(m, "shard_unit", False)]:
        fully_shard(unit, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


def parameters_held(module: nn.Module) -> tuple[int, int]:
    """(parameters this rank stores, parameters of the model): equal without sharding."""
    from torch.distributed.tensor import DTensor
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())
    return held, sum(p.numel() for p in module.parameters())


def full_tensors(state: dict) -> dict:
    """A state dict with every sharded tensor (DTensor) gathered whole; every rank must call it, in the
    same order. Plain tensors pass through, so without sharding it costs nothing."""
    from torch.distributed.tensor import DTensor
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def shaped_like(state: dict, like: dict) -> dict:
    """Whole tensors read from a checkpoint, each sharded as the same entry of `like` (a state dict of the
    sharded model or optimizer) is; entries that are not sharded pass through."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    out = {}
    for k, v in state.items():
        current = like.get(k)
        if isinstance(current, DTensor) and v.shape == current.shape:
            # every rank read the same whole tensor, so each keeps its own shard without communicating
            v = distribute_tensor(v.to(current.device, current.dtype), current.device_mesh, current.placements,
                                  src_data_rank=None)
        out[k] = v
    return out


def whole(x: torch.Tensor) -> torch.Tensor:
    """A sharded scalar or tensor (a gradient norm under FSDP) as a plain tensor; others as they are."""
    from torch.distributed.tensor import DTensor
    return x.full_tensor() if isinstance(x, DTensor) else x
