"""The audio front end, run batched on the training device: waveforms -> log-mel spectrograms -> MFCCs.

    mel = LogMel(sample_rate=16000, n_fft=400, hop=160, n_mels=64, f_min=60, f_max=7800)
    spectrogram = mel(waves)                 # (B, T) float -> (B, n_mels, 1 + T // hop) natural-log mel power
    coefficients = mfcc(spectrogram, 20)     # (B, 20, frames): DCT-II (orthonormal) of the log-mel bins

STFT with a periodic Hann window over frames centred on every hop (the clip reflected at its ends),
power spectrum |X|^2, triangular filters equally spaced on the HTK mel scale
(mel = 2595 log10(1 + f / 700)) between f_min and f_max, and log(power + 1e-6): the convention of
torchaudio's MelSpectrogram (mel_scale="htk", norm=None), written here in torch so that no audio
library has to match the pinned torch.
"""
from __future__ import annotations

import math

import torch

LOG_FLOOR = 1e-6


def hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_corners(n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_mels + 2,) float64 Hz: the filters' corners, equally spaced in mel; filter m's centre is corner m + 1."""
    return mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64))


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_freqs, n_mels): filter m rises linearly from its lower corner to 1 at its centre and falls to 0
    at its upper corner, the n_mels + 2 corners equally spaced in mel between f_min and f_max."""
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    corners = mel_corners(n_mels, f_min, f_max)
    lower, centre, upper = corners[:-2], corners[1:-1], corners[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.minimum(rising, falling).clamp_min(0).float()


class LogMel:
    """waves (B, T) float -> (B, n_mels, 1 + T // hop) log mel power. Holds no weights (not a module): its
    window and filterbank are made once per device and dtype."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float):
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"the mel filters need 0 <= f_min < f_max <= sample_rate / 2 ({sample_rate / 2:g} Hz), "
                             f"got f_min={f_min:g}, f_max={f_max:g}")
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.f_min, self.f_max = f_min, f_max
        self._constants: dict = {}

    def frames(self, samples: int) -> int:
        return 1 + samples // self.hop

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            window = torch.hann_window(self.n_fft, periodic=True, device=device)
            bank = mel_filterbank(self.n_fft // 2 + 1, self.n_mels, self.sample_rate, self.f_min, self.f_max)
            self._constants[device] = (window, bank.to(device))
        return self._constants[device]

    def power(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, n_mels, frames) mel power, before the log (mixing clips adds powers)."""
        window, bank = self.constants(waves.device)
        with torch.autocast(waves.device.type, enabled=False):   # the STFT and the log want float32
            spectrum = torch.stft(waves.float(), self.n_fft, self.hop, window=window, center=True,
                                  pad_mode="reflect", return_complex=True)
            return torch.matmul(spectrum.abs().pow(2).transpose(1, 2), bank).transpose(1, 2)

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.log(self.power(waves) + LOG_FLOOR)


def standard_log_mel(sample_rate: int) -> LogMel:
    """25 ms windows every 10 ms, 64 mel bins from 60 Hz to 7.8 kHz (or the Nyquist frequency)."""
    return LogMel(sample_rate, round(0.025 * sample_rate), round(0.010 * sample_rate), 64, 60.0,
                  min(7800.0, sample_rate / 2))


def dct_matrix(n_mels: int, n_coefficients: int) -> torch.Tensor:
    """(n_mels, n_coefficients): the orthonormal DCT-II, so that mfcc = log_mel^T @ this."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_coefficients, dtype=torch.float64)
    basis = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_mels)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def mfcc(log_mel: torch.Tensor, n_coefficients: int = 20) -> torch.Tensor:
    """(B, n_mels, frames) -> (B, n_coefficients, frames): mel-frequency cepstral coefficients."""
    basis = dct_matrix(log_mel.shape[1], n_coefficients).to(log_mel.device)
    return torch.einsum("bmt,mk->bkt", log_mel.float(), basis)


def mfcc_statistics(log_mel: torch.Tensor, n_coefficients: int = 20) -> torch.Tensor:
    """(B, n_mels, frames) -> (B, 2 n_coefficients): each coefficient's mean and standard deviation over
    time, the classic fixed-length summary of a clip (the no-learning baseline's features)."""
    coefficients = mfcc(log_mel, n_coefficients)
    return torch.cat([coefficients.mean(2), coefficients.std(2)], dim=1)
