"""The one training loop for every method: data -> views -> loss -> optimizer, with the
schedule, precision, checkpoints, metrics and progress around it. It calls the method through
its small interface (views / loss / after_step) and never branches on the method's name.

Everything a resumed run needs is in the checkpoint or derived from (seed, step, rank): the
epoch's order comes from (seed, epoch), each step's augmentation generator from (seed, step, rank).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from selfsup import distributed
from selfsup.augment import compile_augmentation
from selfsup.backbones import build_backbone_from_config
from selfsup.budget import Budget, Cadence, Costs, mean_steps_between
from selfsup.checkpoint import (CheckpointError, atomic_write, latest_checkpoint, list_checkpoints, load_checkpoint,
                                mark_best, optimizer_state, read_pointer, restore_optimizer, save_checkpoint,
                                set_aside_newer)
from selfsup.config import Config, ConfigError
from selfsup.data import DataError
from selfsup.evaluate.datasets import labelled_eval_sets
from selfsup.evaluate.online import OnlineMonitor
from selfsup.evaluate.representation import CollapseWatch
from selfsup.methods import Method, method_class
from selfsup.modalities import modality_of
from selfsup.optim import apply_hyperparameters, bias_lr_scale, build_optimizer, lr_factor
from selfsup.precision import autocast, grad_scaler


class TrainingError(RuntimeError):
    """Training stopped; the message says at which step, why, and what was kept."""


class Objective(torch.nn.Module):
    """The method's loss as a forward pass, so DistributedDataParallel sees the step's computation."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor]):
        return self.method.loss(views)


