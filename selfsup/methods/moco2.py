"""MoCo v2 (Chen, Fan, Girshick, He, 2020, "Improved Baselines with Momentum Contrastive Learning"),
on MoCo (He, Fan, Wu, Xie, Girshick, 2020, "Momentum Contrast for Unsupervised Visual Representation Learning").

A query encoder (backbone + 2-layer MLP head) and a key encoder, its exponential moving average,
embed two views of each image. InfoNCE pulls each query towards the key of its own image and away
from a queue of keys of earlier batches; the keys are enqueued after the step, without gradient.
With `symmetric` (MoCo v3's practice, Chen et al. 2021) both views serve as query in turn.

Shuffle-BN (MoCo sec. 3.3): batch norm runs per GPU, and the keys are shuffled across the GPUs
before the key encoder and put back after it, so that a key is normalised with other images than its
query is; otherwise the positive could be found from the sub-batch's statistics. Under torchrun each
process is one such GPU and the keys are shuffled across processes; on one process the batch is cut
into `shuffle_bn_splits` sub-batches, each normalised on its own, and the keys' sub-batches are cut
from a shuffled order. The order comes from the step's generator, so a resumed run shuffles alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed
from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import info_nce
from selfsup.methods.momentum import Queue, ema_update, momentum_copy


@dataclass
class MoCo2Config(MethodConfig):
    name: str = "moco2"
    # Not the paper's 0.2: at the short budgets here the sharper 0.1 (SimCLR's default) learns more
    # (docs/methods.md).
    temperature: float = 0.1
    # The paper's 0.999 moves the key encoder too slowly for the few thousand steps of a short
    # small-data run; 0.99 is the usual setting there (e.g. CIFAR-10 reproductions).
    momentum: float = 0.99
    # The paper's 65536 is more than Fashion-MNIST's 60000 images: a query would meet its own
    # image's key from the last epoch among the negatives. 4096 (16 batches of 256) holds only
    # recent keys, from a key encoder close to the current one.
    queue_size: int = 4096
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    symmetric: bool = True
    # The paper's head is fc-ReLU-fc; true puts BN after the hidden fc (as SimCLR's and MoCo v3's).
    proj_batch_norm: bool = False
    # One process: the sub-batches batch norm runs over (the paper's 8 GPUs of 32 images); 1 = the whole
    # batch, which turns Shuffle-BN off. Under torchrun each process is one sub-batch.
    shuffle_bn_splits: int = 4

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"method.momentum must be in [0, 1), got {self.momentum}")
        if self.queue_size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {self.queue_size}")
        if self.shuffle_bn_splits < 1:
            raise ValueError(f"method.shuffle_bn_splits must be >= 1, got {self.shuffle_bn_splits}")
        if self.proj_hidden_dim < 1 or self.proj_dim < 1:
            raise ValueError(f"method.proj_hidden_dim and method.proj_dim must be >= 1, "
                             f"got {self.proj_hidden_dim} and {self.proj_dim}")


def moco_loss(q1: torch.Tensor, k2: torch.Tensor, queue: torch.Tensor, temperature: float,
              q2: torch.Tensor | None = None, k1: torch.Tensor | None = None) -> torch.Tensor:
    """MoCo's InfoNCE with a queue of negatives. q1, k2: (N, D) queries and their keys; queue: (K, D);
    q2, k1: the swapped pair for the symmetric loss, or None.

    L = -log exp(q.k+/t) / (exp(q.k+/t) + sum_{k- in queue} exp(q.k-/t)); symmetric: (L(q1, k2) + L(q2, k1)) / 2.
    """
    loss = info_nce(q1, k2, queue, temperature)
    if q2 is None:
        return loss
    return (loss + info_nce(q2, k1, queue, temperature)) / 2


def split_batch(network: nn.Module, x: torch.Tensor, splits: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """network(x) with batch norm over `splits` sub-batches of x, as over the GPUs of the paper's
    setup. With `order` (a permutation of x's rows) the sub-batches are cut from x[order] and the
    output is put back in x's order: Shuffle-BN on one process."""
    if order is not None:
        x = x[order]
    out = torch.cat([network(chunk) for chunk in x.chunk(splits)])
    return out[order.argsort()] if order is not None else out


def shuffled_across_ranks(network: nn.Module, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN over processes: every rank's batch x (B, ...) is gathered, `order` (a permutation of
    the world * B rows, the same on every rank) deals them out again, each rank runs `network` (no
    gradient) on its share, and the outputs go back to the rank and row they came from."""
    rank, rows = distributed.world().rank, x.shape[0]
    mine = gather(x)[order][rank * rows:(rank + 1) * rows]
    return gather(network(mine))[order.argsort()][rank * rows:(rank + 1) * rows]


@register_method("moco2")
class MoCo2(Method):
    config_class = MoCo2Config
    # MoCo keeps batch norm per GPU, with the keys shuffled across them (Shuffle-BN).
    sync_batchnorm = False
    # The optimizer stays the library's LARS (tuned for SimCLR's short runs); the paper's SGD at
    # lr 0.03 per 256 images is a 200-epoch schedule. Like every image method it trains for the
    # shared train.minutes budget.

    def __init__(self, backbone, cfg: MoCo2Config, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError(f"{cfg.name} compares exactly two views; set augment.local_crops=0")
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim], batch_norm=cfg.proj_batch_norm)
        self.key_backbone = momentum_copy(backbone)
        self.key_projector = momentum_copy(self.projector)
        self.queue = Queue(cfg.queue_size, cfg.proj_dim)
        self._keys_to_enqueue: torch.Tensor | None = None

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[view 1, view 2, the order the keys are shuffled in (a permutation of every process's rows)]."""
        order = torch.randperm(batch_u8.shape[0] * distributed.world().size, generator=gen, device=batch_u8.device)
        return super().views(batch_u8, gen) + [order]

    def loss(self, views: list[torch.Tensor]):
        *images, order = views
        # Symmetric: both views through both encoders; else view 1 is the query, view 2 the key.
        query_views, key_views = (images, images) if self.cfg.symmetric else (images[:1], images[1:])
        several = distributed.active()
        splits = 1 if several else self.cfg.shuffle_bn_splits       # under torchrun a rank is a sub-batch

        def query_encoder(x):
            return self.projector(self.backbone(x))

        def key_encoder(x):
            return self.key_projector(self.key_backbone(x))
        q = torch.cat([split_batch(query_encoder, v, splits) for v in query_views])
        with torch.no_grad():
            if several:
                order = distributed.broadcast_from_first(order)          # one shuffle for every rank
                k = torch.cat([shuffled_across_ranks(key_encoder, v, order) for v in key_views])
            else:
                k = torch.cat([split_batch(key_encoder, v, splits, order) for v in key_views])
            k = F.normalize(k.float(), dim=1)
        negatives = self.queue.items       # all of it from step 0, random unit vectors until filled (as MoCo)
        if self.cfg.symmetric:
            (q1, q2), (k1, k2) = q.chunk(2), k.chunk(2)
            loss = moco_loss(q1, k2, negatives, self.cfg.temperature, q2, k1)
        else:
            k2 = k
            loss = moco_loss(q, k2, negatives, self.cfg.temperature)
        # One key per image, so the queue holds queue_size different images.
        self._keys_to_enqueue = gather(k2)      # every rank's keys, so all ranks hold the same queue
        return loss, {"loss": loss.detach()}

    def after_step(self, progress: float) -> None:
        ema_update(nn.ModuleList([self.key_backbone, self.key_projector]),
                   nn.ModuleList([self.backbone, self.projector]), self.cfg.momentum)
        if self._keys_to_enqueue is not None:
            self.queue.push(self._keys_to_enqueue)
            self._keys_to_enqueue = None
