"""Views of audio clips, batched on the training device: what a joint-embedding method (SimCLR, BYOL,
MoCo v3, ...) compares when its data are sounds.

    inputs = AudioInputs(cfg.audio)
    views = inputs.views(clips_i16, gen, count=2)     # each (B, 1, n_mels, crop frames), normalised log-mel
    x = inputs.eval(clips_i16)                        # (B, 1, n_mels, frames) of the whole clip, no randomness

Each view of each clip, every draw per sample from the step's generator (so a resumed run sees the
same views), in this order:

1. a random crop of `audio.crop_seconds` of the waveform (COLA's segments of one clip; 0: the whole clip),
   read at a rate drawn log-uniformly within `audio.speed` of 1 when that is set (speed perturbation:
   time stretch and pitch shift together, by linear-interpolation resampling);
2. a random gain of +-`audio.gain_db` dB;
3. with probability `audio.noise_p`, white noise at a signal-to-noise ratio drawn from `audio.noise_snr_db`;
4. the log-mel front end; with probability `audio.mix_p` the clip's mel power is mixed with that of
   another clip of the batch, a share drawn from U(0, `audio.mix_ratio`) (BYOL-A's log-mixup-exp:
   mixing in the power domain, then the log); then, each only when set, time stretch (`audio.time_stretch`:
   the frames read at a rate drawn log-uniformly within it of 1, from the start; the duration changes,
   the pitch does not) and pitch shift (`audio.pitch_shift`: every frequency multiplied by 2^(k/12), k
   semitones drawn uniformly within it of 0, by reading each mel bin at its centre frequency divided by
   that factor; the pitch changes, the duration does not), silence filling what falls outside;
5. normalisation of each mel bin by the training clips' mean and standard deviation;
6. a random resized crop of the spectrogram (`audio.crop_scale` of its area, aspect 3/4-4/3, resized
   back): BYOL-A's stand-in for pitch shift and time stretch;
7. SpecAugment (Park et al. 2019): `audio.freq_masks` bands of up to `audio.freq_mask_bins` mel bins
   and `audio.time_masks` spans of up to `audio.time_mask_frames` frames set to 0 (the mean).
"""
from __future__ import annotations

import math

import torch

from selfsup.audio.frontend import LOG_FLOOR, LogMel, mel_corners
from selfsup.audio.io import to_float
from selfsup.augment import CROP_DRAWS, crop_flip

ASPECT = (3 / 4, 4 / 3)


def log_mel_of(cfg) -> LogMel:
    return LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels, cfg.f_min, cfg.f_max)


def time_crop(waves: torch.Tensor, length: int, u: torch.Tensor) -> torch.Tensor:
    """waves (B, T) -> (B, length): each row from a start drawn uniformly by u (B,) in [0, 1)."""
    starts = (u * (waves.shape[1] - length + 1)).long().clamp(max=waves.shape[1] - length)
    index = starts[:, None] + torch.arange(length, device=waves.device)[None, :]
    return waves.gather(1, index)


def resampled_crop(waves: torch.Tensor, length: int, start_u: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """waves (B, T) -> (B, length): row i read from a start drawn by start_u (B,) in [0, 1), `rate[i]`
    input samples per output sample, linearly interpolated. A rate above 1 plays the clip faster and
    higher (a tone at f Hz comes out at rate x f), below 1 slower and lower. No anti-aliasing filter:
    at the rates speed perturbation uses (about 0.9-1.1) only the top band folds back."""
    last = waves.shape[1] - 1
    span = (length - 1) * rate                          # input samples the crop covers
    starts = start_u * (last - span).clamp(min=0)
    positions = (starts[:, None] + torch.arange(length, device=waves.device)[None, :] * rate[:, None]).clamp(max=last)
    left = positions.floor().long()
    weight = positions - left
    return waves.gather(1, left) * (1 - weight) + waves.gather(1, (left + 1).clamp(max=last)) * weight


def crop_at_speed(waves: torch.Tensor, length: int, start_u: torch.Tensor, speed: float,
                  gen: torch.Generator) -> torch.Tensor:
    """time_crop, or with speed > 0 a resampled_crop at a rate drawn log-uniformly in [1/(1+speed), 1+speed]
    (its draws taken only then, so views without it draw as before)."""
    if not speed:
        return time_crop(waves, length, start_u)
    bound = torch.log1p(torch.tensor(speed))
    rate = torch.exp((2 * torch.rand(waves.shape[0], generator=gen, device=waves.device) - 1) * bound.to(waves.device))
    return resampled_crop(waves, length, start_u, rate)


def read_at(x: torch.Tensor, positions: torch.Tensor, fill: float) -> torch.Tensor:
    """x (B, R, L), positions (B, K) fractional indices into its last axis -> (B, R, K): linear between the two
    neighbours, `fill` where a position falls outside [0, L - 1]."""
    last = x.shape[-1] - 1
    inside = (positions >= 0) & (positions <= last)
    clamped = positions.clamp(0, last)
    left = clamped.floor().long()
    weight = (clamped - left)[:, None, :]

    def at(index: torch.Tensor) -> torch.Tensor:
        return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))
    return (at(left) * (1 - weight) + at((left + 1).clamp(max=last)) * weight).masked_fill(~inside[:, None, :], fill)


