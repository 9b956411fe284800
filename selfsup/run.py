"""A run folder as an object: its config, its method with the newest weights, and kNN on it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.build import build_method
from selfsup.config import Config, load_config
from selfsup.errors import CheckpointError
from selfsup.evaluate import knn_accuracy
from selfsup.evaluate.datasets import labelled_eval_sets, split_labelled  # noqa: F401  (part of this module's API)
from selfsup.evaluate.features import MAP_LAYOUTS, check_kind, feature_batches, joined, map_features
from selfsup.evaluate.protocols import cached_features
from selfsup.methods import Method
from selfsup.modalities import modality_of
from selfsup.run_folder import RunFolder, method_weights
from selfsup.runtime import resolve_device, resolve_precision


@dataclass
class Run:
    path: Path
    config: Config
    method: Method
    step: int

    @property
    def backbone(self) -> torch.nn.Module:
        """The encoder evaluations read (DINO: its teacher)."""
        return self.method.evaluated_backbone

    @property
    def modality(self):
        return modality_of(self.config)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    def embed(self, samples, batch_size: int = 1024, device: str = "auto", progress: bool = False,
              kind: str = "pooled", precision: str | None = None) -> torch.Tensor:
        """Samples (uint8 images (N, C, H, W) or streamed images, token ids (N, L), table rows (N, F)) ->
        L2-normalised backbone features (N, D), backbone in eval mode. kind: 'pooled' (the backbone's
        output) or a map layout such as 'map' (images and convolutional backbones: the stages
        selfsup.evaluate.features.MAP_LAYOUTS names, joined by map_features).
        precision: of the forward pass (None: the run's training precision, as the evaluations use)."""
        return joined(self.embed_batches(samples, batch_size, device, progress, kind, precision), samples.shape[0])

    def embed_batches(self, samples, batch_size: int = 1024, device: str = "auto", progress: bool = False,
                      kind: str = "pooled", precision: str | None = None):
        """What `embed` returns, a batch at a time (float32 (B, D) on the CPU, in order): for outputs
        larger than memory."""
        check_kind(kind)
        dev = resolve_device(device)
        self.method.to(dev).eval()
        samples = self.modality.match_input(self.config, samples)
        stages = MAP_LAYOUTS.get(kind)       # None: the pooled output
        if stages is None:
            embed = self.method.embed
        else:
            embed = lambda batch: map_features(self.method.embed_maps(batch), stages)
        yield from feature_batches(embed, samples, batch_size, dev,
                                   resolve_precision(precision or self.config.train.precision, dev), progress)

    def data_name(self, source: str = "") -> str:
        """What the evaluations call the labelled data (`source`, else the run's eval or training source):
        the name its cached features are filed under."""
        return source or self.config.eval.source or self.config.data.source

    def labelled_sets(self, source: str = "", data_dir: str = "", max_train: int | None = None,
                      max_test: int | None = None, part: str = "test"):
        """(train, held-out) labelled data read as this run's training data was (tokenizer, normalisation):
        the held-out part 'test' for final figures, 'val' for anything chosen on the result."""
        return labelled_eval_sets(self.config, source, data_dir, max_train, max_test, run_dir=self.path, part=part)


def load_run(path: str | Path, checkpoint: str | Path | None = None) -> Run:
    """Rebuild a run's method from its config.yaml and load its newest (or the given) checkpoint."""
    folder = RunFolder(path)
    if not folder.is_run():
        raise CheckpointError(f"{folder} is not a selfsup run folder ({folder.why_not_a_run()}); "
                              "pass the folder `selfsup pretrain` wrote, e.g. runs/<name>")
    cfg = load_config(folder.config_file)
    tensors, meta = folder.load_checkpoint(checkpoint)
    method = build_method(cfg)
    if cfg.train.channels_last and modality_of(cfg).channels_last:
        method = method.use_channels_last()
    state = method_weights(tensors)
    try:
        method.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{folder.checkpoint_to_load(checkpoint)}: weights do not fit the run's config ({e})") from e
    return Run(folder.path, cfg, method, int(meta["step"]))


def knn_report(run: Run, train, test, k: int | None = None, temperature: float | None = None,
               baselines: bool = True, progress: bool = True, data_name: str = "") -> dict:
    """kNN top-1 of the run's backbone; with baselines, also of the same backbone at random
    initialisation and of the raw input (pixels, bag of words, the table's columns). With a data_name, the backbone's features are cached in the
    run folder for later evaluations (selfsup.evaluate.protocols.cached_features)."""
    if train.labels is None or test.labels is None:
        raise ValueError("kNN needs labelled train and test sets")
    k = k or run.config.eval.knn_k
    t = temperature or run.config.eval.knn_temperature
    bs = run.config.eval.batch_size

    def score(feats_train, feats_test):
        return knn_accuracy(feats_train, train.labels, feats_test, test.labels, k, t)

    if data_name:
        feats = [cached_features(run, s, f"{data_name} {split}", progress) for s, split in ((train, "train"), (test, "test"))]
    else:
        feats = [run.embed(s.samples, bs, progress=progress) for s in (train, test)]
    result = {"k": k, "temperature": t, "train_size": len(train), "test_size": len(test), "knn_top1": score(*feats)}
    if baselines:
        untrained = build_method(run.config)
        if run.config.train.channels_last and run.modality.channels_last:
            untrained = untrained.use_channels_last()
        random_init = Run(run.path, run.config, untrained, 0)
        result["knn_top1_random_init"] = score(random_init.embed(train.samples, bs, progress=progress),
                                               random_init.embed(test.samples, bs, progress=progress))
        raw = run.modality.raw_features(train, test)
        result["knn_top1_raw"] = score(*(F.normalize(f.float(), dim=1) for f in raw))
        result["raw_features"] = run.modality.raw_name
    return result
