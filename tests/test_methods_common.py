"""What every registered method must do through the trainer: train a few steps with finite losses,
resume bitwise (so its queues, teachers, centres and schedules are all in the checkpoint), embed,
and come with a default config in configs/."""
import json
import traceback
from pathlib import Path

import pytest
import torch

from selfsup.backbones import backbone_parameters
from selfsup.config import TrainConfig, load_config
from selfsup.data import load_images
from selfsup.evaluate.representation import CollapseWatch, representation_metrics
from selfsup.methods import embed_views, method_class, method_names
from selfsup.methods.masking import IGNORE, at_chosen, ignoring_unreal
from selfsup.run import load_run
from selfsup.build import build_method, complete_config, load_training_data
from selfsup.train import TrainStep, pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from small_data import write_corpus, write_interactions, write_table, write_tones

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["train.batch_size=16", "train.precision=fp32", "train.log_every=1", "optim.warmup_epochs=0",
        "eval.online_every=0", "train.checkpoint_every=2"]


def tiny_config(method, *extra):
    cfg = load_config(overrides=[f"method.name={method}", *TINY, *extra])
    if cfg.backbone.name.startswith("vit"):               # the smallest ViT that still has every part
        cfg.backbone.name = "vit_tiny"
    elif cfg.backbone.name.startswith("resnet"):          # the only backbones with a width
        cfg.backbone.width = 0.125
    return cfg


IMAGE_METHODS = [m for m in method_names() if method_class(m).modality == "image"]


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_trains_resumes_bitwise_and_embeds(method, tiny_fashion, tmp_path, monkeypatch):
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)
    straight = pretrain(tiny_config(method, "train.steps=4"), tmp_path / "straight", data=data, progress=False)
    assert torch.isfinite(torch.tensor(straight.final_loss))

    straight_run, resumed = straight_and_resumed(lambda: tiny_config(method, "train.steps=4"), data,
                                                 tmp_path / "again", 2, monkeypatch)
    assert_bitwise_equal(straight_run, resumed)

    run = load_run(tmp_path / "straight")
    feats = run.embed(data.images[:8])
    assert feats.shape == (8, run.backbone.feature_dim) and torch.isfinite(feats).all()


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_default_config_file_matches_the_method_defaults(method):
    path = CONFIGS / f"{method}-fashion-mnist.yaml"
    assert path.is_file(), f"configs/{path.name} is missing; write it with `selfsup config --method {method}`"
    assert load_config(path).to_dict() == load_config(overrides=[f"method.name={method}"]).to_dict()


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_image_method_trains_for_the_shared_time_budget_unless_told_otherwise(method):
    cfg = load_config(overrides=[f"method.name={method}"])
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.minutes) == (0, 0, TrainConfig().minutes) and cfg.train.minutes > 0
    cfg = load_config(overrides=[f"method.name={method}", "train.epochs=1"])     # the user's length wins
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.minutes) == (0, 1, 0)


TEXT_AND_TABLE_METHODS = [m for m in method_names() if method_class(m).modality != "image"]


def small_text_or_table(method, tmp_path, *extra):
    """(config, data) for a few steps of a text or tabular method on a small synthetic file."""
    if method_class(method).modality == "text":
        source = write_corpus(tmp_path / "corpus.jsonl")
        settings = ["text.field=body", "text.max_length=24", "backbone.dim=16", "backbone.heads=2"]
    elif method_class(method).modality == "audio":
        source = write_tones(tmp_path / "tones", per_class=12)
        recipe = load_config(overrides=[f"method.name={method}"])
        takes_width = "width" in backbone_parameters(recipe.backbone.name)
        settings = ["audio.seconds=0.5", *(["backbone.width=0.125"] if takes_width else
                                           ["backbone.dim=32", "backbone.depth=2", "backbone.heads=2"]),
                    *(["audio.crop_seconds=0.3"] if recipe.audio.crop_seconds > 0.5 else [])]
    elif method_class(method).modality == "interactions":
        source = write_interactions(tmp_path / "log", users=80)
        settings = ["interactions.max_length=8", "interactions.label=gender", "backbone.dim=16", "backbone.heads=2"]
    else:
        source = write_table(tmp_path / "table.csv")
        settings = ["table.label_column=label", "backbone.dim=16"]

    def make_config():
        return load_config(overrides=[f"method.name={method}", f"data.source={source}", *settings, *TINY, *extra])
    return make_config, load_training_data(make_config())


