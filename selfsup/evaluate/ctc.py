"""Speech recognition with few transcripts (issue 26; wav2vec 2.0's claim): a CTC head on an audio encoder's
frames, fine-tuned on (clip, transcript) pairs, scored by word and character error rate on held-out voices.

    rows = evaluate_ctc(run, labels=["1%", "10%"], seeds=3, baseline=True)       # eval/ctc.jsonl

For each share of the training transcripts and each seed, the run's encoder (and, with `baseline`, the same
network at random initialisation) gets a linear layer from each frame to the units of the transcripts
(characters, or whole words for a small closed vocabulary such as spoken digits) plus the CTC blank
(Graves et al. 2006) and is fine-tuned with the CTC loss (AdamW, warm-up and cosine decay;
`selfsup.evaluate.dense.fit`). As in wav2vec 2.0's fine-tuning, the convolutional feature encoder of a
waveform encoder stays as it is (`freeze_features`; its outputs are then computed once per clip) and
everything above it learns; a spectrogram encoder (audio_cnn) is fine-tuned whole. The validation
voices' character error rate of greedy transcriptions picks the state kept among evenly spaced checks;
the scored part is transcribed by greedy decoding (the likeliest symbol at each frame, repeats merged,
blanks dropped) or a prefix beam search (no language model), and scored with jiwer's WER and CER.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.audio.data import AudioSet, audio_entries, load_audio
from selfsup.audio.io import soundfile_module
from selfsup.audio.spoken_words import DIGIT_STRINGS
from selfsup.build import fresh_method
from selfsup.data import fetch
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.dense import FitSettings, fit
from selfsup.evaluate.splits import parse_label_budget
from selfsup.runtime import resolve_device

BLANK = 0
DECODERS = ("greedy", "beam")
UNITS = ("characters", "words")
PRUNE_BELOW = math.log(1e-4)       # beam search: symbols less likely than this at a frame are not tried


@dataclass
class CTCSettings(FitSettings):
    epochs: float = 0.0
    steps: int = 400
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    seconds: float = 5.0               # clips are read (cut or padded) to this length
    decoder: str = "beam"
    beams: int = 8
    units: str = "characters"
    freeze_features: bool = True       # a waveform encoder's convolutions stay as they are (the paper's setting)

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.units not in UNITS:
            raise ConfigError(f"units must be one of {', '.join(UNITS)}, got {self.units!r}")
        if self.lr <= 0 or self.steps < 1 or self.batch_size < 1 or self.checks < 1 or self.beams < 1:
            raise ConfigError("CTC fine-tuning lr, steps, batch size, checks and beams must be positive")
        if self.seconds <= 0:
            raise ConfigError(f"seconds must be > 0, got {self.seconds}")


class CTCModel(nn.Module):
    """An encoder with frame features and a linear layer to log-probabilities over blank + symbols.

    With freeze_features and a waveform encoder, `prepare` turns waveforms into the frozen convolutions'
    outputs once, and `forward` reads those; otherwise `prepare` passes the waveforms (or spectrograms) on."""

    def __init__(self, backbone: nn.Module, symbols: int, freeze_features: bool = False):
        super().__init__()
        if not hasattr(backbone, "frame_features"):
            raise ConfigError(f"{type(backbone).__name__} has no per-frame features for a CTC head; CTC needs an "
                              "audio encoder that keeps time (backbone.name=wav2vec2 or audio_cnn)")
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, symbols + 1)
        self.frozen_features = freeze_features and hasattr(backbone, "conv_features")
        if self.frozen_features:
            backbone.conv.requires_grad_(False)

    @torch.no_grad()
    def prepare(self, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        if not self.frozen_features:
            return x
        self.backbone.conv.eval()
        return torch.cat([self.backbone.conv_features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_features:
            frames = self.backbone.contextualize(self.backbone.feature_norm(x))
        else:
            frames = self.backbone.frame_features(x)
        return self.head(frames).float().log_softmax(-1)      # (B, T, 1 + symbols)


@dataclass(frozen=True)
class Vocabulary:
    """The symbols a CTC head writes, ids 1, 2, ... (0 is the blank): characters, or whole words. Words suit a
    small closed vocabulary (spoken digits): a transcript is then a few symbols instead of dozens, so CTC has
    far fewer to align and leaves its all-blank plateau sooner."""
    symbols: tuple[str, ...]
    units: str = "characters"

    @classmethod
    def of(cls, transcripts: list[str], units: str = "characters") -> "Vocabulary":
        return cls(tuple(sorted({s for text in transcripts for s in split_units(text, units)})), units)

    def text(self, ids) -> str:
        return (" " if self.units == "words" else "").join(self.symbols[i - 1] for i in ids)

    def describe(self) -> str:
        return f"{self.units} {' '.join(self.symbols) if self.units == 'words' else repr(''.join(self.symbols))}"

    def missing(self, transcripts: list[str]) -> "Vocabulary":
        """The symbols of these transcripts that this vocabulary lacks."""
        return Vocabulary(tuple(sorted(set(Vocabulary.of(transcripts, self.units).symbols) - set(self.symbols))),
                          self.units)


def split_units(text: str, units: str) -> list[str]:
    return text.split() if units == "words" else list(text)


def encode_transcripts(transcripts: list[str], vocabulary: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """(every transcript's symbol ids, 1-based, one after another; each transcript's length in symbols)."""
    unknown = vocabulary.missing(transcripts)
    if unknown.symbols:
        raise DataError(f"{unknown.describe()} of these transcripts are not among the training transcripts' "
                        f"{vocabulary.describe()}")
    index = {s: i + 1 for i, s in enumerate(vocabulary.symbols)}
    units = [split_units(text, vocabulary.units) for text in transcripts]
    ids = [index[s] for text in units for s in text]
    return torch.tensor(ids, dtype=torch.long), torch.tensor([len(t) for t in units], dtype=torch.long)


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    frames = torch.full((log_probs.shape[0],), log_probs.shape[1], dtype=torch.long)
    return F.ctc_loss(log_probs.transpose(0, 1), targets, frames, lengths, blank=BLANK, zero_infinity=True)


def greedy_decode(log_probs: torch.Tensor, vocabulary: Vocabulary) -> str:
    """(T, 1 + symbols) -> text: the likeliest symbol at each frame, repeats merged, blanks dropped."""
    best = torch.unique_consecutive(log_probs.argmax(-1))
    return vocabulary.text(i for i in best.tolist() if i != BLANK)


def beam_decode(log_probs: torch.Tensor, vocabulary: Vocabulary, beams: int = 8) -> str:
    """(T, 1 + symbols) -> text: the likeliest labelling kept by a CTC prefix beam search. Each prefix
    keeps the log-probability of the paths that end in a blank and of those that end in its last symbol,
    so that a repeated symbol is told apart from one held over several frames."""
    beam: dict[tuple, list[float]] = {(): [0.0, -math.inf]}         # prefix -> [ends in blank, ends in its char]
    for frame in log_probs.double().tolist():
        tried = [c for c, p in enumerate(frame) if p >= PRUNE_BELOW] or [max(range(len(frame)), key=frame.__getitem__)]
        grown: dict[tuple, list[float]] = {}
        for prefix, (blank_end, char_end) in beam.items():
            total = _logaddexp(blank_end, char_end)
            for c in tried:
                p = frame[c]
                if c == BLANK:
                    _add(grown, prefix, 0, total + p)
                elif prefix and prefix[-1] == c:
                    _add(grown, prefix, 1, char_end + p)            # the same symbol held on
                    _add(grown, prefix + (c,), 1, blank_end + p)    # a repeat, after a blank
                else:
                    _add(grown, prefix + (c,), 1, total + p)
        beam = dict(sorted(grown.items(), key=lambda item: -_logaddexp(*item[1]))[:beams])
    best = max(beam, key=lambda prefix: _logaddexp(*beam[prefix]))
    return vocabulary.text(best)


def _add(beam: dict, prefix: tuple, ending: int, value: float) -> None:
    """Add the probability exp(value) of paths that collapse to prefix (ending 0: in a blank, 1: in its char)."""
    slot = beam.setdefault(prefix, [-math.inf, -math.inf])
    slot[ending] = _logaddexp(slot[ending], value)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def error_rates(hypotheses: list[str], references: list[str]) -> dict:
    """Word and character error rates in percent (jiwer: edit distance over the references' length)."""
    try:
        import jiwer
    except ImportError as e:
        raise ConfigError("word and character error rates need jiwer: pip install 'selfsup[audio]'") from e
    return {"wer": 100 * jiwer.wer(references, hypotheses), "cer": 100 * jiwer.cer(references, hypotheses)}


@torch.no_grad()
def transcribe(model: CTCModel, inputs: torch.Tensor, vocabulary: Vocabulary, decoder: str = "greedy", beams: int = 8,
               device="cpu", batch_size: int = 32) -> list[str]:
    """Texts of prepared inputs (CTCModel.prepare)."""
    model.eval()
    texts = []
    for start in range(0, len(inputs), batch_size):
        for log_probs in model(inputs[start:start + batch_size].to(device)).cpu():
            texts.append(greedy_decode(log_probs, vocabulary) if decoder == "greedy"
                         else beam_decode(log_probs, vocabulary, beams))
    return texts


def transcribed_clips(source: str, seconds: float, sample_rate: int, data_dir: str = "",
                      progress: bool = True) -> AudioSet:
    """spoken-words' digit strings, or a manifest whose lines have a "transcript"."""
    if source == "spoken-words":
        root = fetch.find(source, data_dir or None)
        if root is None:
            raise DataError("spoken-words is not fetched yet: run `selfsup data fetch spoken-words`")
        if not (root / DIGIT_STRINGS).is_file():
            raise DataError(f"{root} was fetched before spoken-words had digit strings: remove the folder and run "
                            "`selfsup data fetch spoken-words` again")
        path = root / DIGIT_STRINGS
    else:
        path = Path(source).expanduser()
    data = load_audio(path, sample_rate, seconds, progress=progress)
    if not data.transcripts or not all(t.strip() for t in data.transcripts):
        raise DataError(f"{path}: every line needs a \"transcript\" (what is said in the clip) for CTC fine-tuning")
    cut = [entry.name for entry in audio_entries(path)[1] if _duration(entry.path) > seconds + 1e-3]
    if cut:
        raise DataError(f"{len(cut)} transcribed clip(s) last longer than {seconds:g} s, e.g. {cut[0]}: their end would be "
                        "cut off and no longer match the transcript; pass a larger --seconds")
    return data


def check_alignable(targets: list[torch.Tensor], frames: int, seconds: float) -> None:
    """CTC needs a frame for each symbol and a blank between two equal ones; a transcript that does not fit
    would add nothing to the loss (zero_infinity), silently, so it is an error."""
    needed = [len(t) + int((t[1:] == t[:-1]).sum()) for t in targets]
    too_long = sum(n > frames for n in needed)
    if too_long:
        raise DataError(f"{too_long} of {len(targets)} transcripts need more than the {frames} frames the encoder "
                        f"makes of {seconds:g} s (up to {max(needed)}); use an encoder with more frames a second "
                        "(wav2vec2: 50, audio_cnn: 12.5) or shorter transcripts")


def _duration(path: Path) -> float:
    """Seconds of sound in the file (0 when libsndfile cannot read it: load_audio has skipped it already)."""
    try:
        return soundfile_module().info(str(path)).duration
    except RuntimeError:
        return 0.0


def finetune_ctc(model: CTCModel, waves: torch.Tensor, transcripts: list[str], val: tuple[torch.Tensor, list[str]],
                 vocabulary: Vocabulary, settings: CTCSettings, seed: int, device, progress: bool = True,
                 desc: str = "") -> tuple[CTCModel, int, list[float]]:
    """model fine-tuned in place on (waves, transcripts); returns it at the state with the lowest validation
    CER among the checks, the steps, and each check's validation CER."""
    model.to(device)
    inputs, val_inputs = model.prepare(waves.to(device)), model.prepare(val[0].to(device))
    targets = [encode_transcripts([t], vocabulary)[0] for t in transcripts]
    check_alignable(targets, model(inputs[:1]).shape[1], settings.seconds)
    checks = []

    def batch_loss(indices, gen):
        chosen = indices.tolist()
        ids = torch.cat([targets[i] for i in chosen])
        lengths = torch.tensor([len(targets[i]) for i in chosen])
        return ctc_loss(model(inputs[indices]), ids.to(device), lengths.to(device))

    def validate():
        checks.append(error_rates(transcribe(model, val_inputs, vocabulary, "greedy", device=device), val[1])["cer"])
        return -checks[-1]

    steps, _ = fit(model, batch_loss, validate, settings, len(waves), seed, frozen_backbone=False,
                   progress=progress, desc=desc)
    return model.eval(), steps, checks


def evaluate_ctc(run, labels: list[str], seeds: int = 1, settings: CTCSettings | None = None, baseline: bool = False,
                 part: str = "test", source: str = "spoken-words", data_dir: str = "", progress: bool = True,
                 first_seed: int = 0) -> list[dict]:
    """Fine-tune and score as the module docstring says; one row per (share, seed, init), appended to
    RUN_DIR/eval/ctc.jsonl."""
    settings = settings or CTCSettings()
    cfg, device = run.config, resolve_device(run.config.train.device)
    if run.modality.name != "audio":
        raise ConfigError(f"CTC fine-tuning needs an audio run; {run.path} trained on {run.modality.name} data")
    CTCModel(run.method.evaluated_backbone, 1)                  # refuses an encoder without frames, before any work
    data = transcribed_clips(source, settings.seconds, cfg.audio.sample_rate, data_dir, progress)
    inputs = run.modality.method_inputs(cfg)
    train, val, scored = (data.part(name) for name in ("train", "val", part))
    if not len(train) or not len(val) or not len(scored):
        raise DataError(f"{source}: CTC fine-tuning needs clips in the train, val and {part} parts, found "
                        f"{len(train)}, {len(val)} and {len(scored)}")
    vocabulary = Vocabulary.of(train.transcripts, settings.units)
    unseen = vocabulary.missing(val.transcripts + scored.transcripts)
    if unseen.symbols:
        print(f"note: {unseen.describe()} of the validation or {part} transcripts never occur in the training "
              "transcripts; the model cannot write them and they count as errors")
    prepare = lambda clips: torch.cat([inputs.eval(clips[i:i + 256]) for i in range(0, len(clips), 256)])  # noqa: E731
    train_waves, val_waves, scored_waves = prepare(train.clips), prepare(val.clips), prepare(scored.clips)
    print(f"CTC on {source}: {len(train)} training, {len(val)} validation, {len(scored)} scored ({part}) clips; "
          f"{vocabulary.describe()}; decoding: {settings.decoder}")
    common = {"protocol": "ctc", "data": source, "scored_on": part, "step": run.step, "method": cfg.method.name,
              "decoder": settings.decoder, "units": settings.units}
    rows = []
    for budget in map(parse_label_budget, labels):
        count = min(len(train), budget.total or max(1, round(budget.fraction * len(train))))
        for seed in range(first_seed, first_seed + seeds):
            chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count].sort().values
            for init in ["pretrained"] + (["from scratch"] if baseline else []):
                started = time.perf_counter()
                model = CTCModel(_encoder(run, init, seed), len(vocabulary.symbols), settings.freeze_features)
                model, steps, checks = finetune_ctc(model, train_waves[chosen], [train.transcripts[i] for i in chosen],
                                                    (val_waves, val.transcripts), vocabulary, settings, seed, device,
                                                    progress, desc=f"{init} {budget.text} seed {seed}")
                written = transcribe(model, model.prepare(scored_waves.to(device)), vocabulary, settings.decoder,
                                     settings.beams, device)
                row = {**common, "init": init, "labels": budget.text, "clips": count, "seed": seed,
                       **error_rates(written, scored.transcripts), "val_cer_checks": checks, "steps": steps,
                       "seconds": round(time.perf_counter() - started, 1), "settings": vars(settings),
                       "examples": [{"reference": r, "written": w}
                                    for r, w in zip(scored.transcripts[:5], written[:5])]}
                run.folder.append_result(row, to=run.folder.ctc_results_file)
                print(f"  {budget.text:>5} seed {seed} {init:<12} WER {row['wer']:6.2f}  CER {row['cer']:6.2f}  "
                      f"(validation CER {min(checks):.2f}; {steps} steps, {row['seconds']:.0f} s)")
                rows.append(row)
    return rows


def _encoder(run, init: str, seed: int) -> nn.Module:
    """A copy of the run's encoder, or the same network with new weights drawn from `seed`."""
    if init == "pretrained":
        return copy.deepcopy(run.method.evaluated_backbone)
    return fresh_method(run.config, seed).evaluated_backbone
