"""The one training loop for every method: data -> views -> loss -> optimizer, with the
schedule, precision, checkpoints, metrics and progress around it. It calls the method through
its small interface (views / loss / after_step) and never branches on the method's name.

Everything a resumed run needs is in the checkpoint or derived from (seed, step, rank): the
epoch's order comes from (seed, epoch), each step's augmentation generator from (seed, step, rank).
The run folder (selfsup.run_folder) writes and resumes checkpoints, the step planner
(selfsup.budget) turns train.minutes into a step count, the online schedule (selfsup.evaluate.online)
evaluates during training; the loop below calls them.
"""
from __future__ import annotations

import copy
import math
import random
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from selfsup import distributed
from selfsup.augment import compile_augmentation
from selfsup.budget import ONLINE_SHARE, Cadence, Costs, StepPlanner, mean_steps_between, online_spacing
from selfsup.build import build_method, complete_config, load_training_data
from selfsup.config import Config
from selfsup.data.order import epoch_order
from selfsup.data.stream import StepBatches, StreamBatches, StreamedImages, default_workers
from selfsup.errors import TrainingError
from selfsup.evaluate.online import OnlineMonitor, OnlineSchedule, online_monitor
from selfsup.methods import Method
from selfsup.modalities import modality_of
from selfsup.optim import apply_hyperparameters, bias_lr_scale, build_optimizer, schedule_progress, set_learning_rates
from selfsup.precision import autocast, grad_scaler
from selfsup.run_folder import RunFolder
from selfsup.runtime import cpu_has_native_bf16, peak_memory_mb, prepare_device, resolve_device, resolve_precision
from selfsup.trackers import open_trackers


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


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The augmentation generator of one step: a function of (seed, step, rank) alone."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 1024 + rank)
    return gen


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


# ----------------------------------------------------------------------------- the loop's parts

