"""Several processes (gloo on CPU) give what one process gives on the same global batch: the same
loss and the same gradients; and `torchrun --nproc_per_node 2 -m selfsup pretrain` trains, writes
from rank 0 alone, and resumes exactly."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import load_config
from selfsup import distributed
from selfsup.augment import AugmentConfig
from selfsup.backbones import build_backbone
from selfsup.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.methods import method_class, method_names
from selfsup.train import Objective, step_generator

GLOBAL_BATCH, WORLD = 16, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(method_name: str):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=0.125, stem="cifar", in_channels=1)
    cls = method_class(method_name)
    config = cls.config_class()
    for key, value in {"proj_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 32}.items():
        if hasattr(config, key):
            setattr(config, key, value)
    return cls(backbone, config, AugmentConfig(size=16, mean=[0.3], std=[0.3]))


def global_views(method):
    images = torch.randint(0, 256, (GLOBAL_BATCH, 1, 20, 20), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    return method.views(images, step_generator(0, 0, 0, torch.device("cpu")))


def loss_and_gradients(method, views, objective):
    loss, _ = objective(views)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}


def one_rank(rank, method_name, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        method = distributed.synchronise_batch_norm(build(method_name), "cpu")
        method.train()
        share = GLOBAL_BATCH // WORLD
        views = [v[rank * share:(rank + 1) * share] for v in global_views(method)]
        ddp = torch.nn.parallel.DistributedDataParallel(Objective(method), find_unused_parameters=True)
        loss, grads = loss_and_gradients(method, views, ddp)
        torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method_name", ["simclr", "barlow", "byol"])
def test_two_processes_match_one_process_on_the_global_batch(method_name, tmp_path):
    """SimCLR gathers negatives and Barlow Twins its cross-correlation over ranks; BYOL's loss is a
    per-sample mean. With batch norm over the global batch, all three must equal one process."""
    method = build(method_name)
    method.train()
    single_loss, single_grads = loss_and_gradients(method, global_views(method), Objective(method))

    mp.spawn(one_rank, args=(method_name, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        if method_name != "byol":        # a gathered loss is the global loss on every rank
            assert result["loss"] == pytest.approx(single_loss, rel=1e-4)
        assert result["grads"].keys() == single_grads.keys()
        # Entries that are zero in theory (a bias before batch norm) hold float noise: atol is set by
        # the largest gradient of the network, not of the tensor.
        scale = max(g.abs().max().item() for g in single_grads.values())
        worst = max((result["grads"][k] - g).abs().max().item() for k, g in single_grads.items())
        for name, grad in single_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6 * scale)
        print(f"{method_name} rank {rank}: loss {result['loss']:.7f} vs {single_loss:.7f}, "
              f"max abs gradient difference {worst:.2e} (largest gradient {scale:.2e})")
    if method_name == "byol":            # per-rank losses are local means; their average is the global one
        losses = [torch.load(tmp_path / f"rank{r}.pt")["loss"] for r in range(WORLD)]
        assert sum(losses) / WORLD == pytest.approx(single_loss, rel=1e-4)


def test_gather_keeps_order_and_its_gradient_sums_over_ranks(tmp_path):
    mp.spawn(_gather_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"gather{rank}.pt")
        assert result["gathered"].tolist() == [[0.0, 1.0], [10.0, 11.0]]
        # loss = sum of squares of the gathered rows on both ranks: d/dx = 2 * x * (world ranks computing it)
        assert result["grad"].tolist() == [[2 * WORLD * (10.0 * rank + c) for c in range(2)]]


def _gather_rank(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x = torch.tensor([[10.0 * rank, 10.0 * rank + 1]], requires_grad=True)
        gathered = distributed.gather(x)
        gathered.square().sum().backward()
        torch.save({"gathered": gathered.detach(), "grad": x.grad}, Path(out_dir) / f"gather{rank}.pt")
    finally:
        dist.destroy_process_group()


def centred(x: torch.Tensor) -> torch.Tensor:
    """A stand-in for batch norm: each row minus its batch's mean, so the output tells which batch it was in."""
    return x - x.mean(0, keepdim=True)


GLOBAL_IMAGES = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2) ** 1.5
SHUFFLE = torch.tensor([2, 0, 3, 1])


def test_channels_last_images_gather_intact_and_shuffle_bn_deals_them_across_ranks(tmp_path):
    """gather of (no-grad) channels_last images returns every rank's pixels unchanged (NCCL permuted
    them once, pytorch#163483; gloo here checks the contract), and MoCo's Shuffle-BN over ranks equals
    one process normalising the shuffled global batch in per-rank sub-batches, put back in order."""
    mp.spawn(_shuffle_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    shuffled = GLOBAL_IMAGES[SHUFFLE]
    per_rank = torch.cat([centred(part) for part in shuffled.chunk(WORLD)])
    expected = per_rank[SHUFFLE.argsort()]
    share = GLOBAL_IMAGES.shape[0] // WORLD
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"shuffle{rank}.pt")
        torch.testing.assert_close(result["gathered"], GLOBAL_IMAGES, rtol=0, atol=0)
        torch.testing.assert_close(result["keys"], expected[rank * share:(rank + 1) * share])
        assert not torch.allclose(result["keys"], centred(GLOBAL_IMAGES[rank * share:(rank + 1) * share]))


