"""Pretext tasks. One file per method holds its whole recipe; the trainer sees only this interface:

    method.backbone                    the encoder the pretext task trains
    method.evaluated_backbone          the encoder evaluations, export and fine-tuning read (the teacher
                                       for methods whose paper evaluates it)
    method.views(batch_u8, gen)        uint8 (B, C, H, W) (or the modality's samples) -> list of float views
    method.loss(views)                 -> (scalar loss, {name: scalar tensor or float} to log)
    method.after_step(progress)        EMA teachers, queues, schedules (progress in [0, 1])
    method.embed(x)                    features for evaluation
    method.embed_maps(x)               the backbone's stage outputs, for probes of unpooled features
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from selfsup.augment import AugmentConfig, eval_transform, multi_crop


@dataclass
class MethodConfig:
    """Fields every method has; a method's own config subclasses this."""
    name: str = "simclr"


class ModalityInputs(Protocol):
    """What a method's backbone reads: `views` (count augmented views of a batch, for pretraining) and
    `eval` (the one deterministic view every evaluation embeds)."""

    def views(self, batch: torch.Tensor, gen: torch.Generator, count: int) -> list[torch.Tensor]: ...

    def eval(self, batch: torch.Tensor) -> torch.Tensor: ...


class ImageInputs:
    """Images: `count` global crops (and augment.local_crops small ones), and the evaluation resize."""

    def __init__(self, augment_cfg: AugmentConfig):
        self.augment_cfg = augment_cfg

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator, count: int) -> list[torch.Tensor]:
        return multi_crop(batch_u8, self.augment_cfg, gen, count)

    def eval(self, batch_u8: torch.Tensor) -> torch.Tensor:
        return eval_transform(batch_u8, self.augment_cfg)


class Method(nn.Module):
    """Base for pretext tasks: holds the backbone and the view recipe; subclasses add heads and a loss."""

    config_class = MethodConfig
    modality = "image"       # the data the method's views are made from: image | text | tabular | interactions | audio
    # Other kinds of data the method trains on: their modality supplies the inputs `views` and `embed`
    # make (ModalityInputs), e.g. log-mel views of sound for the joint-embedding methods.
    other_modalities: tuple[str, ...] = ()
    packs_text = False       # text: train on the corpus cut into windows (text.pack=auto), not one row per document
    needs_documents = False  # text: only one row per document will do (text.pack=on is refused)
    # Settings of other config sections the method's paper needs, under the user's file and overrides:
    # e.g. {"augment": {"local_crops": 6}, "optim": {"name": "adamw"}}.
    recipe: dict = {}
    num_views = 2            # global views; augment.local_crops adds small ones after them
    sync_batchnorm = True    # with several processes, BN over the global batch (train.sync_batchnorm=auto)
    skips_parameters = False  # True when some trainable parameters get no gradient in some steps (DDP must know)
    # Whether batch norm normalises each view over its own batch (the official code of BYOL, SimSiam,
    # Barlow Twins, VICReg and MoCo v3 runs the network once per view) or over all views of the step
    # together (SimCLR, DINO, SwAV): see embed_views.
    batch_norm_per_view = False
    # Whether the loss itself spreads the embeddings out (contrastive, redundancy-reducing, clustering,
    # self-distillation) or predicts something from them (masked patches, rotations, tokens): the
    # online monitor's collapse warning holds each family to its own healthy range.
    spreads_embeddings = True
    language_model = False   # predicts tokens (summed_loss): held-out perplexity measures it
    generates = False        # writes text after a prompt (logits over a causal backbone): `selfsup generate`
    recommends = False       # scores every item as a user's next (next_item_scores): ranking metrics measure it
    needs_sentence_ends = False  # text: method.sentence_end_ids is filled from the tokenizer (BART's permutation)
    # Set to torch.channels_last by the trainer for conv nets: views and embed then hand the
    # backbone inputs in the layout its weights use.
    memory_format = torch.contiguous_format

    def __init__(self, backbone: nn.Module, cfg: MethodConfig, augment_cfg: AugmentConfig):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.augment_cfg = augment_cfg
        self.inputs: ModalityInputs = ImageInputs(augment_cfg)     # build_method sets another modality's

    @classmethod
    def modalities(cls) -> tuple[str, ...]:
        return (cls.modality,) + cls.other_modalities

    @classmethod
    def added_tokens(cls, cfg: MethodConfig) -> int:
        """Token ids the method adds above the tokenizer's vocabulary (T5's sentinels): the backbone's
        vocabulary is the tokenizer's plus these."""
        return 0

    def views(self, batch_u8: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        return [self._layout(v) for v in self.inputs.views(batch_u8, gen, self.num_views)]

    def loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after each optimizer step; methods with teachers or queues update them here."""

    # The learning rate of the parameters LARS steps without its trust ratio (biases, norm layers) as a
    # share of the schedule's: 1 but for a paper that sets it apart (Barlow Twins).
    bias_lr_scale = 1.0

    def constant_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters whose lr the paper keeps constant after warm-up instead of following the schedule."""
        return []

    @property
    def evaluated_backbone(self) -> nn.Module:
        """The encoder a user keeps: kNN, probes, fine-tuning, embeddings, export and the report read it.
        The trained backbone itself, unless the method's paper evaluates a momentum teacher (DINO)."""
        return self.backbone

    @torch.no_grad()
    def embed(self, batch_u8: torch.Tensor) -> torch.Tensor:
        return self.evaluated_backbone(self._layout(self.inputs.eval(batch_u8)))

    @torch.no_grad()
    def embed_maps(self, batch_u8: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stage outputs (B, C_i, H_i, W_i) for the view `embed` sees (convolutional backbones)."""
        backbone = self.evaluated_backbone
        if not hasattr(backbone, "stage_maps"):
            raise ValueError(f"{type(backbone).__name__} has no feature maps to probe; the map features "
                             "need a convolutional backbone (resnet18, resnet34, resnet50)")
        return backbone.stage_maps(self._layout(self.inputs.eval(batch_u8)))

    def use_channels_last(self) -> "Method":
        self.memory_format = torch.channels_last
        return self.to(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls):
        _REGISTRY[name] = cls
        return cls
    return add


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return _REGISTRY[name]


def encode_views(network: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """network(view) for every view, in one pass per view size, so BatchNorm sees all views of a
    size together (as the papers' multi-crop code does) and the big ones share one batch."""
    by_size: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        by_size.setdefault(tuple(v.shape[1:]), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(views)
    for group in by_size.values():
        for i, chunk in zip(group, network(torch.cat([views[i] for i in group])).chunk(len(group))):
            out[i] = chunk
    return out


def embed_views(backbone: nn.Module, head: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor],
                per_view: bool) -> torch.Tensor:
    """head(backbone(view)) for every view, stacked in view order (V * B, D). Jointly (per_view False)
    the backbone runs once per view size and the head once over all views, so each batch norm layer
    sees every view of the step together; per view, each view runs through both on its own and is
    normalised by its own batch's statistics."""
    if per_view:
        return torch.cat([head(backbone(v)) for v in views])
    return head(torch.cat(encode_views(backbone, views)))


def _import_all_methods() -> None:
    """Every module in this package registers its method on import; a new method is just a new file."""
    import importlib
    import pkgutil
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_all_methods()
