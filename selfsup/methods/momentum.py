"""Mechanisms several methods share: a momentum (EMA) copy of a network, its momentum schedule,
a FIFO queue of embeddings (MoCo's negatives, NNCLR's support set, SwAV's feature queue), and
the training progress that schedules read, kept in the checkpoint."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(network: nn.Module) -> nn.Module:
    """A frozen copy of `network` to be moved by ema_update: no gradients, not in the optimizer."""
    target = copy.deepcopy(network)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float, copy_buffers: bool = True) -> None:
    """target <- m * target + (1 - m) * online for every parameter. Buffers (BN statistics) are copied
    from the online network, or with copy_buffers False left to the target's own forward passes (a
    teacher that is evaluated keeps statistics of its own weights and inputs, as DINO's)."""
    # One multi-tensor kernel each for the parameters and the buffers: a loop would launch one or two
    # small kernels per tensor on every step.
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1 - momentum)
    target_buffers = list(target.buffers()) if copy_buffers else []
    if target_buffers:
        torch._foreach_copy_(target_buffers, list(online.buffers()))


def cosine_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, sec. 3.2): m = 1 - (1 - base) * (cos(pi * progress) + 1) / 2,
    from `base` at progress 0 to `final` (1.0 in the paper) at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def forget_host_copy(module: nn.Module, incompatible_keys) -> None:
    """A load_state_dict post hook: the module's host copy of its buffers (`_host`) is read again from
    them when next needed. (A function, not a lambda, so the module still pickles.)"""
    module._host = None


def reread_fullness(queue: "Queue", incompatible_keys) -> None:
    """A Queue's load_state_dict post hook: its host copy of pointer and count is read again when next
    needed, and whether it is full is read now: a compiled step reads `full`, and a graph cannot read a
    device value lazily without breaking. (A function, not a lambda, so the module still pickles.)"""
    forget_host_copy(queue, incompatible_keys)
    queue._full = int(queue.count) == queue.size


class Queue(nn.Module):
    """A FIFO ring of the last `size` embeddings (size, dim), saved with the model's state.

    `push` writes without gradient and wraps around; `filled` says how many rows hold real
    entries, so a method can ignore the empty ones at the start of training, and `full` whether all
    do. The pointer and count follow from the pushes alone, so a host copy of them is kept (and re-read
    after a state dict is loaded): a push, `filled` or `full` then reads nothing back from the device,
    which on a GPU would wait for every step queued before it.
    """

    def __init__(self, size: int, dim: int, normalize: bool = True):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        init = torch.randn(size, dim)
        self.register_buffer("items", nn.functional.normalize(init, dim=1) if normalize else init)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._host: tuple[int, int] | None = (0, 0)          # (pointer, count)
        self._full = False
        self.register_load_state_dict_post_hook(reread_fullness)

    @property
    def size(self) -> int:
        return self.items.shape[0]

    # A compiled step reads `full` instead. Were it to read these, this keeps them out of the traced graph:
    # traced, the host copy would be a constant of the graph, and each push would compile it again.
    @torch.compiler.disable
    def _pointer_and_count(self) -> tuple[int, int]:
        if self._host is None:
            self._host = (int(self.pointer), int(self.count))
        return self._host

    @property
    def filled(self) -> int:
        return self._pointer_and_count()[1]

    @property
    def full(self) -> bool:
        """Whether every row holds an entry: a plain attribute, so torch.compile guards on it (one
        recompile when it turns True) instead of breaking the graph to read the count."""
        return self._full

    @torch.no_grad()
    def push(self, batch: torch.Tensor) -> None:
        """Enqueue (B, dim) rows, oldest overwritten first; B > size keeps the last `size` rows."""
        batch = batch.detach().to(self.items.dtype)[-self.size:]
        (start, count), n = self._pointer_and_count(), batch.shape[0]
        idx = (torch.arange(n, device=self.items.device) + start) % self.size
        self.items[idx] = batch
        self._host = ((start + n) % self.size, min(self.size, count + n))
        self._full = self._host[1] == self.size
        self.pointer.fill_(self._host[0])
        self.count.fill_(self._host[1])

    def contents(self) -> torch.Tensor:
        """The filled rows, oldest first."""
        pointer, filled = self._pointer_and_count()
        if filled < self.size:
            return self.items[:filled]
        return torch.roll(self.items, -pointer, dims=0)


class TrainingProgress(nn.Module):
    """The trainer's progress in [0, 1] as of the last after_step, saved with the model so a resumed
    run sees the schedules an unbroken one does. Reading it costs no device sync: a host copy is
    kept, and dropped whenever a state dict is loaded."""

    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.zeros((), dtype=torch.float64))
        self._host: float | None = 0.0
        self.register_load_state_dict_post_hook(forget_host_copy)

    def get(self) -> float:
        if self._host is None:
            self._host = float(self.value)
        return self._host

    def set(self, progress: float) -> None:
        self.value.fill_(progress)
        self._host = float(progress)
