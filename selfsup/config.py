"""Configs are dataclasses: one place for each default, validated on load, written back resolved.

YAML files and dotted overrides (``optim.lr=0.3``) both map onto ``Config``. An unknown key
is an error that lists the valid ones; a value of the wrong type is an error that names the field.
"""
from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from selfsup.audio import BUILTIN_AUDIO
from selfsup.augment import AugmentConfig
from selfsup.backbones import backbone_names, backbone_parameters, is_backbone
from selfsup.backbones.tabular import NORMS
from selfsup.checkpoint import atomic_write
from selfsup.errors import ConfigError
from selfsup.evaluate.protocols import PROTOCOLS
from selfsup.evaluate.splits import parse_label_budget
from selfsup.methods import MethodConfig, method_class, method_names
from selfsup.trackers import TRACKERS


MODALITIES = ("image", "text", "tabular", "interactions", "audio")


@dataclass
class DataConfig:
    # image: a built-in data set name or an image folder path; text: a folder of .txt files, a .jsonl
    # file or a .txt file; tabular: a .csv / .tsv / .parquet file; interactions: an interaction log
    # (.inter / .csv / .tsv / .parquet) or a folder holding one .inter file; audio: a folder of sound
    # files, a .jsonl manifest, or spoken-words
    source: str = "fashion-mnist"
    modality: str = ""                 # image | text | tabular | interactions | audio; "" = the method's (clm -> text)
    data_dir: str = ""                 # extra folder to search for built-in data sets
    channels: int = 0                  # 0 = as stored (image folders: 3)
    size: int = 0                      # square side images are read at; 0 = as stored (image folders: 32)
    subset: int = 0                    # train on the first N images only; 0 = all
    strict: bool = False               # unreadable image files are an error instead of skipped
    # Images read from disk step by step by data workers (train.workers), each view cropped on the
    # original image (selfsup/data/stream.py), instead of decoded once into memory at data.size. auto:
    # a packed store streams; an image folder streams when decoding it would fill a quarter of the memory.
    # Sound: the clips are decoded once to a file and mapped from disk (same rule; docs/audio.md).
    stream: str = "auto"               # auto | on | off
    # The share of a labelled image folder, text or table held out of pretraining for validation (every
    # choice: online kNN, the best checkpoint, hyper-parameter searches); a built-in data set holds out its
    # own count (Fashion-MNIST: 5,000 training images). See selfsup/data/holdout.py.
    val_fraction: float = 0.1

    def validate(self) -> None:
        if self.modality not in ("",) + MODALITIES:
            raise ConfigError(f"data.modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.channels not in (0, 1, 3):
            raise ConfigError(f"data.channels must be 0 (as stored), 1 or 3; got {self.channels}")
        if not 0 <= self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.stream not in ("auto", "on", "off"):
            raise ConfigError(f"data.stream must be auto, on or off; got {self.stream!r}")
        for key in ("size", "subset"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} must be >= 0 (0 = {'as stored' if key == 'size' else 'all'}), "
                                  f"got {getattr(self, key)}")


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    # Each backbone takes the fields its factory declares (see `selfsup.backbones`); setting another is an error.
    # ResNet: channel multiplier. 0.25 by default: on a small CPU a fixed time buys it more epochs than
    # a wider net, which it needs more than width, and it embeds faster (docs/results.md).
    width: float = 0.25
    stem: str = "cifar"                # ResNet: "cifar" (3x3, no max-pool) for small images, or "imagenet"
    patch_size: int = 4                # ViT: pixels per patch side
    pos_embed: str = "sincos"          # ViT: "sincos" (fixed) or "learned"
    dim: int = 128                     # text and tabular backbones: width (hidden size)
    depth: int = 2                     # text and tabular backbones: layers
    heads: int = 4                     # transformer / gpt: attention heads (dim must divide by it)
    decoder_depth: int = 0             # seq2seq: decoder layers (0: as many as the encoder's depth)
    dropout: float = 0.1               # text and tabular backbones (SimCSE's only augmentation)
    norm: str = "batch"                # tabular_mlp: normalisation in the hidden blocks: batch | layer | none

    def validate(self) -> None:
        if not is_backbone(self.name):
            raise ConfigError(f"backbone.name {self.name!r} is unknown; choose one of: {', '.join(backbone_names())}")
        fields = [f.name for f in dataclasses.fields(self) if f.name != "name"]
        taken = [f for f in backbone_parameters(self.name) if f in fields]
        defaults = BackboneConfig()
        stray = [f for f in fields if f not in taken and getattr(self, f) != getattr(defaults, f)]
        if stray:
            raise ConfigError(f"backbone.{stray[0]}={getattr(self, stray[0])!r} does not apply to backbone "
                              f"{self.name}; its fields are: {', '.join(taken)}")
        if self.width <= 0:
            raise ConfigError(f"backbone.width must be > 0, got {self.width}")
        if self.stem not in ("cifar", "imagenet"):
            raise ConfigError(f"backbone.stem must be 'cifar' (small images) or 'imagenet', got {self.stem!r}")
        if self.patch_size < 1:
            raise ConfigError(f"backbone.patch_size must be >= 1, got {self.patch_size}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ConfigError(f"backbone.pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        if self.dim < 1 or self.depth < 1 or self.heads < 1 or ("heads" in taken and self.dim % self.heads):
            raise ConfigError(f"backbone.dim, depth and heads must be >= 1 and dim divisible by heads; got "
                              f"dim={self.dim}, depth={self.depth}, heads={self.heads}")
        if self.decoder_depth < 0:
            raise ConfigError(f"backbone.decoder_depth must be >= 0 (0: as many as depth), got {self.decoder_depth}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"backbone.dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ConfigError(f"backbone.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")


@dataclass
class TextConfig:
    """How text sources are read and tokenised (data.modality=text)."""
    field: str = "text"                # .jsonl: the field holding the text
    # .jsonl: the field holding the label; a folder: any value (e.g. "folder") takes its first-level subfolders
    label_field: str = ""
    tokenizer: str = "byte"            # byte (no dependency, any language) | bpe (trained on the corpus; extra 'bpe')
    vocab_size: int = 0                # bpe: the size to train (0 = 4096); resolved to the tokenizer's size
    max_length: int = 128              # tokens per sample
    # on: the corpus is one token stream cut into max_length windows (streamed to disk, any size);
    # off: one sample per document (truncated). auto: on for clm, off otherwise.
    pack: str = "auto"                 # auto | on | off
    # One sample per document: a document longer than max_length keeps its start (truncate) or is cut
    # into several samples at sentence ends (split). auto: split for the methods that rebuild whole
    # documents (bart, t5: they cannot pack, and a book would otherwise teach them its first lines only).
    long_documents: str = "auto"       # auto | split | truncate
    # Further unlabelled text that pretraining reads whole after data.source's training part (the
    # held-out shares come from data.source alone): folders of .txt, .jsonl (text.field) or .txt files.
    # (dataclasses.field by its full name: the attribute `field` above hides it in this class's body)
    extra_sources: list[str] = dataclasses.field(default_factory=list)
    test_fraction: float = 0.2         # labelled sources: the share held out for evaluation (fixed draw)

    def validate(self) -> None:
        if self.long_documents not in ("auto", "split", "truncate"):
            raise ConfigError(f"text.long_documents must be auto, split or truncate; got {self.long_documents!r}")
        if self.tokenizer not in ("byte", "bpe"):
            raise ConfigError(f"text.tokenizer must be 'byte' or 'bpe', got {self.tokenizer!r}")
        if self.pack not in ("auto", "on", "off"):
            raise ConfigError(f"text.pack must be auto, on or off; got {self.pack!r}")
        if self.max_length < 4 or self.vocab_size < 0:
            raise ConfigError(f"text.max_length must be >= 4 and text.vocab_size >= 0; got "
                              f"{self.max_length} and {self.vocab_size}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"text.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class TableConfig:
    """How tables are read (data.modality=tabular). Normalisation and category vocabularies are
    fitted on the training rows and saved with the run (RUN_DIR/table.json)."""
    label_column: str = ""             # the labels for evaluation; never a feature
    categorical: list[str] = field(default_factory=list)   # columns to treat as categories even if numeric
    ignore: list[str] = field(default_factory=list)        # columns to drop (ids, leaks)
    test_fraction: float = 0.2         # with a label column: the share held out for evaluation (fixed draw)
    # Resolved from the training rows (written to config.yaml so the backbone can be rebuilt):
    numeric_features: int = 0
    cardinalities: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"table.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class AudioConfig:
    """How sound is read and turned into views (data.modality=audio; docs/audio.md)."""
    sample_rate: int = 16000           # every clip is resampled to this
    seconds: float = 1.0               # clip length: the first `seconds` of a file, shorter ones padded with silence
    cut_every: float = 0.0             # > 0: a clip every this many seconds through each whole file (long recordings)
    min_seconds: float = 0.05          # shorter files are skipped
    test_fraction: float = 0.2         # clips (or speakers) held out for evaluation when the source has no parts
    # The log-mel front end (selfsup/audio/frontend.py): 25 ms windows every 10 ms at 16 kHz, 64 bins.
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    # Resolved from the training clips: each mel bin's mean and standard deviation of the log-mel.
    mel_mean: list[float] = field(default_factory=list)
    mel_std: list[float] = field(default_factory=list)
    # Views (selfsup/audio/views.py): a crop of the clip, gain, noise, mixing with another clip,
    # a resized crop of the spectrogram, SpecAugment's masks.
    crop_seconds: float = 0.8          # 0 = the whole clip
    # Speed perturbation: each view read at a rate drawn log-uniformly in [1 / (1 + speed), 1 + speed],
    # which stretches time and shifts pitch together, as resampling does (Ko et al. 2015); 0 = off.
    speed: float = 0.0
    # Each on its own, on the log-mel of each view: time stretch at a rate drawn log-uniformly in
    # [1 / (1 + time_stretch), 1 + time_stretch] (duration changes, pitch stays), and pitch shift by a
    # number of semitones drawn uniformly in [-pitch_shift, pitch_shift] (pitch changes, duration stays); 0 = off.
    time_stretch: float = 0.0
    pitch_shift: float = 0.0
    gain_db: float = 6.0
    noise_p: float = 0.0
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])
    mix_p: float = 1.0
    mix_ratio: float = 0.4             # BYOL-A's mixup: up to 40% of another clip's power
    crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    freq_masks: int = 2
    freq_mask_bins: int = 8
    time_masks: int = 2
    time_mask_frames: int = 10

    def validate(self) -> None:
        if self.sample_rate < 1000 or self.seconds <= 0 or not 0 < self.min_seconds <= self.seconds:
            raise ConfigError(f"audio.sample_rate must be >= 1000 and 0 < audio.min_seconds <= audio.seconds; got "
                              f"{self.sample_rate}, {self.min_seconds}, {self.seconds}")
        if self.cut_every < 0:
            raise ConfigError(f"audio.cut_every must be >= 0 (0: one clip, the start of each file; 1.0: a clip every "
                              f"second of each file), got {self.cut_every}")
        if not 0 <= self.crop_seconds <= self.seconds:
            raise ConfigError(f"audio.crop_seconds must be in [0, audio.seconds = {self.seconds}] (0: the whole clip), "
                              f"got {self.crop_seconds}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(f"audio.f_min < audio.f_max <= sample_rate / 2 ({self.sample_rate / 2:g} Hz) is needed, "
                              f"got {self.f_min} and {self.f_max}")
        if self.n_fft < 16 or self.hop < 1 or self.n_mels < 2 or self.n_mels > self.n_fft // 2:
            raise ConfigError(f"audio.n_fft >= 16, audio.hop >= 1 and 2 <= audio.n_mels <= n_fft / 2 are needed; got "
                              f"{self.n_fft}, {self.hop}, {self.n_mels}")
        if len(self.mel_mean) != len(self.mel_std) or self.mel_mean and len(self.mel_mean) != self.n_mels:
            raise ConfigError(f"audio.mel_mean and audio.mel_std need one value per mel bin ({self.n_mels})")
        for key in ("noise_p", "mix_p", "mix_ratio"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"audio.{key} must be in [0, 1], got {getattr(self, key)}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"audio.crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")
        if len(self.noise_snr_db) != 2 or self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ConfigError(f"audio.noise_snr_db must be [low, high] in dB, got {self.noise_snr_db}")
        if min(self.freq_masks, self.freq_mask_bins, self.time_masks, self.time_mask_frames) < 0:
            raise ConfigError("audio.freq_masks, freq_mask_bins, time_masks and time_mask_frames must be >= 0")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"audio.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.speed < 1 or not 0 <= self.time_stretch < 1:
            raise ConfigError(f"audio.speed and audio.time_stretch must be in [0, 1) (0.1: rates from 1/1.1 to 1.1), "
                              f"got {self.speed} and {self.time_stretch}")
        if not 0 <= self.pitch_shift <= 12:
            raise ConfigError(f"audio.pitch_shift must be in [0, 12] semitones, got {self.pitch_shift}")


@dataclass
class InteractionsConfig:
    """How interaction logs are read (data.modality=interactions; docs/recommendation.md)."""
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"     # "" = the file's order is the time order
    max_length: int = 50               # items per training row and per history a model reads (RecBole's 50)
    # A user attribute of the log's .user file (e.g. gender, age, occupation) as the label of the user
    # representation's evaluations (kNN, linear probe, few labels); "" = none. A numeric attribute with
    # more than 10 values (age) is cut into 4 bands at the training users' quartiles.
    label: str = ""
    test_fraction: float = 0.2         # with a label: the share of users held out to test it (fixed draw)
    ranking_k: int = 10                # the cut-off of HR@k and NDCG@k
    items: int = 0                     # resolved from the log: the item vocabulary's size

    def validate(self) -> None:
        if not self.user_column or not self.item_column:
            raise ConfigError("interactions.user_column and interactions.item_column must name columns")
        if self.max_length < 2:
            raise ConfigError(f"interactions.max_length must be >= 2, got {self.max_length}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"interactions.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.ranking_k < 1:
            raise ConfigError(f"interactions.ranking_k must be >= 1, got {self.ranking_k}")


@dataclass
class OptimConfig:
    name: str = "lars"                 # sgd | lars | adamw
    lr: float = 8.0                    # peak learning rate, reached after warm-up
    # 0: optim.lr is the peak as it stands. N (256 in the papers): optim.lr is per N images of the batch,
    # and the peak is lr x train.batch_size / N (the linear scaling rule, Goyal et al. 2017, in which
    # SimCLR, BYOL, DINO and MAE state their rates), so a recipe keeps its meaning at another batch size.
    lr_per_images: int = 0
    weight_decay: float = 1e-5         # never applied to biases and norm layers
    momentum: float = 0.9              # sgd / lars
    betas: tuple[float, float] = (0.9, 0.999)   # adamw
    trust_coefficient: float = 0.001   # lars
    warmup_epochs: float = 0.5
    schedule: str = "cosine"           # cosine | constant (after warm-up)
    min_lr_ratio: float = 0.0          # final lr = lr * min_lr_ratio
    grad_clip: float = 0.0             # max global grad norm; 0 = off

    def validate(self) -> None:
        if self.name not in ("sgd", "lars", "adamw"):
            raise ConfigError(f"optim.name must be one of sgd, lars, adamw; got {self.name!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"optim.schedule must be 'cosine' or 'constant'; got {self.schedule!r}")
        for key in ("lr", "weight_decay", "momentum", "warmup_epochs", "grad_clip", "min_lr_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr == 0:
            raise ConfigError("optim.lr must be > 0")
        if self.lr_per_images < 0:
            raise ConfigError(f"optim.lr_per_images must be >= 0 (0 = optim.lr as it stands), got {self.lr_per_images}")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    # How long to train: the first of steps, epochs, minutes that is > 0. A config layer (a method's
    # recipe, a YAML file, the command line) that sets one of them sets the other two to 0.
    steps: int = 0                     # total optimizer steps
    epochs: float = 0.0                # passes over the data
    # A wall-clock budget for the training loop: a few timed steps on a copy of the model fix the step
    # count (written to config.yaml as train.steps), so a run takes about this long on any machine.
    minutes: float = 6.0
    # Written by a time budget that re-planned the step count after the learning rate began to decay:
    # [step, how far the decay was there] each, so the rate stays continuous and config.yaml replays it.
    schedule_knots: list[list[float]] = field(default_factory=list)
    batch_size: int = 256
    precision: str = "auto"            # auto (bf16 where the hardware has it) | fp32 | bf16 | fp16
    channels_last: bool = True
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    seed: int = 0
    threads: int = 0                   # CPU threads for torch; 0 = torch's default
    workers: int = 0                   # streamed images: data worker processes; 0 = one per core (up to 16)
    log_every: int = 20                # steps between metrics.jsonl lines
    checkpoint_every: int = 500        # steps between checkpoints (also one at every epoch end and at the end)
    keep_checkpoints: int = 2
    # With several processes (torchrun): batch-norm statistics over the global batch. auto = as the
    # method's paper (all but MoCo v2, whose shuffled BN is per GPU).
    sync_batchnorm: str = "auto"       # auto | on | off
    # With several processes: ddp keeps a whole copy of the weights and optimizer state on every rank;
    # fsdp shards them over the ranks (FSDP2, each Transformer block a unit), for models DDP cannot fit.
    strategy: str = "ddp"              # ddp | fsdp
    # torch.compile the training step's forward and the batched augmentation. Off by default: a default
    # run is too short to win back the compile time (docs/scale.md).
    compile: bool = False
    compile_mode: str = "default"      # torch.compile's mode: default | reduce-overhead | max-autotune | ...
    # A run folder whose backbone weights this run starts from (fine-tuning a pretraining on another
    # task, e.g. maskeditem then nextitem); the heads start fresh. "" = random initialisation.
    init_from: str = ""
    # Experiment trackers that receive every metrics.jsonl row (rank 0): tensorboard (RUN_DIR/tensorboard/),
    # mlflow (RUN_DIR/mlruns/ or $MLFLOW_TRACKING_URI), wandb (offline in RUN_DIR/wandb/); selfsup/trackers.py.
    loggers: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be auto, fp32, bf16 or fp16; got {self.precision!r}")
        if self.steps < 0 or self.epochs < 0 or self.minutes < 0:
            raise ConfigError(f"train.steps, train.epochs and train.minutes must be >= 0; got {self.steps}, "
                              f"{self.epochs} and {self.minutes}")
        if not (self.steps or self.epochs or self.minutes):
            raise ConfigError("say how long to train: train.steps, train.epochs or train.minutes must be > 0")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"train.strategy must be ddp or fsdp; got {self.strategy!r}")
        if self.sync_batchnorm not in ("auto", "on", "off"):
            raise ConfigError(f"train.sync_batchnorm must be auto, on or off; got {self.sync_batchnorm!r}")
        knot_steps = [knot[0] for knot in self.schedule_knots]
        if any(len(knot) != 2 or not 0 <= knot[1] < 1 for knot in self.schedule_knots) \
                or knot_steps != sorted(knot_steps) or (self.steps and knot_steps and knot_steps[-1] >= self.steps):
            raise ConfigError(f"train.schedule_knots must be [step, progress in [0, 1)] pairs in step order before "
                              f"train.steps; got {self.schedule_knots} (a time budget writes them; "
                              "train.schedule_knots=[] clears them)")
        if self.threads < 0 or self.workers < 0:
            raise ConfigError(f"train.threads and train.workers must be >= 0 (0 = the default), got {self.threads} "
                              f"and {self.workers}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}; got {self.compile_mode!r}")
        unknown = [name for name in self.loggers if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"train.loggers: unknown tracker(s) {', '.join(unknown)}; choose from {', '.join(TRACKERS)}")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError("train.log_every, train.checkpoint_every and train.keep_checkpoints must be >= 1")


@dataclass
class EvalConfig:
    source: str = ""                   # labelled data for kNN; "" = the test split of a built-in source
    knn_k: int = 200
    knn_temperature: float = 0.1
    batch_size: int = 1024
    max_train: int = 0                 # use only the first N labelled train images; 0 = all
    max_test: int = 0                  # score only the first N test images; 0 = all
    # Online kNN during pretraining on a small labelled split (when the source has labels): logged to
    # metrics.jsonl, and the best-scoring checkpoint is kept apart from train.keep_checkpoints.
    online_every: float = 1.0          # epochs between online kNN evaluations; 0 = off
    online_train: int = 5000           # labelled images the online kNN votes with
    online_test: int = 1000            # validation images it scores (never test images)
    # After pretraining: these protocols on these label budgets (docs/evaluation.md), then the report.
    after_pretrain: list[str] = field(default_factory=lambda: ["knn", "linear"])
    labels: list[str] = field(default_factory=lambda: ["1%", "10%", "100%"])
    report: bool = True                # write RUN_DIR/report.html at the end of `selfsup pretrain`

    def validate(self) -> None:
        if self.knn_k < 1 or self.knn_temperature <= 0:
            raise ConfigError("eval.knn_k must be >= 1 and eval.knn_temperature > 0")
        if self.online_every < 0 or self.online_train < 1 or self.online_test < 1:
            raise ConfigError("eval.online_every must be >= 0 (0 = off), eval.online_train and eval.online_test >= 1")
        unknown = [p for p in self.after_pretrain if p not in PROTOCOLS]
        if unknown:
            raise ConfigError(f"eval.after_pretrain: unknown protocol(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(PROTOCOLS)}")
        for text in self.labels:
            try:
                parse_label_budget(text)
            except ValueError as e:
                raise ConfigError(f"eval.labels: {e}") from e


@dataclass
class Config:
    name: str = ""                     # run name; "" = <method>-<source>-<time>
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: MethodConfig = field(default_factory=lambda: method_class("simclr").config_class())
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    text: TextConfig = field(default_factory=TextConfig)
    table: TableConfig = field(default_factory=TableConfig)
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    @property
    def modality(self) -> str:
        """data.modality; else audio for a fetched audio set and a method that trains on sound; else the method's."""
        method = method_class(self.method.name)
        if not self.data.modality and self.data.source in BUILTIN_AUDIO and "audio" in method.modalities():
            return "audio"
        return self.data.modality or method.modality

    def validate(self) -> "Config":
        method_modality = method_class(self.method.name).modality
        if self.data.modality and self.data.modality not in method_class(self.method.name).modalities():
            fitting = [m for m in method_names() if self.data.modality in method_class(m).modalities()]
            raise ConfigError(f"method {self.method.name!r} is a pretext task for {method_modality} data, but "
                              f"data.modality is {self.data.modality!r}; for {self.data.modality} choose one of: "
                              f"{', '.join(fitting)}")
        for section in (self.data, self.backbone, self.method, self.augment, self.optim, self.train, self.eval,
                        self.text, self.table, self.interactions, self.audio):
            check = getattr(section, "validate", None)
            if check:
                try:
                    check()
                except ConfigError:
                    raise
                except ValueError as e:
                    raise ConfigError(str(e)) from e
        for section in ("text", "table", "interactions", "audio"):
            if getattr(self, section).test_fraction + self.data.val_fraction >= 1:
                raise ConfigError(f"{section}.test_fraction + data.val_fraction must stay below 1 to leave "
                                  f"training data, got {getattr(self, section).test_fraction} + {self.data.val_fraction}")
        return self

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML, atomically (a kill mid-write keeps the old file)."""
        atomic_write(Path(path), self.to_yaml().encode())


def _plain(value):
    """Tuples become lists so the YAML stays readable by any YAML reader."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value, hint, key: str):
    """Check value against a field's type hint, converting where it is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {hint}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):       # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
    if hint is str and isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool):
        return str(value)                # e.g. name: 2024 or name: 2024-01-01 in a YAML file
    if hint is str and isinstance(value, bool):
        return "on" if value else "off"  # YAML reads on / off (text.pack, train.sync_batchnorm) as booleans
    if hint in (int, str, bool):
        if type(value) is hint:
            return value
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and len(args) != len(value) and Ellipsis not in args:
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item_hints = [args[0]] * len(value) if origin is list or Ellipsis in args else args
        items = [_coerce(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(zip(value, item_hints))]
        return origin(items)
    if hint is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return value
        raise ConfigError(f"{key}: expected a mapping of setting names to values, got {value!r}")
    if hint is typing.Any:
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"in section '{prefix[:-1]}'" if prefix else "at the top level"
        raise ConfigError(f"unknown config key(s) {', '.join(repr(prefix + k) for k in unknown)} {where}; "
                          f"valid keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint) or (isinstance(hint, type) and issubclass(hint, MethodConfig)):
            sub_cls = hint
            if name == "method":
                sub_cls = _method_config_class(values[name])
            kwargs[name] = _build(sub_cls, values[name] or {}, key + ".")
        else:
            kwargs[name] = _coerce(values[name], hint, key)
    if cls is Config and "method" not in kwargs:
        kwargs["method"] = method_class("simclr").config_class()
    return cls(**kwargs)


def _method_config_class(section):
    name = (section or {}).get("name", "simclr") if isinstance(section, dict) else "simclr"
    try:
        return method_class(name).config_class
    except ValueError as e:
        raise ConfigError(f"method.name: {e}") from e


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """['optim.lr=0.3', 'train.epochs=2'] -> nested dict; values parsed as YAML scalars/lists."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. optim.lr=0.3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
        _set_dotted(tree, key.strip(), value)
    return tree


def merge(base: dict, extra: dict) -> dict:
    """Nested dict update: values of `extra` win, sub-dicts merge."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def backbone_config(values: dict) -> BackboneConfig:
    """A validated backbone section from a mapping (for tools that build a backbone without a run)."""
    cfg = _build(BackboneConfig, values, "backbone.")
    try:
        cfg.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- the method's recipe <- YAML file <- overrides, checked key by key and validated.

    A method's recipe (`Method.recipe`) holds the settings of other sections its paper needs,
    e.g. DINO's multi-crop, so `--method dino` alone trains DINO as published."""
    values: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (data:, method:, train: ...), "
                              f"not a {type(values).__name__}")
    extra = {}
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    method = merge(values, extra).get("method")
    method = method if isinstance(method, dict) else {}
    try:
        recipe = method_class(method.get("name", "simclr")).recipe
    except ValueError as e:
        raise ConfigError(f"method.name: {e}") from e
    recipe = _recipe_for_backbone(recipe, merge(values, extra).get("backbone"))
    layers = [recipe, values, extra]
    cfg = _build(Config, _merge_layers(layers), "")
    defaults = MODALITY_BACKBONES.get(cfg.modality)
    unnamed_or_default = cfg.backbone.name == BackboneConfig.name and not _names_backbone(layers, BackboneConfig.name)
    if defaults and (unnamed_or_default or cfg.backbone.name == defaults["name"]):
        cfg = _build(Config, _merge_layers([{"backbone": defaults}, *layers]), "")
    return cfg.validate()


# The backbone a kind of data trains by default when nothing names one. Sound: BYOL-A's encoder, which keeps
# the frequency axis that the ResNet's global pooling averages away (docs/audio.md); the paper's 2,048 units
# and dropout 0.3, while backbone.width (0.25 by default) scales its 64 channels.
MODALITY_BACKBONES = {"audio": {"name": "audio_cnn", "dim": 2048, "dropout": 0.3}}


def _recipe_for_backbone(recipe: dict, chosen: object) -> dict:
    """The recipe without the backbone fields that the backbone chosen by the user does not take.

    A recipe sizes its paper's backbone (SASRec's heads); a user who names another one (GRU4Rec under
    nextitem) keeps the recipe's fields that apply to it (dim, depth, dropout) instead of an error about
    a field they never set. A field the user sets that does not apply stays an error."""
    backbone = recipe.get("backbone")
    name = chosen.get("name") if isinstance(chosen, dict) else None
    if not isinstance(backbone, dict) or not name or name == backbone.get("name") or not is_backbone(name):
        return recipe
    taken = set(backbone_parameters(name))
    return {**recipe, "backbone": {k: v for k, v in backbone.items() if k == "name" or k in taken}}


def _names_backbone(layers: list[dict], name: str) -> bool:
    """Whether some layer sets backbone.name to `name` itself (a user asking for the ResNet on sound)."""
    return any(isinstance(layer.get("backbone"), dict) and layer["backbone"].get("name") == name for layer in layers)


DURATION_KEYS = ("steps", "epochs", "minutes")


def _merge_layers(layers: list[dict]) -> dict:
    """Merge config layers, later ones winning key by key, except that train.steps, train.epochs and
    train.minutes go together: the last layer that sets any of them decides how long to train, and
    the ones it does not set become 0 (so `train.epochs=2` on the command line beats a time budget),
    and the schedule knots of an earlier budget go too unless the layer gives its own."""
    out: dict = {}
    for layer in layers:
        train = layer.get("train")
        if isinstance(train, dict) and any(k in train for k in DURATION_KEYS):
            earlier = out.get("train") if isinstance(out.get("train"), dict) else {}
            out = {**out, "train": {**{k: v for k, v in earlier.items() if k not in DURATION_KEYS + ("schedule_knots",)},
                                    **{k: 0 for k in DURATION_KEYS}}}
        out = merge(out, layer)
    return out
