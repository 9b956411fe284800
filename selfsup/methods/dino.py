"""DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation with no labels: a student (backbone + DINO head) sees every view, global and
local (multi-crop), and learns to match, for each other view, the output distribution a teacher
gives the two global views. The teacher is a momentum (EMA) copy of the student and gets no
gradient. Collapse is avoided by centering the teacher's outputs (a running mean c, subtracted)
and sharpening them (a low teacher temperature, warmed up from 0.04 to 0.07).

The head is a 3-layer MLP (GELU) to a 256-d bottleneck, L2-normalised, then a weight-normalised
linear layer without bias (its weight rows fixed to unit norm, as the paper's norm_last_layer)
to K output dimensions ("prototypes").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.augment import ASYMMETRIC_VIEWS
from selfsup.distributed import all_reduce_mean
from selfsup.methods import Method, MethodConfig, encode_views, register_method
from selfsup.methods.heads import mlp
from selfsup.methods.losses import cross_view_cross_entropy
from selfsup.methods.momentum import TrainingProgress, cosine_momentum, ema_update, momentum_copy


@dataclass
class DINOConfig(MethodConfig):
    name: str = "dino"
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    # The paper's 65536 output dimensions are for ImageNet; 10 classes of small data need far fewer,
    # and the head's last layer is a large share of the compute at 20 px.
    out_dim: int = 4096
    # BN in the head's MLP (the paper's use_bn_in_head, off for its ViTs). A small ResNet's features are
    # nearly alike across images at initialisation; without BN the centred teacher then stays uniform
    # (collapse: teacher entropy = log K on the tiny test set), with BN it does not.
    head_batch_norm: bool = True
    student_temperature: float = 0.1
    warmup_teacher_temperature: float = 0.04
    teacher_temperature: float = 0.07
    teacher_temperature_warmup: float = 0.3   # fraction of training: the paper warms up over 30 of 100 epochs
    center_momentum: float = 0.9
    # The paper's 0.996 is for ~125k steps; a default run here has ~700, and a teacher that trails the
    # student by ~1/(1 - m) = 100 steps instead of 250 keeps up with it.
    base_momentum: float = 0.99
    final_momentum: float = 1.0
    # The student's last layer gets no gradient for this fraction of training (the paper: its first
    # epoch of 100), which the paper finds steadies the start.
    freeze_last_layer: float = 0.01
    # The encoder evaluations read: the paper's teacher, or the student. In short runs the teacher, an
    # average over the student's last ~1/(1 - m) steps, trails it (docs/methods.md measures both).
    evaluate: str = "teacher"

    def validate(self) -> None:
        if self.evaluate not in ("teacher", "student"):
            raise ValueError(f"method.evaluate must be teacher or student, got {self.evaluate!r}")
        for key in ("hidden_dim", "bottleneck_dim", "out_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("student_temperature", "warmup_teacher_temperature", "teacher_temperature"):
            if getattr(self, key) <= 0:
                raise ValueError(f"method.{key} must be > 0, got {getattr(self, key)}")
        for key in ("teacher_temperature_warmup", "freeze_last_layer"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"method.{key} is a fraction of training in [0, 1], got {getattr(self, key)}")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ValueError(f"method.center_momentum must lie in [0, 1), got {self.center_momentum}")
        if not 0.0 <= self.base_momentum <= self.final_momentum <= 1.0:
            raise ValueError("method.base_momentum and method.final_momentum must satisfy "
                             f"0 <= base <= final <= 1, got {self.base_momentum} and {self.final_momentum}")


def teacher_temperature(cfg: DINOConfig, progress: float) -> float:
    """Linear from warmup_teacher_temperature at progress 0 to teacher_temperature at
    progress teacher_temperature_warmup, constant after."""
    if progress >= cfg.teacher_temperature_warmup:
        return cfg.teacher_temperature
    fraction = progress / cfg.teacher_temperature_warmup
    return cfg.warmup_teacher_temperature + (cfg.teacher_temperature - cfg.warmup_teacher_temperature) * fraction


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temperature: float = 0.1,
              teacher_temperature: float = 0.04) -> torch.Tensor:
    """DINO's loss (eq. 3 with centering). student: (V, B, K) outputs for all V views, the G global views
    first; teacher: (G, B, K) teacher outputs of the global views (no gradient); center: (K,).

    L = mean over pairs (i < G, j != i) of 1/B sum_b H(softmax((t_i - c)/tau_t), log_softmax(s_j/tau_s)).
    """
    if student.dim() != 3 or teacher.dim() != 3 or center.shape != student.shape[-1:]:
        raise ValueError(f"dino_loss expects student (V, B, K), teacher (G, B, K), center (K,); got "
                         f"{tuple(student.shape)}, {tuple(teacher.shape)}, {tuple(center.shape)}")
    with torch.autocast(student.device.type, enabled=False):     # softmax at tau 0.04 needs fp32
        targets = F.softmax((teacher.detach().float() - center.float()) / teacher_temperature, dim=-1)
        log_probs = F.log_softmax(student.float() / student_temperature, dim=-1)
        return cross_view_cross_entropy(targets, log_probs)


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU) -> L2 normalise -> weight-normalised Linear to out_dim.

    The last layer's rows are normalised to unit length on every forward (weight norm with its
    gain fixed to 1); with freeze_last_layer=True it gets no gradient."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int, batch_norm: bool = False):
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim], batch_norm=batch_norm)
        for i, layer in enumerate(self.mlp):
            if isinstance(layer, nn.ReLU):
                self.mlp[i] = nn.GELU()
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        weight = self.last_layer.weight.detach() if freeze_last_layer else self.last_layer.weight
        x = self.mlp(x)
        with torch.autocast(x.device.type, enabled=False):    # cosines / 0.04 need more than bf16's 3 digits
            return F.linear(F.normalize(x.float(), dim=-1), F.normalize(weight.float(), dim=1))


@register_method("dino")
class DINO(Method):
    config_class = DINOConfig
    skips_parameters = True   # the head's last layer is frozen for the first steps
    recipe = {
        # Multi-crop, the paper's 2x224 + 10x96 scaled to 28 px images, with four 12 px local crops
        # (not ten) for the CPU budget.
        "augment": {"local_crops": 4, "views": ASYMMETRIC_VIEWS},
    }

    def __init__(self, backbone, cfg: DINOConfig, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        self.head = DINOHead(backbone.feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                             cfg.head_batch_norm)
        self.teacher_backbone = momentum_copy(backbone)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.progress = TrainingProgress()
        self.momentum = cfg.base_momentum
        self._batch_center: torch.Tensor | None = None

    @property
    def evaluated_backbone(self) -> nn.Module:
        """The teacher, as the paper evaluates it (sec. 3.1 and 5.2: in its 100-epoch runs the momentum
        teacher is better than the student throughout training), unless method.evaluate=student."""
        return self.teacher_backbone if self.cfg.evaluate == "teacher" else self.backbone

    def loss(self, views: list[torch.Tensor]):
        g, b, progress = self.num_views, views[0].shape[0], self.progress.get()
        student = self.head(torch.cat(encode_views(self.backbone, views)),
                            freeze_last_layer=progress < self.cfg.freeze_last_layer).view(len(views), b, -1)
        with torch.no_grad():
            teacher = self.teacher_head(torch.cat(encode_views(self.teacher_backbone, views[:g]))).view(g, b, -1)
            teacher = teacher.float()
            self._batch_center = teacher.mean(dim=(0, 1))      # the centre moves in after_step
            tau_t = teacher_temperature(self.cfg, progress)
            entropy = torch.special.entr(F.softmax((teacher - self.center) / tau_t, dim=-1)).sum(-1).mean()
        loss = dino_loss(student, teacher, self.center, self.cfg.student_temperature, tau_t)
        # loss = teacher entropy + KL(teacher || student): the schedule and centring raise the first
        # (towards log K at collapse), learning lowers the second.
        return loss, {"loss": loss.detach(), "kl": loss.detach() - entropy, "teacher_entropy": entropy,
                      "teacher_temperature": tau_t, "momentum": self.momentum}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # Functions of progress alone, so a resumed run moves the teacher exactly as an unbroken one.
        self.momentum = cosine_momentum(self.cfg.base_momentum, progress, self.cfg.final_momentum)
        # Parameters only, as the official code: the teacher's batch-norm statistics come from its own
        # forward passes over the global views, and they are what its evaluation normalises with.
        ema_update(self.teacher_backbone, self.backbone, self.momentum, copy_buffers=False)
        ema_update(self.teacher_head, self.head, self.momentum, copy_buffers=False)
        if self._batch_center is not None:
            batch_center = all_reduce_mean(self._batch_center)     # the mean over all ranks' batches
            self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)
            self._batch_center = None
        self.progress.set(progress)
