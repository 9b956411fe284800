"""Sound: int16 clips (N, samples) at audio.sample_rate, turned into log-mel views on the training device."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from selfsup.audio import BUILTIN_AUDIO
from selfsup.audio.data import AudioSet, audio_entries, load_audio
from selfsup.audio.frontend import mfcc_statistics, standard_log_mel
from selfsup.audio.io import to_float
from selfsup.audio.views import AudioInputs, WaveformInputs, mel_statistics
from selfsup.backbones.audio import WAVEFORM_BACKBONES
from selfsup.data import fetch
from selfsup.data.holdout import check_part
from selfsup.errors import DataError
from selfsup.modalities.base import Modality

STATISTICS_CLIPS = 4000                 # training clips the mel normalisation is fitted on


def audio_source(source: str, data_dir: str = "") -> Path:
    """A fetched set's folder (spoken-words), or the path given."""
    if source in BUILTIN_AUDIO:
        found = fetch.find(source, data_dir or None)
        if found is None:
            raise DataError(f"{source} is not fetched yet: run `selfsup data fetch {source}`")
        return found
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"audio source {source!r} does not exist; pass a folder of sound files, a .jsonl manifest "
                        f"or one of {', '.join(BUILTIN_AUDIO)}")
    return path


class AudioModality(Modality):
    name = "audio"
    raw_name = "MFCC statistics"
    sample_word = "clips"
    channels_last = True               # the log-mel "images" go through conv nets
    report_panels = ("spectrograms", "listen")

    def fits_on_device(self, data: AudioSet) -> bool:
        """Clips decoded to a file (data.stream) stay there; in-memory ones may live on the GPU."""
        return not data.on_disk

    def _load(self, cfg, source: str = "", data_dir: str = "", labels: bool = False, strict: bool | None = None):
        audio = cfg.audio
        return load_audio(audio_source(source or cfg.data.source, data_dir or cfg.data.data_dir), audio.sample_rate,
                          audio.seconds, labels=labels, strict=cfg.data.strict if strict is None else strict,
                          test_fraction=audio.test_fraction, val_fraction=cfg.data.val_fraction,
                          min_seconds=audio.min_seconds, cut_every=audio.cut_every, stream=cfg.data.stream)

    def training_data(self, cfg, run_dir: Path | None = None) -> AudioSet:
        """The source's training clips: its validation and test clips (or speakers) never enter pretraining."""
        data = self._load(cfg).part("train")
        if not len(data):
            raise DataError(f"{cfg.data.source}: no clip falls in the training part")
        return data.subset(cfg.data.subset)

    def complete_config(self, cfg, data: AudioSet) -> None:
        """Each mel bin's normalisation, fitted on (up to STATISTICS_CLIPS evenly spaced) training clips."""
        if not cfg.audio.mel_mean:
            step = max(1, len(data) // STATISTICS_CLIPS)
            cfg.audio.mel_mean, cfg.audio.mel_std = mel_statistics(data.clips[::step], cfg.audio)

    def backbone_inputs(self, cfg) -> dict:
        return {"in_channels": 1, "image_size": cfg.audio.n_mels}

    def method_inputs(self, cfg) -> AudioInputs | WaveformInputs:
        """Log-mel spectrograms, or the waveform itself for a waveform encoder (wav2vec2)."""
        return WaveformInputs(cfg.audio) if cfg.backbone.name in WAVEFORM_BACKBONES else AudioInputs(cfg.audio)

    def labelled_sets(self, cfg, run_dir: Path | None = None, source: str = "", data_dir: str = "",
                      part: str = "test"):
        check_part(part)
        data = self._load(cfg, source or cfg.eval.source, data_dir, labels=True)
        train, held_out = data.part("train"), data.part(part)
        if not len(held_out):
            raise DataError(f"{source or cfg.data.source}: no clip falls in the {part} part; use more clips or "
                            "speakers, or give the manifest a `part` field")
        return train, held_out

    def read(self, cfg, run_dir: Path | None, source: str, split: str = "test", data_dir: str = "",
             strict: bool = False) -> AudioSet:
        """With labels when every clip has one and there are at least two; without, otherwise."""
        _, entries, _ = audio_entries(audio_source(source, data_dir or cfg.data.data_dir))
        labelled = all(e.label for e in entries) and len({e.label for e in entries}) > 1
        return self._load(cfg, source, data_dir, labels=labelled, strict=strict)

    def raw_features(self, train: AudioSet, test: AudioSet) -> tuple[torch.Tensor, torch.Tensor]:
        return mfcc_features(train), mfcc_features(test)

    def finetune_input(self, cfg, settings) -> Callable:
        """Fine-tuning reads the pretraining views (one a step) and evaluates the whole clip."""
        inputs = self.method_inputs(cfg)
        return lambda batch, gen=None: inputs.views(batch, gen, 1)[0] if gen is not None else inputs.eval(batch)

    def monitor_views(self, method) -> Callable | None:
        return lambda batch, gen: method._layout(method.inputs.views(batch, gen, 1)[0])


def mfcc_features(data: AudioSet, chunk: int = 512) -> torch.Tensor:
    """(N, 40): the mean and standard deviation over time of 20 MFCCs of each whole clip (25 ms windows
    every 10 ms, 64 mel bins), whatever front end the run itself has."""
    log_mel = standard_log_mel(data.sample_rate)
    return torch.cat([mfcc_statistics(log_mel(to_float(data.clips[i:i + chunk])))
                      for i in range(0, len(data), chunk)])
