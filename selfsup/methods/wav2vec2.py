"""wav2vec 2.0 (Baevski et al. 2020, "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations"), section 3.

The waveform encoder (selfsup/backbones/audio.py) turns a clip into latent frames z_t every 20 ms. Spans
of mask_length frames, from starts drawn without replacement (mask_prob of the frames), are replaced by a
learned mask embedding before the Transformer, whose output c_t at a masked frame must pick out the
quantised latent q_t of that frame among K distractors q~, the quantised latents of other masked frames of
the same clip:

    L_m = -log exp(sim(c_t, q_t) / kappa) / sum_{q~ in {q_t} + distractors} exp(sim(c_t, q~) / kappa)

with sim the cosine similarity (after a final projection of c_t) and kappa = 0.1. The quantiser has G
codebooks of V entries: the layer-normed latent gives logits l (G, V); a straight-through Gumbel softmax at
temperature tau picks one entry per codebook, the G entries are concatenated and projected linearly. The
diversity loss spreads the use of the entries, with p_g the softmax of l (no noise) averaged over the
batch's frames:

    L_d = 1 / (G V) * sum_g sum_v p_gv log p_gv          (the negative entropy, eq. 4)

L = L_m + alpha L_d + feature_penalty * mean(z^2) (the paper's L2 penalty on the feature encoder's output).
tau falls geometrically from 2 to 0.5 over the run (the paper: by 0.999995 per update over 400k updates).
A distractor whose quantised vector equals the target's is left out of the softmax (as the authors'
code does), and distractors are drawn with replacement, so short clips with few masked frames work too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.methods import Method, MethodConfig, register_method
from selfsup.methods.masking import at_chosen, ignoring_unreal


@dataclass
class Wav2Vec2Config(MethodConfig):
    name: str = "wav2vec2"
    mask_prob: float = 0.065           # share of the frames that start a masked span
    mask_length: int = 10              # frames a span masks (200 ms)
    # The paper's K = 100 distractors in a space of 256 numbers make 164 M numbers for the ~6,400 masked frames
    # of a batch of 256 one-second clips, and a step 3.3 times slower on 2 CPU cores than 20 in 128.
    negatives: int = 20                # distractors per masked frame (K; the paper: 100)
    codebooks: int = 2                 # G
    codebook_entries: int = 320        # V
    final_dim: int = 128               # the space c_t and q_t are compared in (the paper's base model: 256)
    temperature: float = 0.1           # kappa
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    diversity_weight: float = 0.1      # alpha
    feature_penalty: float = 10.0

    def validate(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"method.mask_prob must lie in (0, 1), got {self.mask_prob}")
        if self.mask_length < 2:
            raise ValueError(f"method.mask_length must be >= 2 (a masked frame needs another as distractor), "
                             f"got {self.mask_length}")
        if self.negatives < 1 or self.codebooks < 1 or self.codebook_entries < 2:
            raise ValueError("method.negatives and method.codebooks must be >= 1 and method.codebook_entries >= 2")
        if self.final_dim % self.codebooks:
            raise ValueError(f"method.final_dim ({self.final_dim}) must be divisible by method.codebooks "
                             f"({self.codebooks}): each codebook holds a slice of the quantised vector")
        if self.temperature <= 0 or not 0 < self.gumbel_end <= self.gumbel_start:
            raise ValueError("method.temperature must be > 0 and 0 < method.gumbel_end <= method.gumbel_start")


def span_mask(batch: int, frames: int, mask_prob: float, mask_length: int, u: torch.Tensor) -> torch.Tensor:
    """(batch, frames) bool: round(mask_prob * frames) (at least 1) spans of mask_length frames (fewer if the
    clip is shorter), their starts the first of a random order of the possible starts given by u
    (batch, frames)."""
    length = min(mask_length, frames)
    possible = frames - length + 1
    starts = u[:, :possible].argsort(1)[:, :max(1, min(possible, round(mask_prob * frames)))]
    covered = (starts[..., None] + torch.arange(length, device=u.device)).flatten(1)
    return torch.zeros(batch, frames, dtype=torch.bool, device=u.device).scatter(1, covered, True)


def distractor_frames(mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, T, K) frame indices: for each masked frame, K other masked frames of the same clip, drawn
    uniformly with replacement by u (B, T, K) in [0, 1). Rows of unmasked frames are meaningless.
    Every clip needs two masked frames or more, which spans of two frames or more give (span_mask with
    mask_length >= 2 and frames >= 2: Wav2Vec2Config.validate, run by the method, and views check them);
    checking the mask itself would wait for the device every step."""
    counts = mask.sum(1)
    masked_first = (~mask).to(torch.int8).argsort(dim=1, stable=True)      # the masked frames' indices, in order
    own = (mask.cumsum(1) - 1).clamp_min(0)                              # each masked frame's rank among them
    draw = (u * (counts - 1)[:, None, None]).long()
    draw = draw + (draw >= own[..., None]).long()                        # skip the frame itself
    return masked_first.gather(1, draw.flatten(1)).view_as(draw)