@pytest.mark.parametrize("method", TEXT_AND_TABLE_METHODS)
def test_text_and_table_methods_train_resume_bitwise_and_embed(method, tmp_path, monkeypatch):
    make_config, data = small_text_or_table(method, tmp_path, "train.steps=4")
    straight, resumed = straight_and_resumed(make_config, data, tmp_path, 2, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    run = load_run(tmp_path / "straight")
    feats = run.embed(data.samples[:8])
    assert feats.shape == (8, run.backbone.feature_dim) and torch.isfinite(feats).all()


@pytest.mark.parametrize("method", TEXT_AND_TABLE_METHODS)
def test_text_and_table_methods_have_a_config_file_with_their_defaults(method):
    paths = sorted(CONFIGS.glob(f"{method}-*.yaml"))
    assert paths, f"configs/{method}-<data>.yaml is missing"
    for path in paths:
        cfg = load_config(path)
        assert cfg.modality == method_class(method).modality
        assert cfg.method == load_config(overrides=[f"method.name={method}"]).method


# The papers' official code: BYOL, SimSiam, Barlow Twins, VICReg and MoCo v3 run their networks once per view
# (batch norm over each view's own batch); SimCLR, DINO, SwAV and NNCLR over all views together. (MoCo v2
# normalises over sub-batches with shuffled keys: tests/test_moco.py.)
BATCH_NORM_PER_VIEW = {"byol": True, "simsiam": True, "barlow": True, "vicreg": True, "moco3": True,
                       "simclr": False, "dino": False, "swav": False, "nnclr": False}


@pytest.mark.parametrize("method", sorted(BATCH_NORM_PER_VIEW))
def test_batch_norm_sees_each_view_alone_or_all_views_together_as_the_paper_does(method, monkeypatch):
    """The backbone's calls in one step: per view, each call holds one view's batch (8 rows); jointly, one
    call holds both global views (16 rows)."""
    cfg = load_config(overrides=[f"method.name={method}", "backbone.width=0.125", "augment.mean=[0.5]",
                                 "augment.std=[0.25]", "augment.local_crops=0"])
    built = build_method(cfg, in_channels=1)
    built.train()
    assert built.batch_norm_per_view is BATCH_NORM_PER_VIEW[method]
    rows = []
    real = built.backbone.forward
    monkeypatch.setattr(built.backbone, "forward", lambda x: rows.append(x.shape[0]) or real(x))
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    built.loss(built.views(images, torch.Generator().manual_seed(1)))
    assert rows == ([8, 8] if BATCH_NORM_PER_VIEW[method] else [16])


def test_embed_views_per_view_keeps_each_view_to_its_own_batch_statistics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    head = torch.nn.BatchNorm1d(4)
    v1, v2 = torch.randn(6, 3), torch.randn(6, 3)
    other = torch.randn(6, 3) * 5 + 2
    per_view = embed_views(net, head, [v1, v2], per_view=True)[:6]
    torch.testing.assert_close(per_view, embed_views(net, head, [v1, other], per_view=True)[:6])
    assert not torch.allclose(embed_views(net, head, [v1, v2], per_view=False)[:6],
                              embed_views(net, head, [v1, other], per_view=False)[:6])


def monitored_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "rankme" in line]


