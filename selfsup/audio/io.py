"""Reading sound files into fixed-length mono clips at one sample rate.

    clip = read_clip(path, sample_rate=16000, seconds=1.0)      # float32 (sample_rate * seconds,) in [-1, 1]

Any format libsndfile reads (WAV of 8/16/24/32-bit integers or 32/64-bit floats, FLAC, OGG/Vorbis,
MP3, AIFF, ...) through the `soundfile` package (pip install 'selfsup[audio]'). Channels are averaged
to mono, the clip's first `seconds` (or `seconds` from `start`) are read (a one-hour file is never
decoded whole just to be cut) and resampled to `sample_rate` by band-limited Fourier interpolation,
then padded with silence to the clip length.
"""
from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import torch

from selfsup.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".w64", ".wv")
SILENCE = 1e-4                  # a clip whose peak stays below this (-80 dBFS) is taken for silence
INT16_SCALE = 32767.0


class UnreadableAudio(ValueError):
    """A file that is not audio, is empty or truncated, too short, or silent: skipped with a warning."""


def soundfile_module():
    try:
        import soundfile
    except ImportError as e:          # the package is an extra: say how to get it
        raise DataError("reading audio needs the soundfile package (libsndfile): pip install 'selfsup[audio]'") from e
    return soundfile


def read_clip(path: str | Path, sample_rate: int, seconds: float, min_seconds: float = 0.05,
              start: float = 0.0) -> torch.Tensor:
    """float32 (round(sample_rate * seconds),): `seconds` of the file from `start` (its beginning by
    default), mono, at `sample_rate`, padded with zeros; only those frames are decoded. Raises
    UnreadableAudio for a file libsndfile cannot decode, a piece shorter than min_seconds, or a silent one."""
    soundfile = soundfile_module()
    try:
        info = soundfile.info(str(path))
        first = min(info.frames, round(start * info.samplerate)) if info.frames > 0 else 0
        wanted = min(info.frames - first, math.ceil(seconds * info.samplerate)) if info.frames > 0 else -1
        frames, rate = soundfile.read(str(path), start=first, frames=wanted, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, ValueError) as e:
        raise UnreadableAudio(f"not readable as audio ({e})") from e
    if len(frames) < min_seconds * rate:
        raise UnreadableAudio(f"{len(frames) / rate * 1000:.0f} ms long, shorter than audio.min_seconds "
                              f"({min_seconds * 1000:.0f} ms)")
    mono = torch.from_numpy(frames).mean(1)
    if mono.abs().max() < SILENCE:
        raise UnreadableAudio("silent (every sample below -80 dBFS)")
    clip = resample(mono, rate, sample_rate)
    length = round(sample_rate * seconds)
    return torch.nn.functional.pad(clip[:length], (0, max(0, length - len(clip))))


def duration(path: str | Path) -> float:
    """The file's length in seconds from its header (0 when libsndfile cannot read it: it is skipped later)."""
    soundfile = soundfile_module()
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError, ValueError):
        return 0.0
    return max(0, info.frames) / info.samplerate


def resample(wave: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    """wave (..., T) at `rate` -> (..., round(T * new_rate / rate)) at new_rate: the signal's Fourier
    series cut (or zero-extended) to the new Nyquist frequency, so nothing above it aliases."""
    if rate == new_rate:
        return wave
    length = wave.shape[-1]
    new_length = max(1, round(length * new_rate / rate))
    spectrum = torch.fft.rfft(wave.double(), dim=-1)
    bins = new_length // 2 + 1
    if spectrum.shape[-1] >= bins:
        spectrum = spectrum[..., :bins]
    else:
        spectrum = torch.nn.functional.pad(spectrum, (0, bins - spectrum.shape[-1]))
    return (torch.fft.irfft(spectrum, n=new_length, dim=-1) * (new_length / length)).to(wave.dtype)


def to_int16(clips: torch.Tensor) -> torch.Tensor:
    """float clips in [-1, 1] -> int16 (clipped), as the in-memory data set keeps them."""
    return (clips.clamp(-1, 1) * INT16_SCALE).round().to(torch.int16)


def to_float(clips_i16: torch.Tensor) -> torch.Tensor:
    return clips_i16.float() / INT16_SCALE


def write_wav(path: str | Path, clip: torch.Tensor, sample_rate: int) -> None:
    """A float clip in [-1, 1] as a 16-bit PCM WAV file."""
    soundfile_module().write(str(path), to_int16(clip).numpy(), sample_rate, subtype="PCM_16")


def wav_bytes(clip: torch.Tensor, sample_rate: int) -> bytes:
    """A mono int16 clip (samples,) as the bytes of a 16-bit PCM WAV file (what a browser's <audio> plays)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(clip.to(torch.int16).numpy().astype("<i2").tobytes())
    return buffer.getvalue()
