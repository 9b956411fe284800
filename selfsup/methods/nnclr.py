"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet, Zisserman, 2021, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations").

Like SimCLR, but the positive of a view is not its twin: it is the nearest neighbour (cosine) of
the view's projection in a support set, a queue of projections of earlier batches. The neighbour
of view 1 is contrasted with the prediction of view 2 against the batch's other predictions, and
vice versa (the paper's Algorithm 1). After the step view 1's projections join the support set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, encode_views, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import info_nce
from selfsup.methods.momentum import Queue


@dataclass
class NNCLRConfig(MethodConfig):
    name: str = "nnclr"
    temperature: float = 0.1
    # The paper's 98304 is more than Fashion-MNIST's 60000 images: a view's nearest neighbour would
    # often be its own image's projection from the last epoch. 8192 (32 batches of 256) holds
    # only recent projections, from a network close to the current one.
    queue_size: int = 8192
    # The paper's 2048 / 4096-wide hidden layers would cost about as much as the default backbone at 20 px.
    proj_hidden_dim: int = 1024
    pred_hidden_dim: int = 1024
    proj_dim: int = 256

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if self.queue_size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {self.queue_size}")
        for key in ("proj_hidden_dim", "pred_hidden_dim", "proj_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be >= 1, got {getattr(self, key)}")


@torch.no_grad()
def nearest_neighbours(z: torch.Tensor, support: torch.Tensor, filled: torch.Tensor | int | None = None) -> torch.Tensor:
    """For each row of z (N, D), the support row (of (Q, D)) with the highest cosine similarity, L2-normalised.
    Only rows [0, filled) of the support set count; with none filled, each row of z is its own neighbour.

    NN(z, Q) = argmax_{q in Q} <z/|z|, q/|q|>
    """
    z, support = F.normalize(z.float(), dim=1), F.normalize(support.float(), dim=1)
    scores = z @ support.T
    if filled is not None:
        filled = torch.as_tensor(filled, device=z.device)
        # Rows are written from index 0, so the filled ones are [0, filled) until the queue wraps.
        scores = scores.masked_fill(torch.arange(support.shape[0], device=z.device) >= filled, float("-inf"))
        return torch.where(filled > 0, support[scores.argmax(dim=1)], z)
    return support[scores.argmax(dim=1)]


def nnclr_loss(nn1: torch.Tensor, nn2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """NNCLR's symmetric loss. nn1, nn2: (N, D) support-set neighbours of views 1 and 2's projections;
    p1, p2: (N, D) the views' predictions.

    L(nn, p) = -1/N sum_i log exp(nn_i.p_i/t) / sum_k exp(nn_i.p_k/t) (cosine sims); loss = (L(nn1, p2) + L(nn2, p1)) / 2.
    """
    return (info_nce(nn1, p2, None, temperature) + info_nce(nn2, p1, None, temperature)) / 2


@register_method("nnclr")
class NNCLR(Method):
    config_class = NNCLRConfig

    def __init__(self, backbone, cfg: NNCLRConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        if augment_cfg.local_crops:
            raise ValueError(f"{cfg.name} compares exactly two views; set augment.local_crops=0")
        # The paper's heads: a 3-layer projector with BN on every layer, a 2-layer predictor.
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_hidden_dim, cfg.proj_dim],
                             last_batch_norm=True)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim])
        self.support = Queue(cfg.queue_size, cfg.proj_dim)
        self._to_enqueue: torch.Tensor | None = None

    def loss(self, views: list[torch.Tensor]):
        z = self.projector(torch.cat(encode_views(self.backbone, views)))
        p1, p2 = self.predictor(z).chunk(2)
        p1, p2 = gather(p1), gather(p2)                       # negatives and support set from every rank
        z1, z2 = (gather(half) for half in z.detach().float().chunk(2))
        # The count is read as a tensor: no host sync; the neighbours carry no gradient (a queue lookup).
        nn1 = nearest_neighbours(z1, self.support.items, self.support.count)
        nn2 = nearest_neighbours(z2, self.support.items, self.support.count)
        loss = nnclr_loss(nn1, nn2, p1, p2, self.cfg.temperature)
        self._to_enqueue = F.normalize(z1, dim=1)
        # nn_agreement: the share of images whose two views find the same neighbour.
        return loss, {"loss": loss.detach(), "nn_agreement": (nn1 == nn2).all(dim=1).float().mean()}

    def after_step(self, progress: float) -> None:
        if self._to_enqueue is not None:
            self.support.push(self._to_enqueue)
            self._to_enqueue = None