def contrastive_loss(context: torch.Tensor, targets: torch.Tensor, distractors: torch.Tensor,
                     temperature: float, real: torch.Tensor | None = None) -> torch.Tensor:
    """L_m over M masked frames: context (M, D), targets (M, D), distractors (M, K, D); the mean over the
    rows that are real (bool (M,), None: all; see at_chosen)."""
    candidates = torch.cat([targets[:, None], distractors], 1)
    logits = F.cosine_similarity(context[:, None].float(), candidates.float(), dim=-1) / temperature
    same = (distractors == targets[:, None]).all(-1)
    logits[:, 1:] = logits[:, 1:].masked_fill(same, float("-inf"))
    first = torch.zeros(len(logits), dtype=torch.long, device=logits.device)    # the target is candidate 0
    return F.cross_entropy(logits, ignoring_unreal(first, real))


def codebook_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """(G,): the entropy of each codebook's mean use over the N frames of probabilities (N, G, V)."""
    mean = probabilities.float().mean(0)
    return -(mean * torch.log(mean.clamp_min(1e-9))).sum(-1)


def diversity_loss(entropy: torch.Tensor, entries: int) -> torch.Tensor:
    """L_d = sum_g sum_v p_gv log p_gv / (G V) = -sum_g H_g / (G V), from codebook_entropy's (G,)."""
    return -entropy.sum() / (entropy.numel() * entries)