def stretch_time(log_mel: torch.Tensor, rate: torch.Tensor, fill: float) -> torch.Tensor:
    """log_mel (B, M, F): row i's frames read `rate[i]` input frames per output frame from the first one (above 1
    faster and shorter, below 1 slower); past the end, `fill`."""
    frames = torch.arange(log_mel.shape[-1], device=log_mel.device, dtype=rate.dtype)
    return read_at(log_mel, frames[None, :] * rate[:, None], fill)


def shift_pitch(log_mel: torch.Tensor, factor: torch.Tensor, centres: torch.Tensor, fill: float) -> torch.Tensor:
    """log_mel (B, M, F), centres (M,) the mel bins' centre frequencies in Hz (increasing): every frequency of
    row i multiplied by factor[i]: bin m reads the input at centres[m] / factor[i], linearly between the two
    bins whose centres surround it; `fill` outside the first and last centres."""
    wanted = centres[None, :] / factor[:, None]                                     # (B, M) Hz
    upper = torch.searchsorted(centres, wanted.contiguous()).clamp(1, len(centres) - 1)
    low, high = centres[upper - 1], centres[upper]
    positions = upper - 1 + (wanted - low) / (high - low)
    return read_at(log_mel.transpose(1, 2), positions, fill).transpose(1, 2)