def compile_training(objective: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """torch.compile the training step's forward (backbone, heads and loss, and so their backward) and
    the batched augmentation. Only training is compiled: evaluations call the method itself, eagerly,
    so their other batch shapes never trigger a recompile."""
    compile_augmentation()
    return torch.compile(objective, mode=mode)


# ----------------------------------------------------------------------------- set-up helpers

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The training device; under torchrun on CUDA, this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but no CUDA device is available; use train.device=cpu")
    return device


def prepare_device(device: torch.device) -> torch.device:
    """Make `device` this process's current one. On CUDA, cuDNN times its convolution algorithms for
    each input shape once and keeps the fastest: the shapes of a run repeat every step."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' takes bf16 on CUDA GPUs that support it and on CPUs with native bf16 (AMX / AVX512-BF16)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_native_bf16() else "fp32"


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The augmentation generator of one step: a function of (seed, step, rank) alone."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 1024 + rank)
    return gen


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the epoch's permutation of n samples, seeded by (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=gen)[rank::world_size]


def build_method(cfg: Config, in_channels: int | None = None) -> Method:
    """The method with freshly initialised weights; the same config and seed give the same weights.
    The backbone's data-decided inputs (channels, vocabulary, columns) come from the resolved config;
    in_channels overrides the image channel count."""
    torch.manual_seed(cfg.train.seed)
    inputs = modality_of(cfg).backbone_inputs(cfg)
    if in_channels is not None:
        inputs["in_channels"] = in_channels
    try:
        backbone = build_backbone_from_config(cfg.backbone, **inputs)
        return method_class(cfg.method.name)(backbone, cfg.method, cfg.augment)
    except ValueError as e:            # e.g. a next-token task on a bidirectional backbone
        raise ConfigError(f"{cfg.method.name} with backbone {cfg.backbone.name}: {e}") from e


def load_training_data(cfg: Config, run_dir: Path | None = None):
    """The samples pretraining draws from; text and tables reuse the tokenizer / normalisation saved
    in run_dir (a resumed run) instead of fitting new ones."""
    return modality_of(cfg).training_data(cfg, run_dir)


def complete_config(cfg: Config, data) -> None:
    """Fill the values the data decides (image size and normalisation, vocabulary size, table
    columns), so config.yaml holds them resolved and evaluation reads data exactly as training did."""
    modality_of(cfg).complete_config(cfg, data)
    if cfg.train.batch_size > len(data):
        raise DataError(f"train.batch_size={cfg.train.batch_size} is larger than the data set ({len(data)} samples); "
                        f"lower it, e.g. train.batch_size={max(2, len(data) // 4)}")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def online_monitor(cfg: Config, data, device: torch.device, precision: str, labelled: tuple | None,
                   look_for_labels: bool, run_dir: Path | None = None) -> OnlineMonitor | None:
    """The online monitor: label-free measures on a fixed sample of images, and kNN on `labelled`
    (train, validation) or, when look_for_labels, on the config's labelled data if it has labels: its
    validation part, since the best checkpoint is chosen on this score. None when eval.online_every is 0."""
    if not cfg.eval.online_every:
        return None
    if labelled is None and look_for_labels:
        try:
            labelled = labelled_eval_sets(cfg, max_train=cfg.eval.online_train, max_test=cfg.eval.online_test,
                                          run_dir=run_dir, part="val")
        except (DataError, ValueError) as e:
            print(f"note: no online kNN during pretraining ({e}); label-free measures only", file=sys.stderr)
    if labelled is not None:
        labelled = (labelled[0].subset(cfg.eval.online_train), labelled[1].subset(cfg.eval.online_test))
    # The validation samples when there are labels; else evenly spaced training samples.
    sample = labelled[1].samples if labelled is not None else \
        data.samples[::max(1, len(data) // cfg.eval.online_test)][:cfg.eval.online_test]
    return OnlineMonitor(sample, labelled, min(cfg.eval.knn_k, cfg.eval.online_train), cfg.eval.knn_temperature,
                         cfg.eval.batch_size, device, precision)


# ----------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    run_dir: Path
    method: Method
    steps: int
    epochs: float
    seconds: float
    images_per_second: float
    peak_memory_mb: float
    final_loss: float
    stopped_early: bool
    # With train.minutes: (seconds from the budget's start, timing trial and compilation included, to the
    # loop's end; the budget's seconds). None for a run of fixed length.
    budget_use: tuple[float, float] | None = None


class _StopRequest:
    """SIGINT / SIGTERM set a flag; the loop finishes its step, saves and returns."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:           # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:               # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def pretrain(cfg: Config, run_dir: str | Path, *, data=None, resume: bool = False,
             progress: bool = True, labelled: tuple | None = None) -> TrainResult:
    """Pretrain cfg.method on the unlabeled data, writing config, metrics and checkpoints to run_dir.
    `data` (optional) is a data set of the config's modality (ImageSet, TextSet, TableSet).

    Online kNN (eval.online_every) scores on `labelled` (train, validation) when given; otherwise on the
    validation part of the config's source when its data was loaded from the config (not passed as
    `data`) and has labels. The best checkpoint is the one with the highest online kNN.
    train.threads applies for the call and is put back afterwards."""
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    in_a_group_already = torch.distributed.is_available() and torch.distributed.is_initialized()
    try:
        return _pretrain(cfg, Path(run_dir), data, resume, progress, labelled)
    finally:
        torch.set_num_threads(threads)
        compile_augmentation(False)          # a later run in this process decides for itself
        if not in_a_group_already and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()     # the group this call joined; evaluation is one process