def _shuffle_rank(rank, port, out_dir):
    from selfsup.methods.moco2 import shuffled_across_ranks
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        share = GLOBAL_IMAGES.shape[0] // WORLD
        x = GLOBAL_IMAGES[rank * share:(rank + 1) * share].contiguous(memory_format=torch.channels_last)
        torch.save({"gathered": distributed.gather(x), "keys": shuffled_across_ranks(centred, x, SHUFFLE)},
                   Path(out_dir) / f"shuffle{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_one_process_helpers_are_the_identity():
    x = torch.randn(3, 2)
    assert distributed.gather(x) is x and distributed.all_reduce_sum(x) is x and distributed.world().size == 1


def narrow_resnet(options, overrides) -> list[str]:
    """backbone.width=0.125 when the run's backbone is a ResNet (a ViT has no width to set)."""
    if "--resume" in options:
        cfg = load_config(Path(options[options.index("--resume") + 1]) / "config.yaml")
    else:
        method = options[options.index("--method") + 1] if "--method" in options else "simclr"
        cfg = load_config(overrides=[f"method.name={method}", *(o for o in overrides if o.startswith("backbone."))])
    return ["backbone.width=0.125"] if cfg.backbone.name.startswith("resnet") else []


def why_it_failed(result) -> str:
    """A failed torchrun's errors: every line that names one (each rank's, which the end of stderr can
    miss when one rank's failure ends the others), then the end of stderr."""
    errors = [line for line in result.stderr.splitlines()
              if any(word in line for word in ("Error", "error:", "terminate", "Abort", "exitcode"))]
    return "\n".join(errors[:30]) + "\n...\n" + result.stderr[-2000:]


def torchrun(tiny_fashion, runs, options, *overrides, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "selfsup", "pretrain", "--runs-dir", str(runs), "--quiet", *options,
               "--data-dir", str(tiny_fashion), *narrow_resnet(options, overrides), "train.batch_size=40",
               "train.threads=1",
               "train.log_every=1", "optim.schedule=constant", "optim.warmup_epochs=0", "eval.knn_k=20",
               "eval.after_pretrain=[]", "eval.report=false", *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_torchrun_two_processes_pretrain_and_resume_exactly(tiny_fashion, tmp_path):
    straight = torchrun(tiny_fashion, tmp_path, ["--name", "straight"], "train.steps=8")
    assert straight.returncode == 0, why_it_failed(straight)
    assert straight.stdout.count("pretraining: 8 steps") == 1          # rank 0 alone reports
    first = torchrun(tiny_fashion, tmp_path, ["--name", "split", "--no-eval"], "train.steps=4")
    assert first.returncode == 0, why_it_failed(first)
    resumed = torchrun(tiny_fashion, tmp_path, ["--resume", str(tmp_path / "split"), "--no-eval"], "train.steps=8")
    assert resumed.returncode == 0, why_it_failed(resumed)
    assert "resuming from step-0000004" in resumed.stderr

    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))     # one writer: no repeated lines
    a, _ = load_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b, _ = load_checkpoint(latest_checkpoint(tmp_path / "split" / "checkpoints"))
    weights = [k for k in a if k.startswith("model.")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)
    assert json.loads((tmp_path / "straight" / "eval" / "knn.json").read_text())["knn_top1"] > 0.3


EVERY_METHOD = """
import sys
import torch.distributed as dist
from selfsup.config import load_config
from selfsup.train import pretrain
# One process group for every method: the processes start (and import torch) once, not once a method.
dist.init_process_group("gloo")
data, runs, methods = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in methods:
    overrides = [f"method.name={name}", f"data.data_dir={data}", "train.batch_size=40", "train.threads=1",
                 "train.steps=3", "optim.schedule=constant", "optim.warmup_epochs=0", "eval.online_every=0"]
    if load_config(overrides=overrides).backbone.name.startswith("resnet"):
        overrides.append("backbone.width=0.125")
    result = pretrain(load_config(overrides=overrides), f"{runs}/{name}", progress=False)
    if dist.get_rank() == 0:
        print(f"{name}: {result.steps} steps", flush=True)
dist.destroy_process_group()
"""


def test_every_image_method_trains_under_torchrun(tiny_fashion, tmp_path):
    """Three steps of each method in 2 processes: its gathers, frozen parameters (DDP must be told),
    queues and teachers all work across ranks."""
    methods = [m for m in method_names() if method_class(m).modality == "image"]
    (tmp_path / "every_method.py").write_text(EVERY_METHOD)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), str(tmp_path / "every_method.py"), str(tiny_fashion),
                             str(tmp_path / "runs"), *methods], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, why_it_failed(result)
    assert result.stdout.splitlines() == [f"{name}: 3 steps" for name in methods]