@pytest.mark.parametrize("method", IMAGE_METHODS + TEXT_AND_TABLE_METHODS)
def test_a_healthy_short_run_gives_no_collapse_warning_and_a_collapsed_embedding_does(method, tiny_fashion,
                                                                                     tmp_path):
    """Each method's family holds it to its own healthy range (Method.spreads_embeddings); a short run
    evaluated once an epoch, as by default, must stay quiet, and constant embeddings at two evaluations
    in a row must not."""
    if method_class(method).modality == "image":
        data = load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)     # 4 steps an epoch
        cfg = tiny_config(method, "train.steps=12", "eval.online_every=1")
    else:
        make_config, data = small_text_or_table(method, tmp_path, "train.steps=12")
        cfg = make_config()
        cfg.eval.online_every = 3 / max(1, len(data) // cfg.train.batch_size)       # every third step
    pretrain(cfg, tmp_path / "run", data=data, progress=False)
    rows = monitored_rows(tmp_path / "run")
    assert len(rows) >= 3 and not [r for r in rows if "collapse_warning" in r], rows
    watch = CollapseWatch(method_class(method).spreads_embeddings)
    collapsed = representation_metrics(torch.ones(64, 32) + 1e-7 * torch.randn(64, 32))
    assert watch(collapsed) is None and "single point" in watch(collapsed)


def test_a_from_scratch_baseline_draws_its_weights_from_its_own_seed_and_leaves_the_random_state_alone():
    from selfsup.build import fresh_method
    cfg = load_config(overrides=["method.name=byola", "data.source=x", "backbone.width=0.125"])   # sound: 1 channel
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    weights = [next(fresh_method(cfg, seed).parameters()).detach().clone() for seed in (0, 1, 1)]
    assert not torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])
    assert torch.equal(torch.rand(1), before)


# What a step may still read back: the step before's finiteness check (TrainStep reads it a step late).
# Text, sequence and wav2vec2 methods, run eagerly, pick their masked positions with a boolean mask, a
# data-dependent size the device reports to the host, and their text backbone checks for padding: each
# eager step of theirs waits for the device there. Compiled, they do neither
# (test_a_compiled_training_step_is_one_graph).
READS_MASKED_POSITIONS = {"bart", "t5", "clm", "mlm", "simcse", "cl4srec", "nextitem", "maskeditem", "wav2vec2"}
HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__format__", "numpy", "cpu",
              "nonzero", "unique", "unique_consecutive", "masked_select", "equal", "allclose", "__array__"}