class GumbelQuantizer(nn.Module):
    """Layer-normed latents (B, T, C) -> quantised vectors (B, T, final_dim) and the codebook probabilities."""

    def __init__(self, channels: int, codebooks: int, entries: int, final_dim: int):
        super().__init__()
        self.codebooks, self.entries = codebooks, entries
        self.logits = nn.Linear(channels, codebooks * entries)
        nn.init.normal_(self.logits.weight, std=1.0)
        nn.init.zeros_(self.logits.bias)
        self.codevectors = nn.Parameter(torch.empty(codebooks, entries, final_dim // codebooks).uniform_())
        self.project = nn.Linear(final_dim, final_dim)

    def forward(self, latents: torch.Tensor, uniform: torch.Tensor,
                tau: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uniform (B, T, G, V) in (0, 1): the Gumbel noise's draws (from the step's generator); tau may be a
        tensor on the device, so that no step waits to read it."""
        b, t, _ = latents.shape
        logits = self.logits(latents).float().view(b, t, self.codebooks, self.entries)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-10)))
        soft = torch.softmax((logits + gumbel) / tau, -1)
        hard = F.one_hot(soft.argmax(-1), self.entries).to(soft.dtype)
        choice = hard - soft.detach() + soft                     # one entry forward, soft gradients backward
        chosen = torch.einsum("btgv,gvd->btgd", choice, self.codevectors.float()).flatten(2)
        return self.project(chosen.to(latents.dtype)), torch.softmax(logits, -1)


@register_method("wav2vec2")
class Wav2Vec2(Method):
    config_class = Wav2Vec2Config
    modality = "audio"
    num_views = 1
    spreads_embeddings = False         # predicts masked frames: see selfsup/evaluate/representation.py
    recipe = {
        # The waveform encoder at the backbone section's defaults: 0.25 of the paper's 512 channels, a Transformer
        # of 2 layers of 128 units (the paper's base model: 12 of 768), sized for 10 minutes on 2 CPU cores.
        "backbone": {"name": "wav2vec2"},
        # The paper: Adam, lr 5e-4 after a warm-up of 8% of the updates, weight decay 0.01; betas (0.9, 0.98).
        "optim": {"name": "adamw", "lr": 5e-4, "betas": [0.9, 0.98], "weight_decay": 0.01, "warmup_epochs": 1.0},
        # Batches of 8 clips, chosen on the validation voices (docs/audio.md): the distractors come from each
        # clip's own frames, so the batch only sets how many steps a budget holds, and the quantised targets
        # settle only after many steps. On 2 CPU cores, 3 minutes at 256 clips a step (43 steps) left the loss
        # near chance (2.98; log 21 = 3.04); at 8, 1,862 steps ran at a higher rate per clip and every probe gained.
        "train": {"batch_size": 8},
        "audio": {"crop_seconds": 0.0, "noise_p": 0.0},
    }

    def __init__(self, backbone, cfg: Wav2Vec2Config, augment_cfg):
        super().__init__(backbone, cfg, augment_cfg)
        cfg.validate()           # also when built in Python: distractor_frames relies on spans of >= 2 frames
        if not hasattr(backbone, "conv_features"):
            raise ValueError("wav2vec2 needs the waveform encoder (backbone.name=wav2vec2)")
        self.quantizer = GumbelQuantizer(backbone.feature_channels, cfg.codebooks, cfg.codebook_entries, cfg.final_dim)
        self.final_proj = nn.Linear(backbone.feature_dim, cfg.final_dim)
        self.register_buffer("gumbel_tau", torch.tensor(cfg.gumbel_start))

    def views(self, batch: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """[waves (B, S), mask (B, T) bool, distractor frames (B, T, K), Gumbel draws (B, T, G, V)], every
        draw from the step's generator so that a resumed run masks and samples the same."""
        waves = self.inputs.views(batch, gen, 1)[0]
        b, frames, cfg = waves.shape[0], self.backbone.frames(waves.shape[1]), self.cfg
        if frames < 2:
            raise ConfigError(f"wav2vec2 contrasts masked frames of 20 ms and needs clips of at least 720 samples "
                              f"(45 ms at 16 kHz), got {waves.shape[1]}; raise audio.seconds or audio.crop_seconds")
        mask = span_mask(b, frames, cfg.mask_prob, cfg.mask_length,
                         torch.rand(b, frames, generator=gen, device=waves.device))
        distractors = distractor_frames(mask, torch.rand(b, frames, cfg.negatives, generator=gen, device=waves.device))
        uniform = torch.rand(b, frames, cfg.codebooks, cfg.codebook_entries, generator=gen, device=waves.device)
        return [waves, mask, distractors, uniform]

    def loss(self, views: list[torch.Tensor]):
        waves, mask, distractors, uniform = views
        raw = self.backbone.conv_features(waves)
        penalty = raw.float().pow(2).mean()
        latents = self.backbone.feature_norm(raw)
        context = self.final_proj(self.backbone.contextualize(latents, mask))
        quantised, probabilities = self.quantizer(latents, uniform, self.gumbel_tau)
        clip = torch.arange(len(mask), device=mask.device)[:, None].expand_as(mask)
        (clip, drawn, context, target), real = at_chosen(mask, clip, distractors, context, quantised)
        others = quantised[clip[:, None], drawn]                                # (M, K, D)
        matching = contrastive_loss(context, target, others, self.cfg.temperature, real)
        entropy = codebook_entropy(probabilities.flatten(0, 1))        # one pass for the loss and the log
        diversity = diversity_loss(entropy, self.cfg.codebook_entries)
        loss = matching + self.cfg.diversity_weight * diversity + self.cfg.feature_penalty * penalty
        perplexity = entropy.exp().sum()
        return loss, {"loss": loss.detach(), "contrastive": matching.detach(), "diversity": diversity.detach(),
                      "codebook_perplexity": perplexity.detach(), "gumbel_tau": self.gumbel_tau.clone()}

    def after_step(self, progress: float) -> None:
        cfg = self.cfg
        self.gumbel_tau.fill_(cfg.gumbel_start * (cfg.gumbel_end / cfg.gumbel_start) ** min(1.0, progress))