def add_noise(waves: torch.Tensor, snr_db: torch.Tensor, on: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """White noise at snr_db (B,) below each clip's RMS power, where `on` (B,) is True."""
    rms = waves.pow(2).mean(1, keepdim=True).sqrt()
    noise = torch.randn(waves.shape, generator=gen, device=waves.device)
    return waves + on[:, None] * noise * rms * 10 ** (-snr_db[:, None] / 20)


def mix_power(power: torch.Tensor, share: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """power (B, M, F): row i becomes (1 - share_i) power_i + share_i power_partner(i)."""
    share = share[:, None, None]
    return (1 - share) * power + share * power[partner]


def spec_masks(x: torch.Tensor, count: int, widest: int, u: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero `count` bands of up to `widest` rows along dim (2: mel bins, 3: frames) of x (B, 1, M, F);
    u (B, 2 count): each band's width and start."""
    size = x.shape[dim]
    positions = torch.arange(size, device=x.device)
    masked = torch.zeros(x.shape[0], size, dtype=torch.bool, device=x.device)
    for band in range(count):
        width = (u[:, 2 * band] * (min(widest, size) + 1)).long()
        start = (u[:, 2 * band + 1] * (size - width + 1)).long()
        masked |= (positions[None, :] >= start[:, None]) & (positions[None, :] < (start + width)[:, None])
    shape = (x.shape[0], 1, size, 1) if dim == 2 else (x.shape[0], 1, 1, size)
    return x.masked_fill(masked.view(shape), 0.0)


class AudioInputs:
    """The audio modality's inputs for a method: `views` for pretraining, `eval` for every evaluation."""

    DRAWS = 6                      # crop, gain, noise on, noise level, mix on, mix share (then the masks')

    def __init__(self, cfg):
        self.cfg = cfg
        self.log_mel = log_mel_of(cfg)
        self.crop = round((cfg.crop_seconds or cfg.seconds) * cfg.sample_rate)
        self._statistics: dict = {}
        self._centres: dict = {}

    def normalise(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, M, F) -> (B, 1, M, F) with each mel bin at the training clips' mean 0, std 1."""
        if not self.cfg.mel_mean:
            return log_mel[:, None]
        if log_mel.device not in self._statistics:     # copied to the device once, not at every step
            self._statistics[log_mel.device] = tuple(torch.tensor(values, device=log_mel.device)[None, :, None]
                                                     for values in (self.cfg.mel_mean, self.cfg.mel_std))
        mean, std = self._statistics[log_mel.device]
        return ((log_mel - mean) / std)[:, None]

    @torch.no_grad()
    def eval(self, clips: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.log_mel(to_float(clips)))

    def stretch_and_shift(self, log_mel: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Time stretch, then pitch shift, each drawn per clip, and only when set (so that views without
        them take the same draws as before)."""
        cfg, b, silence = self.cfg, log_mel.shape[0], math.log(LOG_FLOOR)
        if cfg.time_stretch:
            bound = math.log1p(cfg.time_stretch)
            rate = torch.exp((2 * torch.rand(b, generator=gen, device=log_mel.device) - 1) * bound)
            log_mel = stretch_time(log_mel, rate, silence)
        if cfg.pitch_shift:
            semitones = (2 * torch.rand(b, generator=gen, device=log_mel.device) - 1) * cfg.pitch_shift
            if log_mel.device not in self._centres:
                self._centres[log_mel.device] = mel_corners(cfg.n_mels, cfg.f_min, cfg.f_max)[1:-1].float().to(
                    log_mel.device)
            log_mel = shift_pitch(log_mel, 2 ** (semitones / 12), self._centres[log_mel.device], silence)
        return log_mel

    @torch.no_grad()
    def views(self, clips: torch.Tensor, gen: torch.Generator, count: int) -> list[torch.Tensor]:
        return [self.view(clips, gen) for _ in range(count)]

    def view(self, clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, b = self.cfg, clips.shape[0]
        masks = 2 * (cfg.freq_masks + cfg.time_masks)
        u = torch.rand(b, self.DRAWS + masks, generator=gen, device=clips.device)
        waves = crop_at_speed(to_float(clips), min(self.crop, clips.shape[1]), u[:, 0], cfg.speed, gen)
        waves = waves * 10 ** ((2 * u[:, 1:2] - 1) * cfg.gain_db / 20)
        if cfg.noise_p:
            low, high = cfg.noise_snr_db
            waves = add_noise(waves, low + u[:, 3] * (high - low), u[:, 2] < cfg.noise_p, gen)
        power = self.log_mel.power(waves)
        if cfg.mix_p:
            partner = torch.randperm(b, generator=gen, device=clips.device)
            power = mix_power(power, (u[:, 4] < cfg.mix_p) * u[:, 5] * cfg.mix_ratio, partner)
        x = self.normalise(self.stretch_and_shift(torch.log(power + LOG_FLOOR), gen))
        if cfg.crop_scale[0] < 1:
            crop_draws = torch.rand(b, CROP_DRAWS, generator=gen, device=clips.device)
            x = crop_flip(x, tuple(x.shape[-2:]), cfg.crop_scale, ASPECT, 0.0, crop_draws)
        drawn = u[:, self.DRAWS:]
        x = spec_masks(x, cfg.freq_masks, cfg.freq_mask_bins, drawn[:, :2 * cfg.freq_masks], dim=2)
        return spec_masks(x, cfg.time_masks, cfg.time_mask_frames, drawn[:, 2 * cfg.freq_masks:], dim=3)


def standardised(waves: torch.Tensor) -> torch.Tensor:
    """Each clip at zero mean and unit variance (wav2vec 2.0's input normalisation)."""
    return (waves - waves.mean(1, keepdim=True)) / (waves.var(1, keepdim=True) + 1e-5).sqrt()


class WaveformInputs:
    """For encoders that read the waveform (selfsup.backbones.audio.WAVEFORM_BACKBONES): float samples,
    each clip standardised. `views`: a random crop of `audio.crop_seconds` (0: the whole clip; at a
    perturbed speed with `audio.speed`) and, with probability `audio.noise_p`, white noise; `eval`: the
    whole clip."""

    DRAWS = 3                      # crop, noise on, noise level

    def __init__(self, cfg):
        self.cfg = cfg
        self.crop = round((cfg.crop_seconds or cfg.seconds) * cfg.sample_rate)

    @torch.no_grad()
    def eval(self, clips: torch.Tensor) -> torch.Tensor:
        return standardised(to_float(clips))

    @torch.no_grad()
    def views(self, clips: torch.Tensor, gen: torch.Generator, count: int) -> list[torch.Tensor]:
        return [self.view(clips, gen) for _ in range(count)]

    def view(self, clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        u = torch.rand(clips.shape[0], self.DRAWS, generator=gen, device=clips.device)
        waves = crop_at_speed(to_float(clips), min(self.crop, clips.shape[1]), u[:, 0], cfg.speed, gen)
        if cfg.noise_p:
            low, high = cfg.noise_snr_db
            waves = add_noise(waves, low + u[:, 2] * (high - low), u[:, 1] < cfg.noise_p, gen)
        return standardised(waves)


def mel_statistics(clips: torch.Tensor, cfg, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Each mel bin's mean and standard deviation of the log-mel over clips (int16 (N, T)), the whole
    clips as `eval` sees them."""
    log_mel = log_mel_of(cfg)
    total = torch.zeros(cfg.n_mels, dtype=torch.float64)
    squares = torch.zeros(cfg.n_mels, dtype=torch.float64)
    count = 0
    for start in range(0, len(clips), chunk):
        values = log_mel(to_float(clips[start:start + chunk])).double()
        total += values.sum((0, 2))
        squares += values.pow(2).sum((0, 2))
        count += values.shape[0] * values.shape[2]
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return [round(v, 5) for v in mean.tolist()], [round(max(v, 1e-3), 5) for v in std.tolist()]