class HostReads(torch.overrides.TorchFunctionMode):
    """Every call that reads a tensor's value back to the host, by where in selfsup it was made. On a GPU
    each one waits for all the work queued before it; this finds them on the CPU."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name == "__getitem__" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                               for i in (args[1] if isinstance(args[1], tuple) else (args[1],)))
        nonzero = name == "where" and len(args) + len(kwargs or {}) == 1          # torch.where(condition)
        if name in HOST_READS or masked or nonzero:
            caller = traceback.extract_stack(limit=2)[0]
            if "selfsup" in Path(caller.filename).parts:
                self.seen.append(f"{Path(caller.filename).name}:{caller.name}")
        return func(*args, **(kwargs or {}))


def small_config_and_data(method, tiny_fashion, tmp_path, *settings):
    """(config, data) of a few small steps of any method: 64 Fashion-MNIST images or a small synthetic file."""
    if method_class(method).modality == "image":
        return tiny_config(method, *settings), load_images("fashion-mnist", data_dir=str(tiny_fashion)).subset(64)
    make_config, data = small_text_or_table(method, tmp_path, *settings, "train.batch_size=8")
    return make_config(), data


# Parts off by default, switched on: SwAV's queue.
SWITCHED_ON = {"swav": ["method.queue_size=48", "method.queue_start=0"]}


@pytest.mark.parametrize("method, switched_on", [(m, []) for m in sorted(set(method_names()) - READS_MASKED_POSITIONS)]
                         + [pytest.param(m, extra, id=f"{m}-{'-'.join(extra)}") for m, extra in SWITCHED_ON.items()])
def test_a_training_step_reads_nothing_back_from_the_device_but_the_step_before_s_check(method, switched_on,
                                                                                        tiny_fashion, tmp_path,
                                                                                        monkeypatch):
    """So that on a GPU the host queues a step's augmentation and forward while the device still runs
    the step before (no log row, evaluation or checkpoint inside the steps watched)."""
    reads, real_step = {}, TrainStep.__call__

    def watched(self, step, total_steps):
        if step < 2:                     # the first steps may fill host copies (a queue's pointer)
            return real_step(self, step, total_steps)
        with HostReads() as mode:
            out = real_step(self, step, total_steps)
        reads[step] = mode.seen
        return out
    monkeypatch.setattr(TrainStep, "__call__", watched)
    cfg, data = small_config_and_data(method, tiny_fashion, tmp_path, "train.steps=4", "train.log_every=100",
                                      "train.checkpoint_every=100", *switched_on)
    pretrain(cfg, tmp_path / "run", data=data, progress=False)
    steps_per_epoch = len(data) // cfg.train.batch_size
    # An epoch's end checkpoints, and reads every check before it: the step after has none to read.
    assert reads == {step: [] if step % steps_per_epoch == 0 else ["train.py:first_failure"] for step in (2, 3)}
    assert any(reads.values())


def test_at_chosen_picks_the_chosen_rows_eagerly_and_a_fixed_number_under_compile(monkeypatch):
    chosen = torch.tensor([[False, True, False], [True, True, False]])
    values = torch.arange(6.0).view(2, 3, 1).expand(2, 3, 2)
    (picked,), real = at_chosen(chosen, values, capacity=4)
    assert real is None and torch.equal(picked, values[chosen])
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    (picked,), real = at_chosen(chosen, values, capacity=4)
    assert picked[:, 0].tolist() == [1.0, 3.0, 4.0, 0.0] and real.tolist() == [True, True, True, False]
    (picked,), real = at_chosen(chosen, values, capacity=2)              # fewer rows than chosen: the last dropped
    assert picked[:, 0].tolist() == [1.0, 3.0] and real.tolist() == [True, True]
    (picked,), real = at_chosen(chosen, values)                          # every position
    assert picked[:, 0].tolist() == list(range(6)) and torch.equal(real, chosen.flatten())
    assert ignoring_unreal(torch.tensor([7, 8, 9]), torch.tensor([True, False, True])).tolist() == [7, IGNORE, 9]


@pytest.mark.parametrize("method, settings", [("mlm", []), ("clm", ["text.pack=off", "text.max_length=64"]),
                                              ("bart", []), ("wav2vec2", [])])
def test_the_loss_a_compiled_step_computes_at_a_fixed_number_of_positions_is_the_eager_one(method, settings, tmp_path,
                                                                                        monkeypatch):
    """The rows picked beyond the masked ones (at_chosen) must not count: clm's (one row per document)
    and bart's would be PAD targets, wav2vec2's unmasked frames; mlm's capacity exceeds its masked positions."""
    make_config, data = small_text_or_table(method, tmp_path, *settings)
    cfg = make_config()
    complete_config(cfg, data)
    model = build_method(cfg)
    views = model.views(data.samples[:8], torch.Generator().manual_seed(0))
    results = []
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        torch.manual_seed(1)                           # the same dropout in both
        loss, _ = model.loss(views)
        loss.backward()
        results.append([loss.detach(), *(p.grad.clone() for p in model.parameters() if p.grad is not None)])
        model.zero_grad(set_to_none=True)
    eager, fixed = results
    assert len(eager) == len(fixed) > 10
    for a, b in zip(eager, fixed):
        torch.testing.assert_close(a, b)


# The methods whose masked positions, padding or queue once split the graph, and the main image methods
# (every image, audio and table method traced as one graph when this test was written; all of them take a
# minute). SwAV with its queue on, which is off by default.
ONE_GRAPH = sorted(READS_MASKED_POSITIONS | {"simclr", "byol", "moco2", "mae", "swav"})


@pytest.mark.parametrize("method", ONE_GRAPH)
def test_a_compiled_training_step_is_one_graph(method, tiny_fashion, tmp_path, monkeypatch):
    """No branch on a value and no data-dependent shape in the compiled step (fullgraph raises at a graph
    break), so that on a GPU it can run as one graph, CUDA graphs included. Dynamo alone traces it
    (backend="eager"): the test checks the graph, not the generated code."""
    torch._dynamo.reset()                # a fresh recompile budget: past it dynamo would run eagerly, silently
    monkeypatch.setattr("selfsup.train.compile_training",
                        lambda objective, mode: torch.compile(objective, backend="eager", fullgraph=True))
    cfg, data = small_config_and_data(method, tiny_fashion, tmp_path, "train.steps=2", "train.compile=true",
                                      "train.log_every=100", *SWITCHED_ON.get(method, []))
    pretrain(cfg, tmp_path / "run", data=data, progress=False)
