"""Unsupervised SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings").

The batch passes twice through the backbone in train mode; the two dropout masks are the only
augmentation, so the two pooled embeddings of a sentence form the positive pair and the other
sentences' second embeddings are the negatives. The loss is the paper's eq. 1 (the official code's
cross-entropy over z1 @ z2.T / t), i.e. `info_nce` with in-batch keys, at t = 0.05:

    l_i = -log exp(sim(z1_i, z2_i)/t) / sum_j exp(sim(z1_i, z2_j)/t)

We keep the paper's form, rather than SimCLR's NT-Xent (which adds the 2N-2 same-view candidates and
the mirrored anchors), because t = 0.05 and the reported results belong to it. An MLP projection head
(off by default) is available; the embedding is always the backbone's pooled output. Any text backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.distributed import gather
from selfsup.methods import Method, MethodConfig, encode_views, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import info_nce


@dataclass
class SimCSEConfig(MethodConfig):
    name: str = "simcse"
    temperature: float = 0.05
    projector: bool = False            # an MLP head on the pooled embedding during pretraining
    proj_hidden_dim: int = 512
    proj_dim: int = 128

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"method.temperature must be > 0, got {self.temperature}")
        if self.projector and (self.proj_hidden_dim < 1 or self.proj_dim < 1):
            raise ValueError(f"method.proj_hidden_dim and proj_dim must be >= 1, got {self.proj_hidden_dim} "
                             f"and {self.proj_dim}")


@register_method("simcse")
class SimCSE(Method):
    config_class = SimCSEConfig
    modality = "text"
    recipe = {
        "backbone": {"name": "transformer"},
        "optim": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.01, "warmup_epochs": 0.2, "grad_clip": 1.0},
    }

    def __init__(self, backbone, cfg: SimCSEConfig, augment_cfg=None):
        super().__init__(backbone, cfg, augment_cfg)
        if not hasattr(backbone, "tokens"):
            raise ValueError(f"simcse needs a text backbone (transformer, gpt, lstm, gru), got "
                             f"{type(backbone).__name__}")
        self.projector = mlp([backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim]) if cfg.projector else None

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """The same ids twice: the randomness is the backbone's dropout, not the input."""
        ids = batch.long()
        return [ids, ids]

    def loss(self, views: list[torch.Tensor]):
        # One pass over both copies (as the official code does); each row gets its own dropout mask.
        z = torch.cat(encode_views(self.backbone, views))
        if self.projector is not None:
            z = self.projector(z)
        z1, z2 = (gather(half) for half in z.chunk(2))      # negatives from every rank's batch
        loss = info_nce(z1, z2, None, self.cfg.temperature)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backbone(batch)