def test_batch_that_does_not_split_evenly_is_refused(tiny_fashion, tmp_path):
    result = torchrun(tiny_fashion, tmp_path, ["--name", "odd"], "train.steps=2", "train.batch_size=41")
    assert result.returncode != 0
    assert "must divide evenly among the 2 processes" in result.stderr


def test_an_error_on_one_rank_stops_every_rank_with_its_message(tiny_fashion, tmp_path):
    """Rank 1's loss raises at its third step (injected through sitecustomize, which each worker
    imports at start-up); torchrun must end the whole run, exit non-zero, and show the error."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from selfsup.methods.simclr import SimCLR\n"
        "    real, calls = SimCLR.loss, [0]\n"
        "    def failing(self, views):\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 3:\n"
        "            raise RuntimeError('injected failure on rank 1')\n"
        "        return real(self, views)\n"
        "    SimCLR.loss = failing\n")
    path = os.pathsep.join([str(tmp_path / "inject"), os.environ.get("PYTHONPATH", "")])
    result = torchrun(tiny_fashion, tmp_path, ["--name", "failing"], "train.steps=20", env={"PYTHONPATH": path})
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr


def test_fsdp_shards_a_vit_and_trains_as_ddp_does_and_resumes_exactly(tiny_fashion, tmp_path):
    """train.strategy=fsdp: MAE's ViT blocks and decoder blocks each a unit, the rest under the root.
    Four steps give DDP's losses and weights to 1e-5 (SGD: Adam would turn the summation order's rounding
    in the key biases, whose gradient is zero in exact arithmetic, into steps of a full learning rate),
    checkpoints hold whole tensors, and a run stopped after 2 steps and resumed ends bitwise where an
    unbroken one does. In fp32, where the two are bitwise equal: in bf16 autocast (on an AVX512-BF16 CPU)
    their losses agree bitwise for three steps and then part by 1e-4, as do the weights, in this short,
    steep run (its loss goes 3.6, 8.5, 2.3): bf16 rounding, which the comparison of sharding is not about."""
    settings = ["backbone.patch_size=4", "augment.size=16", "eval.online_every=0", "optim.name=sgd",
                "optim.lr=0.05", "train.precision=fp32"]
    runs = {}
    for name, steps, options in (("ddp", 4, []), ("fsdp", 4, []), ("split", 2, []),
                                 ("split", 4, ["--resume", str(tmp_path / "split")])):
        options = options or ["--name", name, "--method", "mae"]
        strategy = "ddp" if name == "ddp" else "fsdp"
        result = torchrun(tiny_fashion, tmp_path, [*options, "--no-eval"], *settings, f"train.steps={steps}",
                          f"train.strategy={strategy}")
        assert result.returncode == 0, why_it_failed(result)
        runs[name], _ = load_checkpoint(latest_checkpoint(tmp_path / name / "checkpoints"))
        if name == "fsdp":      # each process stores about half of the weights (uneven shards round up)
            counts = re.search(r"holds ([\d,]+) of the ([\d,]+) parameters", result.stderr).group(1, 2)
            held, total = (int(count.replace(",", "")) for count in counts)
            assert total / 2 <= held < 0.51 * total
    losses = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                     if "loss" in json.loads(line)] for name in ("ddp", "fsdp")}
    assert len(losses["fsdp"]) == 4 and losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-5)
    weights = [k for k in runs["ddp"] if k.startswith("model.")]
    assert any("decoder" in k for k in weights) and runs["fsdp"].keys() == runs["ddp"].keys()
    for k in weights:          # whole tensors in the checkpoint, equal to DDP's
        torch.testing.assert_close(runs["fsdp"][k], runs["ddp"][k], rtol=1e-5, atol=1e-5)
    assert all(torch.equal(runs["fsdp"][k], runs["split"][k]) for k in runs["fsdp"])


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_time_budget_under_torchrun_times_its_checkpoints_on_every_rank(strategy, tiny_fashion, tmp_path):
    """The budget's trial writes checkpoints into a scratch folder: every rank takes part (FSDP gathers the
    weights), rank 0 alone writes and then removes the folder, and the ranks agree on one step count."""
    result = torchrun(tiny_fashion, tmp_path, ["--name", "budget", "--method", "mae", "--no-eval"],
                      "backbone.patch_size=4", "augment.size=16", "eval.online_every=0", "train.minutes=0.15",
                      f"train.strategy={strategy}")
    assert result.returncode == 0, why_it_failed(result)
    assert "time budget:" in result.stdout and result.stdout.count("pretraining:") == 1
    assert not (tmp_path / "budget" / ".budget-trial").exists()
    assert load_checkpoint(latest_checkpoint(tmp_path / "budget" / "checkpoints"))[1]["step"] > 0