def _pretrain(cfg: Config, run_dir: Path, data, resume: bool, progress: bool, labelled: tuple | None) -> TrainResult:
    world = distributed.setup("cuda" if resolve_device(cfg.train.device).type == "cuda" else "cpu")
    device = prepare_device(resolve_device(cfg.train.device, world.local_rank))
    precision = resolve_precision(cfg.train.precision, device)
    if precision == "bf16" and device.type == "cpu" and not _cpu_has_native_bf16() and world.is_main:
        print("warning: train.precision=bf16 on a CPU without native bf16 (AMX or AVX512-BF16): autocast emulates "
              "it, many times slower than fp32 (docs/scale.md); "
              "use train.precision=auto or fp32", file=sys.stderr)
    if cfg.train.batch_size % world.size:
        raise TrainingError(f"train.batch_size={cfg.train.batch_size} is the global batch; it must divide evenly "
                            f"among the {world.size} processes (e.g. train.batch_size="
                            f"{cfg.train.batch_size // world.size * world.size})")
    local_batch = cfg.train.batch_size // world.size
    main = world.is_main
    progress = progress and main
    data_from_config = data is None
    modality = modality_of(cfg)
    data = load_training_data(cfg, run_dir if resume else None) if data_from_config else data
    complete_config(cfg, data)
    # On a GPU an in-memory data set lives on the device: a batch is one index op, no copy. (A packed
    # text corpus stays where it is, mapped from disk.)
    samples = data.samples.to(device) if device.type == "cuda" and modality.fits_on_device else data.samples

    method = build_method(cfg).to(device)
    if cfg.train.channels_last and modality.channels_last:
        method = method.use_channels_last()
    objective = Objective(method)
    sharded = world.size > 1 and cfg.train.strategy == "fsdp"
    if world.size > 1:
        if cfg.train.sync_batchnorm == "on" or (cfg.train.sync_batchnorm == "auto" and method.sync_batchnorm):
            distributed.synchronise_batch_norm(method, device.type)
        if sharded:                      # every rank holds a shard of each parameter, not a copy
            distributed.shard(objective, device.type)
            held, total = distributed.parameters_held(method)
            if world.is_main:
                print(f"train.strategy=fsdp: each of the {world.size} processes holds {held:,} of the "
                      f"{total:,} parameters", file=sys.stderr)
        else:
            objective = torch.nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=method.skips_parameters)
    if cfg.train.compile:
        objective = compile_training(objective, cfg.train.compile_mode)
    optimizer = build_optimizer(method, cfg.optim)
    scaler = grad_scaler(device.type, precision)

    steps_per_epoch = len(data) // cfg.train.batch_size
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)

    order_cache: dict[int, torch.Tensor] = {}

    def batch_at(step: int) -> torch.Tensor:
        """This rank's batch of the given step: its slice of the epoch's seeded permutation."""
        epoch, position = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = epoch_order(len(data), cfg.train.seed, epoch, world.rank, world.size).to(samples.device)
        batch = samples[order_cache[epoch][position * local_batch:(position + 1) * local_batch]]
        if batch.dtype == torch.uint16:  # packed tokens: CUDA lacks most uint16 kernels
            batch = batch.int()
        return batch.to(device, non_blocking=True)

    def train_step(step: int, total_steps: int) -> tuple[torch.Tensor, dict, float]:
        """One optimizer step; returns the loss, the method's logs and the step's learning rate."""
        lr = cfg.optim.lr * lr_factor(step, total_steps, warmup_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio)
        constant_lr = cfg.optim.lr * lr_factor(step, total_steps, warmup_steps, "constant")
        for group in optimizer.param_groups:
            group["lr"] = (constant_lr if group.get("constant_lr") else lr) * group.get("lr_scale", 1.0)
        views = method.views(batch_at(step), step_generator(cfg.train.seed, step, world.rank, device))
        with autocast(device.type, precision):
            loss, logs = objective(views)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = distributed.whole(
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip or float("inf")))
        # Checked before the update (one host sync), so a NaN never reaches the weights or a checkpoint.
        # With fp16 an overflowing gradient is the scaler's business: it skips the step and lowers the scale.
        checked = [loss.detach().float()] + ([] if scaler.is_enabled() else [grad_norm.float()])
        if not torch.isfinite(torch.stack(checked)).all():
            kept = latest_checkpoint(ckpt_dir)
            what = f"loss became {loss.item()}" if not torch.isfinite(loss) else \
                f"the gradient norm became {grad_norm.item()}"
            raise TrainingError(
                f"{what} at step {step}; training stopped before updating the weights. "
                + (f"The last good checkpoint is {kept}.safetensors; " if kept else "No checkpoint was written yet; ")
                + "lower optim.lr, raise optim.warmup_epochs or set optim.grad_clip, then --resume or restart.")
        scaler.step(optimizer)
        scaler.update()
        method.after_step((step + 1) / total_steps)
        return loss, logs, lr

    ckpt_dir = run_dir / "checkpoints"
    # What the data order and optimizer depend on: a resume that changes these cannot continue the same run.
    identity = {"method": cfg.method.name, "optimizer_name": cfg.optim.name, "batch_size": cfg.train.batch_size,
                "num_images": len(data), "seed": cfg.train.seed}
    start_step = 0
    if resume:
        start_step = _resume(method, optimizer, scaler, ckpt_dir, device, identity, may_write=main,
                             changed_settings=changed_model_settings(run_dir / "config.yaml", cfg))
        # Overrides given with --resume take effect.
        apply_hyperparameters(optimizer, cfg.optim, bias_lr_scale(method, cfg.optim))
    elif list_checkpoints(ckpt_dir):
        raise TrainingError(f"{run_dir} already holds checkpoints; pass --resume to continue it, "
                            "or choose another run name")
    if not resume:
        # Nothing in the step draws from them today; code that will (data workers) stays reproducible.
        random.seed(cfg.train.seed * 1000 + world.rank)
        np.random.seed((cfg.train.seed * 1000 + world.rank) % 2**32)
    if main:                             # rank 0 alone writes; every rank reads
        if not run_dir.is_dir():
            print(f"run folder: {run_dir}", file=sys.stderr)
        run_dir.mkdir(parents=True, exist_ok=True)
        modality.save_assets(data, run_dir)      # before the monitor, which reads the run's tokenizer or table
        _keep_metrics_until(run_dir / "metrics.jsonl", start_step)
    # The monitor runs on rank 0 alone, which under FSDP holds only a shard of the weights.
    monitor = online_monitor(cfg, data, device, precision, labelled, look_for_labels=data_from_config,
                             run_dir=run_dir) if main and not sharded else None
    if main and sharded and cfg.eval.online_every:
        print("note: no online evaluation with train.strategy=fsdp (rank 0 holds a shard of the weights); "
              "the evaluations after pretraining read the whole model from the checkpoint", file=sys.stderr)
    online_steps = max(1, round(cfg.eval.online_every * steps_per_epoch))

    def checkpoint(step: int, online_knn: float | None, folder: Path = ckpt_dir) -> Path | None:
        """Every rank calls it (sharded weights are gathered whole); rank 0 writes."""
        tensors = {f"model.{k}": v for k, v in distributed.full_tensors(method.state_dict()).items()}
        opt_tensors, opt_meta = optimizer_state(optimizer)
        tensors.update(distributed.full_tensors(opt_tensors))
        if not main:
            return None
        tensors["rng.torch"] = torch.get_rng_state()
        if device.type == "cuda":            # dropout (SimCSE's augmentation) draws from the device's generator
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        meta = {"epoch": step / steps_per_epoch, "optimizer": opt_meta, **identity, "online_knn": online_knn,
                "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())},
                "config": cfg.to_dict()}
        try:
            return save_checkpoint(folder, step, tensors, meta, keep=cfg.train.keep_checkpoints)
        except OSError as e:
            kept = latest_checkpoint(ckpt_dir)
            raise TrainingError(
                f"could not write the checkpoint of step {step} in {folder} ({e.strerror or e}); training stopped. "
                + (f"The previous checkpoint {kept.name} is intact; " if kept else "No earlier checkpoint exists; ")
                + f"free some disk space, then continue with: selfsup pretrain --resume {run_dir}") from e

    budget = None
    if not cfg.train.steps and not cfg.train.epochs:     # a time budget: time a few steps, then fix the count
        evaluation_steps = online_steps if monitor is not None else 0
        budget = Budget(60 * cfg.train.minutes, Cadence(
            evaluation_steps, mean_steps_between(cfg.train.checkpoint_every, steps_per_epoch, evaluation_steps)))
        scratch = run_dir / ".budget-trial"
        try:
            costs = _timed_trial(train_step, method, optimizer, scaler, device, start_step,
                                 budget_seconds=60 * cfg.train.minutes, monitor=monitor,
                                 checkpoint=lambda step: checkpoint(step, None, scratch))
        finally:
            if main:                     # rank 0 alone wrote there
                shutil.rmtree(scratch, ignore_errors=True)
        budget.planned_from_trial(costs)
        cfg.train.steps = start_step + _steps_that_fit(budget, device)
        if main:
            monitor_text = f", {costs.evaluation:.1f} s an online evaluation" if monitor is not None else ""
            print(f"train.minutes={cfg.train.minutes:g}: {costs.step:.3f} s a step{monitor_text} and "
                  f"{costs.checkpoint:.1f} s a checkpoint, so {cfg.train.steps} steps "
                  f"({cfg.train.steps / steps_per_epoch:.2f} epochs); written to config.yaml as train.steps",
                  file=sys.stderr)
    total_steps = cfg.train.steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    # The config.yaml of a budgeted run holds both its step count and its minutes; replaying it keeps the
    # warm-up the run had, which may be over half of the steps when the re-plan found room for fewer.
    replays_a_budget = budget is None and cfg.train.steps and cfg.train.minutes
    if warmup_steps > total_steps // 2 and not replays_a_budget:
        if main:
            print(f"warning: optim.warmup_epochs={cfg.optim.warmup_epochs} ({warmup_steps} steps) would take most "
                  f"of the {total_steps} training steps; warming up over {total_steps // 2} instead", file=sys.stderr)
        warmup_steps = total_steps // 2
        # Recorded, so config.yaml replays the run: a budget's re-plan may leave more steps than the
        # shortening assumed, and a replay with that count would otherwise warm up for longer.
        cfg.optim.warmup_epochs = warmup_steps / steps_per_epoch
    # The trial's steps run at another pace than a sustained run, so the count is fixed again from the
    # loop's own pace once warm-up ends: up to its last step and the cosine's first (factor 1) the
    # learning rates do not depend on the count, so the run stays the one its config.yaml replays.
    # Without a warm-up left, 10 steps give the pace instead.
    count_free_steps = warmup_steps + 1 if warmup_steps > start_step else start_step + 10
    replan_at = min(count_free_steps, total_steps - 1) if budget is not None else None
    pace_from = start_step + (replan_at - start_step) // 2 if budget is not None else None
    if main:
        cfg.save(run_dir / "config.yaml")    # with the step count a time budget chose
    best_score = _best_score(ckpt_dir)

    method.train()
    step, loss_value, t_start, t_window, images_seen = start_step, float("nan"), time.time(), time.time(), 0
    last_saved, online_knn = start_step, None
    collapse_watch = CollapseWatch(method.spreads_embeddings)
    if budget is not None:
        budget.open_window(start_step)
    with open(run_dir / "metrics.jsonl" if main else os.devnull, "a") as metrics, \
            tqdm(total=total_steps, initial=start_step, desc=cfg.method.name, unit="step", disable=not progress,
                 dynamic_ncols=True, file=sys.stderr) as bar, \
            _StopRequest() as stop:
        while step < total_steps and not stop.requested:
            loss, logs, lr = train_step(step, total_steps)
            step += 1
            images_seen += local_batch * world.size
            if step == pace_from:
                budget.open_window(step)
            if step == replan_at:
                costs = budget.replan(step)
                total_steps = step + _steps_that_fit(budget, device)
                metrics.write(json.dumps({"step": step, "budget": {
                    "planned_steps": total_steps, "seconds_left": round(budget.seconds_left(), 2),
                    **{f"{k}_seconds": round(v, 5) for k, v in dataclasses.asdict(costs).items()}}}) + "\n")
                cfg.train.steps = bar.total = total_steps
                if main:
                    cfg.save(run_dir / "config.yaml")
                    bar.write(f"train.minutes={cfg.train.minutes:g}: at the loop's pace so far the budget holds "
                              f"{total_steps} steps ({total_steps / steps_per_epoch:.2f} epochs)", file=sys.stderr)

            if step % cfg.train.log_every == 0 or step == total_steps:
                now = time.time()
                rate = images_seen / max(now - t_window, 1e-9)
                logs = {"loss": loss, **logs}
                logs = {k: float(v) for k, v in logs.items()}
                loss_value = logs["loss"]
                record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr,
                          "images_per_s": round(rate, 1), "time": round(now - t_start, 2), **logs}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
                t_window, images_seen = now, 0
            bar.update(1)
            online_knn = None
            if monitor is not None and (step % online_steps == 0 or step == total_steps):
                monitor_start = time.perf_counter()
                measured = monitor(method)
                if budget is not None:
                    budget.spent_apart("evaluation", time.perf_counter() - monitor_start)
                online_knn = measured.get("online_knn_top1")
                record = {"step": step, "epoch": round(step / steps_per_epoch, 4), **measured,
                          "seconds": round(time.perf_counter() - monitor_start, 3)}
                warning = collapse_watch(measured)
                if warning:
                    record["collapse_warning"] = warning
                    bar.write(f"warning: step {step}: {warning}; check the learning rate and the method's "
                              "anti-collapse settings (docs/evaluation.md)", file=sys.stderr)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if progress:
                    knn_text = f"online kNN top-1 {online_knn:.2%}, " if online_knn is not None else ""
                    bar.write(f"step {step} (epoch {step / steps_per_epoch:.2f}): {knn_text}"
                              f"RankMe {measured['rankme']:.1f}, std {measured['std']:.2f}")
            epoch_end = step % steps_per_epoch == 0
            if step % cfg.train.checkpoint_every == 0 or epoch_end or step == total_steps or online_knn is not None:
                checkpoint_start = time.perf_counter()
                saved = checkpoint(step, online_knn)
                last_saved = step
                if saved is not None and online_knn is not None and (best_score is None or online_knn > best_score):
                    best_score = online_knn
                    mark_best(ckpt_dir, saved.with_suffix(""))
                if budget is not None:
                    budget.spent_apart("checkpoint", time.perf_counter() - checkpoint_start)
        if step != last_saved:
            checkpoint(step, None)
        if budget is not None:          # what the loop really spent, against what the plan assumed
            metrics.write(json.dumps({"step": step, "budget": {
                "used_seconds": round(budget.elapsed(), 2), "budget_seconds": 60 * cfg.train.minutes,
                **{f"measured_{k}_seconds": round(v, 5) for k, v in budget.measured(step).items()}}}) + "\n")
    seconds = time.time() - t_start
    done = step - start_step
    if stop.requested and step < total_steps:
        print(f"\nstopped at step {step}/{total_steps}; checkpoint saved. Continue with:\n"
              f"  selfsup pretrain --resume {run_dir}", file=sys.stderr)
    return TrainResult(run_dir=run_dir, method=method, steps=step, epochs=step / steps_per_epoch, seconds=seconds,
                       images_per_second=done * cfg.train.batch_size / max(seconds, 1e-9),
                       peak_memory_mb=peak_memory_mb(device), final_loss=loss_value,
                       stopped_early=step < total_steps,
                       budget_use=(budget.elapsed(), 60 * cfg.train.minutes) if budget is not None else None)


