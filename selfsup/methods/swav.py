"""SwAV (Caron et al., 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments").

Each view is projected to an L2-normalised z and scored against K learnable prototypes (unit
vectors). For each global view, Sinkhorn-Knopp turns the batch's scores into soft cluster
assignments ("codes") that use every prototype equally often; every other view of the same
image (the other global view and all local crops, multi-crop) must then predict those codes
from its own scores: a swapped prediction, with no negatives and no target network. The
codes are computed without gradient; the prototypes are frozen for the first part of
training and re-normalised after every step. An optional queue of past projections gives
Sinkhorn more samples to spread over the prototypes when the batch is small; it is filled from
`queue_start` on and used once full.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import all_reduce_max, all_reduce_sum, world
from selfsup.methods import Method, MethodConfig, encode_views, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import cross_view_cross_entropy
from selfsup.methods.momentum import Queue, TrainingProgress


@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    # The paper's 3000 prototypes are for ImageNet's 1000 classes; 10 classes of small data need
    # fewer, and Sinkhorn can only spread a 256-image batch evenly over about as many prototypes.
    num_prototypes: int = 300
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    # Fractions of training (the trainer's progress): the paper freezes the prototypes for its first
    # epoch (about 1% of a 100-epoch run), before the codes carry any information.
    freeze_prototypes: float = 0.01
    queue_size: int = 0                # past projections per global view, used for the codes only; 0 = off
    queue_start: float = 0.15          # the paper starts its queue at epoch 15 of 100

    def validate(self) -> None:
        for key in ("proj_hidden_dim", "proj_dim", "sinkhorn_iterations"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_prototypes < 2:
            raise ValueError(f"method.num_prototypes must be >= 2, got {self.num_prototypes}")
        for key in ("temperature", "sinkhorn_epsilon"):
            if getattr(self, key) <= 0:
                raise ValueError(f"method.{key} must be > 0, got {getattr(self, key)}")
        if self.queue_size < 0:
            raise ValueError(f"method.queue_size must be >= 0 (0 = no queue), got {self.queue_size}")
        for key in ("freeze_prototypes", "queue_start"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"method.{key} is a fraction of training in [0, 1], got {getattr(self, key)}")


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes (SwAV, sec. 3.1 and its distributed_sinkhorn). scores: (B, K) -> (B, K), each row
    summing to 1. Q = exp(scores / eps) scaled to sum 1, then `iterations` rounds of: each prototype's
    column to 1/K, each sample's row to 1/B; finally rows scaled by B. Under torch.distributed the
    B samples of all ranks share the K prototypes."""
    with torch.autocast(scores.device.type, enabled=False):
        # In float64, after a global shift (it cancels in the first normalisation): exp() of cosines / eps
        # then neither overflows nor, for eps >= 0.01, underflows to a prototype column of zeros (0 / 0).
        scores = scores.double()
        q = torch.exp((scores - all_reduce_max(scores.max())) / epsilon)
        b, k = q.shape[0] * world().size, q.shape[1]
        q /= all_reduce_sum(q.sum())
        for _ in range(iterations):
            q /= all_reduce_sum(q.sum(dim=0, keepdim=True)) * k
            q /= q.sum(dim=1, keepdim=True) * b
        return (q * b).float()


def swav_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction (eq. 1 with multi-crop). scores: (V, B, K) prototype scores of all V views,
    global views first; codes: (G, B, K) Sinkhorn codes of the G global views (rows sum to 1, no gradient).

    L = 1/(G(V-1)) sum_{i<G} sum_{j != i} 1/B sum_b -sum_k q_i[b,k] log softmax(scores_j[b] / t)_k.
    """
    with torch.autocast(scores.device.type, enabled=False):     # softmax of scores / 0.1 wants fp32
        log_probs = F.log_softmax(scores.float() / temperature, dim=-1)
        return cross_view_cross_entropy(codes.detach().float(), log_probs)


@register_method("swav")
class SwAV(Method):
    config_class = SwAVConfig
    skips_parameters = True   # the prototypes are frozen for the first steps
    recipe = {
        # Multi-crop, the paper's 2x224 + 6x96 scaled to 28 px images, with four 12 px crops (not six)
        # for the CPU budget.
        "augment": {"local_crops": 4},
        "optim": {"weight_decay": 1e-6},      # the paper's LARS weight decay
    }

    def __init__(self, backbone, cfg: SwAVConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim])
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        self._normalize_prototypes()
        self.queues = nn.ModuleList([Queue(cfg.queue_size, cfg.proj_dim) for _ in range(self.num_views)]) \
            if cfg.queue_size else None
        self.progress = TrainingProgress()
        self._to_enqueue: torch.Tensor | None = None

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def loss(self, views: list[torch.Tensor]):
        g, b, progress = self.num_views, views[0].shape[0], self.progress.get()
        projected = self.projector(torch.cat(encode_views(self.backbone, views)))
        prototypes = self.prototypes.weight
        if progress < self.cfg.freeze_prototypes:
            prototypes = prototypes.detach()        # no gradient: the optimizer leaves them as they are
        with torch.autocast(projected.device.type, enabled=False):   # cosines / eps need more than bf16 digits
            z = F.normalize(projected.float(), dim=1)
            scores = (z @ prototypes.T).view(len(views), b, -1)
        with torch.no_grad():
            z_global = z[:g * b].detach().view(g, b, -1)
            use_queue = self.queues is not None and progress >= self.cfg.queue_start
            codes = []
            for i in range(g):
                s = scores[i].detach()
                # The queue joins once it is full, as in the authors' code (which waits for its last
                # row); Sinkhorn treats samples alike, so the ring's order does not matter.
                if use_queue and self.queues[i].full:
                    s = torch.cat([self.queues[i].items @ prototypes.detach().T, s])
                codes.append(sinkhorn(s, self.cfg.sinkhorn_epsilon, self.cfg.sinkhorn_iterations)[-b:])
            self._to_enqueue = z_global if use_queue else None
        codes = torch.stack(codes)
        loss = swav_loss(scores, codes, self.cfg.temperature)
        # log K when every image gets the same uniform code: the collapse equipartition cannot rule out.
        code_entropy = torch.special.entr(codes).sum(-1).mean()
        return loss, {"loss": loss.detach(), "code_entropy": code_entropy}

    def after_step(self, progress: float) -> None:
        self._normalize_prototypes()
        if self._to_enqueue is not None:
            for queue, z in zip(self.queues, self._to_enqueue):
                queue.push(z)
            self._to_enqueue = None
        self.progress.set(progress)
