"""Any selfsup method as a Lightning module, for training code that already runs on PyTorch Lightning
(extra 'lightning': pip install 'selfsup[lightning]'; selfsup's own trainer does not need it).

    from selfsup.lightning import SelfSupModule
    module = SelfSupModule(load_config(overrides=["method.name=byol", "train.steps=1000"]))
    lightning.Trainer(max_steps=module.total_steps, gradient_clip_val=module.gradient_clip_val).fit(module)

The module trains what `selfsup pretrain` trains, step for step: the same batches (the epoch's seeded
permutation, indexed by step), the same views (the step's generator), the method's loss, its
optimizer and learning-rate schedule set before each step, and its `after_step` (EMA teachers,
queues) after each optimizer step. `module.method` is the selfsup method; its backbone is the
encoder. Length: train.steps or train.epochs (a wall-clock budget is selfsup's trainer's business).
"""
from __future__ import annotations

import lightning
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.build import build_method, complete_config, load_training_data
from selfsup.config import Config
from selfsup.errors import ConfigError
from selfsup.optim import build_optimizer, set_learning_rates
from selfsup.train import epoch_order, fit_warmup, step_generator


class StepBatches(Dataset):
    """Item s is the batch of step s: a slice of its epoch's seeded permutation (as selfsup's trainer)."""

    def __init__(self, samples: torch.Tensor, seed: int, batch_size: int, total_steps: int):
        self.samples, self.seed, self.batch_size, self.total_steps = samples, seed, batch_size, total_steps
        self.steps_per_epoch = len(samples) // batch_size

    def __len__(self) -> int:
        return self.total_steps

    def __getitem__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.samples), self.seed, epoch)
        return self.samples[order[position * self.batch_size:(position + 1) * self.batch_size]]


class SelfSupModule(lightning.LightningModule):
    def __init__(self, cfg: Config, data=None):
        """cfg: a selfsup config; data: its training data (default: read from cfg.data, as pretrain does)."""
        super().__init__()
        data = load_training_data(cfg) if data is None else data
        complete_config(cfg, data)
        self.cfg, self.data = cfg, data
        self.method = build_method(cfg)
        self.steps_per_epoch = len(data) // cfg.train.batch_size
        if cfg.train.steps:
            self.total_steps = cfg.train.steps
        elif cfg.train.epochs:
            self.total_steps = max(1, round(cfg.train.epochs * self.steps_per_epoch))
        else:
            raise ConfigError("SelfSupModule trains for train.steps or train.epochs; train.minutes is a budget "
                              "of selfsup's own trainer")
        self.warmup_steps = fit_warmup(cfg, round(cfg.optim.warmup_epochs * self.steps_per_epoch), self.total_steps,
                                       self.steps_per_epoch, replays_a_budget=False, say=True)
        self.gradient_clip_val = cfg.optim.grad_clip or None

    def train_dataloader(self) -> DataLoader:
        batches = StepBatches(self.data.samples, self.cfg.train.seed, self.cfg.train.batch_size, self.total_steps)
        return DataLoader(batches, batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return build_optimizer(self.method, self.cfg.optim)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        lr = set_learning_rates(self.optimizers().optimizer, self.cfg.optim, step, self.total_steps, self.warmup_steps,
                                self.cfg.train.batch_size, self.cfg.train.schedule_knots)
        views = self.method.views(batch, step_generator(self.cfg.train.seed, step, self.global_rank, batch.device))
        loss, logs = self.method.loss(views)
        self.log_dict({"lr": lr, **{name: float(value) for name, value in logs.items()}})
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.method.after_step(self.global_step / self.total_steps)