def _timed_trial(train_step, method: Method, optimizer, scaler, device: torch.device, first_step: int,
                 budget_seconds: float, monitor: OnlineMonitor | None = None, checkpoint=None,
                 untimed: int = 2, timed: int = 10) -> Costs:
    """The costs of a training step, an online evaluation and a checkpoint: the first from a trial of
    `untimed` + up to `timed` real steps (fewer when they would take over 2% of the budget) starting at
    first_step, the second from an evaluation by `monitor` (0 without one), the third from the last of
    three `checkpoint(step)` calls (0 without one), which write where the caller clears up. On a GPU the
    evaluation is timed twice and its second, warm, time kept: a first call pays for kernel selection
    and memory pools once. Afterwards the weights, buffers, optimizer, loss scale and random generators
    are put back, so the run proper starts exactly as without the trial."""
    saved = (copy.deepcopy(method.state_dict()), copy.deepcopy(optimizer.state_dict()), scaler.state_dict(),
             torch.get_rng_state(), random.getstate(), np.random.get_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    repeats = 2 if device.type == "cuda" else 1

    evaluation_seconds = 0.0
    for _ in range(repeats if monitor is not None else 0):
        start = time.perf_counter()
        monitor(method)
        evaluation_seconds = time.perf_counter() - start
    provisional_total = first_step + untimed + timed + 1
    seconds, counted = 0.0, 0
    for step in range(first_step, first_step + untimed):
        train_step(step, provisional_total)
    while counted < timed and (counted == 0 or seconds < 0.02 * budget_seconds):
        start = time.perf_counter()
        loss, _, _ = train_step(first_step + untimed + counted, provisional_total)
        float(loss.detach())             # waits for the device
        seconds += time.perf_counter() - start
        counted += 1
    method.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    optimizer.zero_grad(set_to_none=True)
    if scaler.is_enabled():
        scaler.load_state_dict(saved[2])
    torch.set_rng_state(saved[3])
    random.setstate(saved[4])
    np.random.set_state(saved[5])
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    checkpoint_seconds = 0.0
    # In a run each checkpoint also prunes an older one; the third write here does so too.
    for step in range(first_step, first_step + 3 if checkpoint is not None else first_step):
        start = time.perf_counter()
        checkpoint(step)
        checkpoint_seconds = time.perf_counter() - start
    return Costs(seconds / counted, evaluation_seconds, checkpoint_seconds)


def _steps_that_fit(budget: Budget, device: torch.device) -> int:
    """budget.steps_left(), under torchrun the fewest over the ranks, so that every rank stops at the same step."""
    steps = torch.tensor([budget.steps_left()], device=device)
    return -int(distributed.all_reduce_max(-steps))


def _best_score(ckpt_dir: Path) -> float | None:
    """The online kNN of the checkpoint the `best` pointer names (None when there is none)."""
    best = read_pointer(ckpt_dir, "best")
    if best is None:
        return None
    try:
        return json.loads(best.with_suffix(".json").read_text()).get("online_knn")
    except (OSError, ValueError):
        return None


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric rows after `step` (all rows for a fresh run), so a resumed run does not repeat them."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, "".join(row + "\n" for row in rows).encode())


def _resume(method: Method, optimizer, scaler, ckpt_dir: Path, device: torch.device, identity: dict,
            may_write: bool = True, changed_settings: str = "") -> int:
    """Load the newest checkpoint that reads cleanly, falling back to older ones; return its step.

    Every complete checkpoint is a candidate, also one newer than the `latest` pointer (a kill between
    a checkpoint's last file and the pointer's rename leaves it whole); only those that fail to load
    are set aside as damaged. A run whose settings changed fails at once, for every checkpoint alike.
    Temporary files of interrupted writes are cleared."""
    if may_write:
        for leftover in [*ckpt_dir.glob(".*.tmp"), *ckpt_dir.parent.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)
    candidates = list_checkpoints(ckpt_dir)
    if not candidates:
        raise TrainingError(f"--resume: no checkpoint in {ckpt_dir}; start the run without --resume")
    errors = []
    for stem in reversed(candidates):
        try:
            tensors, meta = load_checkpoint(stem)
            _check_same_run(meta, identity, stem)
            model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            _check_same_shapes(model_state, method.state_dict(), stem, changed_settings)
            method.load_state_dict(distributed.shaped_like(model_state, method.state_dict()))
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            tensors = distributed.shaped_like(tensors, {k: parameters[int(k.split(".")[1])] for k in tensors
                                                        if k.startswith("optimizer.")})
            restore_optimizer(optimizer, tensors, meta["optimizer"])
            if scaler.is_enabled() and meta.get("grad_scaler"):     # a run resumed in fp16 keeps its loss scale
                scaler.load_state_dict(meta["grad_scaler"])
            rng_states = (tensors["rng.torch"], _python_rng(meta["rng"]["python"]), _numpy_rng(meta["rng"]["numpy"]))
            step = int(meta["step"])
        except TrainingError:              # the settings changed: every checkpoint would fail the same way
            raise
        except (CheckpointError, RuntimeError, KeyError, ValueError, TypeError) as e:
            errors.append(f"{stem.name}: {e}")
            print(f"warning: cannot resume from {stem}: {e}; trying an older checkpoint", file=sys.stderr)
            continue
        torch.set_rng_state(rng_states[0])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        random.setstate(rng_states[1])
        np.random.set_state(rng_states[2])
        method.to(device)
        for damaged in set_aside_newer(ckpt_dir, stem) if may_write else []:
            print(f"warning: set aside {damaged.name} (could not be loaded) as *.damaged", file=sys.stderr)
        print(f"resuming from {stem.name} (step {step})", file=sys.stderr)
        return step
    raise TrainingError("--resume: no checkpoint could be loaded:\n  " + "\n  ".join(errors))


def _check_same_shapes(saved: dict, built: dict, stem: Path, changed_settings: str) -> None:
    """TrainingError naming the first tensor whose shape differs between the checkpoint and the model the
    config builds (a sharded tensor reports its whole shape)."""
    for name, tensor in saved.items():
        if name not in built or built[name].shape == tensor.shape:
            continue
        raise TrainingError(f"cannot resume {stem.name}: its {name} has shape {tuple(tensor.shape)} but the config "
                            f"builds {tuple(built[name].shape)}"
                            + (f" ({changed_settings} since the run was saved)" if changed_settings else "")
                            + "; resume with the original settings or start a new run")


def changed_model_settings(saved_config: Path, cfg: Config) -> str:
    """'backbone.width 0.25 -> 0.5, ...': the backbone and method settings of `cfg` that differ from the
    run's config.yaml as it was saved (empty when there is none)."""
    if not saved_config.is_file():
        return ""
    saved = yaml.safe_load(saved_config.read_text()) or {}
    now = cfg.to_dict()
    return ", ".join(f"{section}.{key} {value} -> {now[section].get(key)}"
                     for section in ("backbone", "method") for key, value in (saved.get(section) or {}).items()
                     if now[section].get(key) != value)


def _check_same_run(meta: dict, identity: dict, stem: Path) -> None:
    changed = {k: (meta[k], v) for k, v in identity.items() if k in meta and meta[k] != v}
    if changed:
        what = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
        raise TrainingError(f"cannot resume {stem.name}: the run's {what} changed since it was saved; "
                            "resume with the original settings or start a new run")


def _jsonable(state):
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, (tuple, list)):
        return [_jsonable(s) for s in state]
    return state


def _python_rng(state):
    return (state[0], tuple(state[1]), state[2])


def _numpy_rng(state):
    return (state[0], np.array(state[1], dtype=np.uint32), state[2], state[3], state[4])