class StepLog:
    """Every `every` steps and at the last: a metrics row (loss, lr, images/s since the last row, the
    method's own terms) and the progress bar's figures."""

    def __init__(self, every: int, steps_per_epoch: int, batch_size: int, log, bar):
        self.every, self.steps_per_epoch, self.batch_size, self.log, self.bar = every, steps_per_epoch, batch_size, log, bar
        self.started = self.window_start = time.time()
        self.images = 0
        self.loss = float("nan")               # the last logged loss

    def __call__(self, step: int, total_steps: int, loss: torch.Tensor, logs: dict, lr: float) -> None:
        self.images += self.batch_size
        if step % self.every and step != total_steps:
            return
        now = time.time()
        rate = self.images / max(now - self.window_start, 1e-9)
        logs = {k: float(v) for k, v in {"loss": loss, **logs}.items()}
        self.loss = logs["loss"]
        self.log({"step": step, "epoch": round(step / self.steps_per_epoch, 4), "lr": lr,
                  "images_per_s": round(rate, 1), "time": round(now - self.started, 2), **logs})
        self.bar.set_postfix(loss=f"{self.loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
        self.window_start, self.images = now, 0


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


class EpochBatches:
    """The batch of each step: this rank's slice of the epoch's seeded permutation of the samples."""

    def __init__(self, samples: torch.Tensor, count: int, seed: int, steps_per_epoch: int, local_batch: int,
                 world: distributed.World, device: torch.device):
        self.samples, self.count, self.seed = samples, count, seed
        self.steps_per_epoch, self.local_batch = steps_per_epoch, local_batch
        self.world, self.device = world, device
        self._order: dict[int, torch.Tensor] = {}

    def __call__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._order:
            self._order = {epoch: epoch_order(self.count, self.seed, epoch, self.world.rank,
                                              self.world.size).to(self.samples.device)}
        batch = self.samples[self._order[epoch][position * self.local_batch:(position + 1) * self.local_batch]]
        if batch.dtype == torch.uint16:  # packed tokens: CUDA lacks most uint16 kernels
            batch = batch.int()
        return batch.to(self.device, non_blocking=True)


def read_later(values: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start copying a small tensor to the host; the function returned waits for that copy alone (on a
    GPU not for the work queued after it, as `.item()` would) and gives the host copy."""
    if values.device.type != "cuda":
        return lambda: values
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)   # page-locked: the copy need not wait
    host.copy_(values, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read():
        copied.synchronize()
        return host
    return read


class LateChecks:
    """Whether each step's loss and gradient norm were finite, read on the host `lag` steps after the
    step queued its check. Reading a value back from a GPU waits for the work queued before it: read in
    the step itself, the host could not queue the next step's augmentation and forward while the GPU
    still runs this step's backward, and the GPU would idle while they are launched. Read a step late,
    a NaN's update has already been queued when it is found, so the weights in memory are lost then;
    the loop reads every check before it writes or evaluates the weights (TrainStep.settle), so a NaN
    never reaches a checkpoint. lag=0 reads each check before its step's update. The values are copied
    as the step makes them: a later step may reuse their device memory (CUDA graphs do)."""

    def __init__(self, lag: int = 1):
        self.lag = lag
        self._queued: deque = deque()

    def queue(self, step: int, values: dict[str, torch.Tensor]) -> None:
        copy = read_later(torch.stack([value.detach().float() for value in values.values()]))
        self._queued.append((step, list(values), copy))

    def first_failure(self, keep: int = 0, consume: bool = True) -> tuple[int, dict[str, float]] | None:
        """Read all but the newest `keep` checks: (step, values) of the first that failed, else None.
        Read checks are dropped (all of them once one failed), unless `consume` is false."""
        readable = list(self._queued)[:max(0, len(self._queued) - keep)]
        failure = None
        for step, names, copy in readable:
            values = dict(zip(names, copy().tolist()))
            if not all(math.isfinite(value) for value in values.values()):
                failure = step, values
                break
        if consume and failure is not None:
            self._queued.clear()
        elif consume:
            for _ in readable:
                self._queued.popleft()
        return failure


class TrainStep:
    """One optimizer step: learning rates, views, loss, backward, clipping, the finiteness check, update."""

    def __init__(self, cfg: Config, method: Method, objective: torch.nn.Module, optimizer, scaler,
                 batches: EpochBatches | StreamBatches | Callable[[int], torch.Tensor], warmup_steps: int,
                 folder: RunFolder, rank: int, device: torch.device, precision: str, check_lag: int = 1):
        self.cfg, self.method, self.objective, self.optimizer, self.scaler = cfg, method, objective, optimizer, scaler
        self.batches, self.warmup_steps, self.folder = batches, warmup_steps, folder
        self.rank, self.device, self.precision = rank, device, precision
        self.checks = LateChecks(check_lag)

    def __call__(self, step: int, total_steps: int) -> tuple[torch.Tensor, dict, float]:
        """Returns the loss, the method's logs and the step's learning rate."""
        optim = self.cfg.optim
        lr = set_learning_rates(self.optimizer, optim, step, total_steps, self.warmup_steps, self.cfg.train.batch_size,
                                self.cfg.train.schedule_knots)
        views = self.method.views(self.batches(step), step_generator(self.cfg.train.seed, step, self.rank, self.device))
        with autocast(self.device.type, self.precision):
            loss, logs = self.objective(views)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = distributed.whole(
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), optim.grad_clip or float("inf")))
        # With fp16 an overflowing gradient is the scaler's business: it skips the step and lowers the scale.
        self.checks.queue(step, {"loss": loss, **({} if self.scaler.is_enabled() else {"gradient norm": grad_norm})})
        self._stop_on_a_failed_check(keep=self.checks.lag)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step((step + 1) / total_steps)
        return loss, logs, lr

    def settle(self) -> None:
        """Read every outstanding finiteness check; before the weights are saved."""
        self._stop_on_a_failed_check(keep=0)

    def finite_so_far(self) -> bool:
        """Whether every step so far was finite; before the weights are evaluated. A failure is left for
        the next step or checkpoint to stop the run at, where every torchrun rank reads it together (the
        online monitor runs on rank 0 alone)."""
        return self.checks.first_failure(consume=False) is None

    def _stop_on_a_failed_check(self, keep: int) -> None:
        failure = self.checks.first_failure(keep)
        if failure is None:
            return
        step, values = failure
        name, value = next((name, value) for name, value in values.items() if not math.isfinite(value))
        kept = self.folder.latest_checkpoint()
        raise TrainingError(
            f"the {name} became {value} at step {step}; training stopped before any checkpoint held it. "
            + (f"The last good checkpoint is {kept}.safetensors; " if kept else "No checkpoint was written yet; ")
            + "lower optim.lr, raise optim.warmup_epochs or set optim.grad_clip, then --resume or restart.")


# ----------------------------------------------------------------------------- pretraining

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
        result = _pretrain(cfg, RunFolder(run_dir), data, resume, progress, labelled)
        if not in_a_group_already and torch.distributed.is_initialized():
            # Every rank past its last collective before any tears the group down: gloo aborts a rank
            # whose peer closed the connection under an operation still in flight (seen under load).
            torch.distributed.barrier()
        return result
    finally:
        torch.set_num_threads(threads)
        compile_augmentation(False)          # a later run in this process decides for itself
        if not in_a_group_already and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()     # the group this call joined; evaluation is one process


def _pretrain(cfg: Config, folder: RunFolder, data, resume: bool, progress: bool, labelled: tuple | None) -> TrainResult:
    world, device, precision = _join_processes(cfg)
    main = world.is_main
    progress = progress and main
    data_from_config = data is None
    modality = modality_of(cfg)
    data = load_training_data(cfg, folder.path if resume else None) if data_from_config else data
    complete_config(cfg, data)
    method, objective, sharded = _build_model(cfg, world, device)
    optimizer = build_optimizer(method, cfg.optim)
    scaler = grad_scaler(device.type, precision)

    steps_per_epoch = len(data) // cfg.train.batch_size
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    batches = _batch_source(cfg, data, method, steps_per_epoch, world, device)
    train_step = TrainStep(cfg, method, objective, optimizer, scaler, batches, warmup_steps, folder, world.rank,
                           device, precision)
    # What the data order and optimizer depend on: a resume that changes these cannot continue the same run.
    identity = {"method": cfg.method.name, "optimizer_name": cfg.optim.name, "batch_size": cfg.train.batch_size,
                "num_images": len(data), "seed": cfg.train.seed}
    start_step = _start(cfg, folder, resume, method, optimizer, scaler, device, identity, world)
    if main:                             # rank 0 alone writes; every rank reads
        folder.create()
        modality.save_assets(data, folder.path)      # before the monitor, which reads the run's tokenizer or table
        folder.keep_metrics_until(start_step)

    def checkpoint(step: int, online_knn: float | None, into: Path | None = None) -> Path | None:
        train_step.settle()              # a NaN never reaches a checkpoint
        return folder.save_training_state(step, method, optimizer, scaler, device, epoch=step / steps_per_epoch,
                                          identity=identity, online_knn=online_knn, config=cfg.to_dict(),
                                          keep=cfg.train.keep_checkpoints, write=main, into=into)

    # The monitor runs on rank 0 alone, which under FSDP holds only a shard of the weights.
    monitor = online_monitor(cfg, data, device, precision, labelled, look_for_labels=data_from_config,
                             run_dir=folder.path) if main and not sharded else None
    if main and sharded and cfg.eval.online_every:
        print("note: no online evaluation with train.strategy=fsdp (rank 0 holds a shard of the weights); "
              "the evaluations after pretraining read the whole model from the checkpoint", file=sys.stderr)
    planner = None
    if not cfg.train.steps and not cfg.train.epochs:     # a time budget: time a few steps, then fix the count
        planner = _plan_budget(cfg, folder, train_step, method, optimizer, scaler, device, start_step, monitor,
                               checkpoint, steps_per_epoch, main)
    online = OnlineSchedule(monitor, max(1, round(cfg.eval.online_every * steps_per_epoch)), steps_per_epoch,
                            method.spreads_embeddings, progress) if monitor is not None else None
    total_steps = cfg.train.steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    replays_a_budget = planner is None and bool(cfg.train.steps and cfg.train.minutes)
    warmup_steps = train_step.warmup_steps = fit_warmup(cfg, warmup_steps, total_steps, steps_per_epoch,
                                                         replays_a_budget, say=main)
    if main:
        folder.save_config(cfg)          # with the step count a time budget chose
    best_score = folder.best_score()

    method.train()
    step = last_saved = start_step
    if planner is not None:
        planner.start_loop(start_step, warmup_steps, total_steps)
    trackers = open_trackers(cfg.train.loggers, folder.path, start_step, cfg.to_dict()) if main else []
    with folder.metrics_writer(write=main, trackers=trackers) as log, \
            tqdm(total=total_steps, initial=start_step, desc=cfg.method.name, unit="step", disable=not progress,
                 dynamic_ncols=True, file=sys.stderr) as bar, \
            _StopRequest() as stop:
        step_log = StepLog(cfg.train.log_every, steps_per_epoch, cfg.train.batch_size, log, bar)
        while step < total_steps and not stop.requested:
            loss, logs, lr = train_step(step, total_steps)
            step += 1
            replanned = planner.after_step(step) if planner is not None else None
            if replanned is not None:
                if replanned.late:       # the decay has begun: it goes on from where it is (a knot)
                    cfg.train.schedule_knots.append(
                        [step, schedule_progress(step, total_steps, warmup_steps, cfg.train.schedule_knots)])
                total_steps = replanned.total_steps
                log(replanned.row)
                cfg.train.steps = bar.total = total_steps
                if main:
                    folder.save_config(cfg)
                    bar.write(f"train.minutes={cfg.train.minutes:g}: at the loop's pace so far the budget holds "
                              f"{total_steps} steps ({total_steps / steps_per_epoch:.2f} epochs)", file=sys.stderr)
            step_log(step, total_steps, loss, logs, lr)
            bar.update(1)
            online_knn = None
            # The monitor scores finite weights only; the wait for the device is the steps' time.
            if online is not None and online.due(step, total_steps) and train_step.finite_so_far():
                started = time.perf_counter()
                online_knn = online(step, method, log, bar.write)
                if planner is not None:
                    planner.spent_apart("evaluation", time.perf_counter() - started)
            if step % cfg.train.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == total_steps \
                    or online_knn is not None:
                train_step.settle()      # the wait for the device's queue is the steps' time, not the checkpoint's
                started = time.perf_counter()
                saved = checkpoint(step, online_knn)
                log.checkpointed(step)
                last_saved = step
                if saved is not None and online_knn is not None and (best_score is None or online_knn > best_score):
                    best_score = online_knn
                    folder.mark_best(saved)
                if planner is not None:
                    planner.spent_apart("checkpoint", time.perf_counter() - started)
        if step != last_saved:
            checkpoint(step, None)
            log.checkpointed(step)
        if planner is not None:
            log(planner.closing_row(step))
    seconds = time.time() - step_log.started
    if stop.requested and step < total_steps:
        print(f"\nstopped at step {step}/{total_steps}; checkpoint saved. Continue with:\n"
              f"  selfsup pretrain --resume {folder}", file=sys.stderr)
    return TrainResult(run_dir=folder.path, method=method, steps=step, epochs=step / steps_per_epoch, seconds=seconds,
                       images_per_second=(step - start_step) * cfg.train.batch_size / max(seconds, 1e-9),
                       peak_memory_mb=peak_memory_mb(device), final_loss=step_log.loss,
                       stopped_early=step < total_steps,
                       budget_use=planner.use() if planner is not None else None)


# ----------------------------------------------------------------------------- set-up steps

def _join_processes(cfg: Config) -> tuple[distributed.World, torch.device, str]:
    """This process's place among the torchrun processes (one without torchrun), its device, its precision."""
    world = distributed.setup("cuda" if resolve_device(cfg.train.device).type == "cuda" else "cpu")
    device = prepare_device(resolve_device(cfg.train.device, world.local_rank))
    precision = resolve_precision(cfg.train.precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16() and world.is_main:
        print("warning: train.precision=bf16 on a CPU without native bf16 (AMX or AVX512-BF16): autocast emulates "
              "it, many times slower than fp32 (docs/scale.md); "
              "use train.precision=auto or fp32", file=sys.stderr)
    if cfg.train.batch_size % world.size:
        raise TrainingError(f"train.batch_size={cfg.train.batch_size} is the global batch; it must divide evenly "
                            f"among the {world.size} processes (e.g. train.batch_size="
                            f"{cfg.train.batch_size // world.size * world.size})")
    return world, device, precision


def _batch_source(cfg: Config, data, method: Method, steps_per_epoch: int, world: distributed.World,
                  device: torch.device) -> EpochBatches | StreamBatches:
    """What hands the loop each step's batch: data workers for streamed images, else slices of the data
    in memory."""
    local_batch = cfg.train.batch_size // world.size
    if isinstance(data, StreamedImages):
        steps = StepBatches(data, method.augment_cfg, method.num_views, cfg.train.seed, steps_per_epoch, local_batch,
                            world.rank, world.size)
        return StreamBatches(steps, cfg.train.workers or default_workers(), device)
    # On a GPU an in-memory data set lives on the device: a batch is one index op, no copy. (A packed
    # text corpus or clips decoded to a file stay where they are, mapped from disk.)
    on_device = device.type == "cuda" and modality_of(cfg).fits_on_device(data)
    samples = data.samples.to(device) if on_device else data.samples
    return EpochBatches(samples, len(data), cfg.train.seed, steps_per_epoch, local_batch, world, device)


def _build_model(cfg: Config, world: distributed.World, device: torch.device):
    """(the method on its device, the objective the step calls: wrapped for DDP / FSDP and compiled as
    the config says, whether its weights are sharded over the processes)."""
    method = build_method(cfg)
    if cfg.train.init_from:
        RunFolder(cfg.train.init_from).load_backbone_into(method)
    method = method.to(device)
    if cfg.train.channels_last and modality_of(cfg).channels_last:
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
    return method, objective, sharded


def _start(cfg: Config, folder: RunFolder, resume: bool, method: Method, optimizer, scaler, device: torch.device,
           identity: dict, world: distributed.World) -> int:
    """The step the run starts at: a resumed run's checkpoint, else 0 in a folder without checkpoints."""
    if resume:
        start_step = folder.resume(method, optimizer, scaler, device, identity, may_write=world.is_main,
                                   changed_settings=folder.changed_model_settings(cfg))
        # Overrides given with --resume take effect.
        apply_hyperparameters(optimizer, cfg.optim, bias_lr_scale(method, cfg.optim))
        return start_step
    if folder.list_checkpoints():
        raise TrainingError(f"{folder} already holds checkpoints; pass --resume to continue it, "
                            "or choose another run name")
    # Nothing in the step draws from them today; code that will (data workers) stays reproducible.
    random.seed(cfg.train.seed * 1000 + world.rank)
    np.random.seed((cfg.train.seed * 1000 + world.rank) % 2**32)
    return 0


def _plan_budget(cfg: Config, folder: RunFolder, train_step: TrainStep, method: Method, optimizer, scaler,
                 device: torch.device, start_step: int, monitor: OnlineMonitor | None, checkpoint,
                 steps_per_epoch: int, main: bool) -> StepPlanner:
    """Time a few steps, an online evaluation and a checkpoint, and set cfg.train.steps to what fits in
    train.minutes (and cfg.eval.online_every wider when evaluations would take too much of it); the
    planner fixes the count again from the loop's pace."""
    try:
        costs = _timed_trial(train_step, method, optimizer, scaler, device, start_step,
                             budget_seconds=60 * cfg.train.minutes, monitor=monitor,
                             checkpoint=lambda step: checkpoint(step, None, folder.budget_trial))
    finally:
        if main:                         # rank 0 alone wrote there
            shutil.rmtree(folder.budget_trial, ignore_errors=True)
    requested = max(1, round(cfg.eval.online_every * steps_per_epoch)) if monitor is not None else 0
    evaluation_steps = online_spacing(costs, requested)
    if evaluation_steps != requested:
        cfg.eval.online_every = evaluation_steps / steps_per_epoch        # config.yaml replays the spacing
        if main:
            print(f"note: an online evaluation takes {costs.evaluation:.1f} s, {costs.evaluation / costs.step:.0f} "
                  f"steps' time: evaluating every {evaluation_steps} steps instead of every {requested} keeps them "
                  f"under {ONLINE_SHARE:.0%} of train.minutes (eval.online_every={cfg.eval.online_every:.3g} in "
                  "config.yaml)", file=sys.stderr)
    cadence = Cadence(evaluation_steps,
                      mean_steps_between(cfg.train.checkpoint_every, steps_per_epoch, evaluation_steps))
    planner = StepPlanner(60 * cfg.train.minutes, cadence, agree=lambda steps: _fewest_over_ranks(steps, device))
    cfg.train.steps = planner.first_plan(costs, start_step)
    if main:
        monitor_text = f", {costs.evaluation:.1f} s an online evaluation" if monitor is not None else ""
        print(f"train.minutes={cfg.train.minutes:g}: {costs.step:.3f} s a step{monitor_text} and "
              f"{costs.checkpoint:.1f} s a checkpoint, so {cfg.train.steps} steps "
              f"({cfg.train.steps / steps_per_epoch:.2f} epochs); written to config.yaml as train.steps",
              file=sys.stderr)
    return planner


def fit_warmup(cfg: Config, warmup_steps: int, total_steps: int, steps_per_epoch: int, replays_a_budget: bool,
                say: bool) -> int:
    """The warm-up's step count, shortened to half the run when it would take most of it. The config.yaml
    of a budgeted run holds both its step count and its minutes; replaying it keeps the warm-up the run
    had, which may be over half of the steps when the re-plan found room for fewer."""
    if warmup_steps <= total_steps // 2 or replays_a_budget:
        return warmup_steps
    if say:
        print(f"warning: optim.warmup_epochs={cfg.optim.warmup_epochs} ({warmup_steps} steps) would take most "
              f"of the {total_steps} training steps; warming up over {total_steps // 2} instead", file=sys.stderr)
    # Recorded, so config.yaml replays the run: a budget's re-plan may leave more steps than the
    # shortening assumed, and a replay with that count would otherwise warm up for longer.
    cfg.optim.warmup_epochs = (total_steps // 2) / steps_per_epoch
    return total_steps // 2


def _timed_trial(train_step, method: Method, optimizer, scaler, device: torch.device, first_step: int,
                 budget_seconds: float, monitor: OnlineMonitor | None = None, checkpoint=None,
                 untimed: int = 2, timed: int = 10) -> Costs:
    """The costs of a training step, an online evaluation and a checkpoint: the first from a trial of
    `untimed` + up to `timed` real steps (fewer when they would take over 2% of the budget) starting at
    first_step, the second from an evaluation by `monitor` (0 without one), the third from the last of
    three `checkpoint(step)` calls after those steps (0 without one), so with the optimizer state the
    loop's checkpoints hold; they write where the caller clears up. On a GPU the
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
    # Whether to time another step is decided by every rank together (the fewest): each rank's own clock
    # could let one rank run a training step, and its collectives, that the others never join.
    while counted < timed and (counted == 0 or _fewest_over_ranks(int(seconds < 0.02 * budget_seconds), device)):
        start = time.perf_counter()
        loss, _, _ = train_step(first_step + untimed + counted, provisional_total)
        float(loss.detach())             # waits for the device
        seconds += time.perf_counter() - start
        counted += 1
    # Timed before the state is put back: an optimizer's state (momentum, Adam's moments) exists only after
    # its first step, and a checkpoint without it, as at a fresh run's start, is half the loop's or less.
    checkpoint_seconds = 0.0
    # In a run each checkpoint also prunes an older one; the third write here does so too.
    for step in range(first_step, first_step + 3 if checkpoint is not None else first_step):
        start = time.perf_counter()
        checkpoint(step)
        checkpoint_seconds = time.perf_counter() - start
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
    return Costs(seconds / counted, evaluation_seconds, checkpoint_seconds)


def _fewest_over_ranks(steps: int, device: torch.device) -> int:
    """Under torchrun the fewest steps over the ranks, so that every rank stops at the same step."""
    return -int(distributed.all_reduce_max(-torch.tensor([steps], device=device)))
