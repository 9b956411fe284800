"""DINO: the loss against a loop over the paper's view pairs, centering and sharpening, the teacher
temperature schedule, the EMA teacher (no gradient), exact resume, the recipe, and a short run."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.methods import encode_views
from selfsup.methods.dino import DINO, DINOConfig, dino_loss, teacher_temperature
from selfsup.methods.momentum import cosine_momentum
from selfsup.optim import build_optimizer
from selfsup.augment import eval_transform
from selfsup.run import Run, load_run
from selfsup.build import build_method
from selfsup.train import pretrain

from resume import assert_bitwise_equal, straight_and_resumed
from training import knn_against_random_init

SMALL = ["method.name=dino", "backbone.width=0.125", "train.batch_size=32", "train.precision=fp32",
         "train.log_every=1", "optim.warmup_epochs=0", "eval.batch_size=256", "eval.online_every=0",
         "method.hidden_dim=64", "method.bottleneck_dim=32", "method.out_dim=128", "augment.local_crops=2"]


def small_config(*extra):
    return load_config(overrides=SMALL + list(extra))


def small_method(*extra) -> DINO:
    cfg = small_config("augment.mean=[0.5]", "augment.std=[0.25]", *extra)
    method = build_method(cfg, in_channels=1)
    method.train()
    return method


def views_of(method, n=8, seed=0):
    batch = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return method.views(batch, torch.Generator().manual_seed(seed + 1))


def reference_dino_loss(student, teacher, center, tau_s, tau_t):
    """The paper's Algorithm 1 with multi-crop, in loops: for every teacher view i and student view j != i,
    H(softmax((t - c)/tau_t), softmax(s/tau_s)) averaged over the batch, then over the pairs."""
    views, globals_, batch, k = student.shape[0], teacher.shape[0], student.shape[1], student.shape[2]
    total, pairs = 0.0, 0
    for i in range(globals_):
        for j in range(views):
            if i == j:
                continue
            pair = 0.0
            for b in range(batch):
                t = [(float(teacher[i, b, d]) - float(center[d])) / tau_t for d in range(k)]
                s = [float(student[j, b, d]) / tau_s for d in range(k)]
                t_max, s_max = max(t), max(s)
                t_norm = sum(math.exp(x - t_max) for x in t)
                s_log_norm = s_max + math.log(sum(math.exp(x - s_max) for x in s))
                pair += -sum(math.exp(t[d] - t_max) / t_norm * (s[d] - s_log_norm) for d in range(k))
            total += pair / batch
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("views,globals_,batch,tau_s,tau_t", [
    (2, 2, 2, 0.1, 0.04),       # no local crops, smallest batch
    (4, 2, 3, 0.1, 0.07),       # two local crops
    (6, 2, 5, 0.2, 0.05),
    (3, 1, 2, 1.0, 0.5),        # one teacher view
])
def test_dino_loss_matches_loop(views, globals_, batch, tau_s, tau_t):
    torch.manual_seed(views * 10 + batch)
    student, teacher, center = torch.randn(views, batch, 7) * 2, torch.randn(globals_, batch, 7), torch.randn(7) * 0.3
    got = dino_loss(student, teacher, center, tau_s, tau_t).item()
    assert got == pytest.approx(reference_dino_loss(student, teacher, center, tau_s, tau_t), rel=1e-5, abs=1e-5)


def test_dino_loss_is_symmetric_in_the_two_global_views():
    torch.manual_seed(1)
    student, teacher, center = torch.randn(4, 3, 6), torch.randn(2, 3, 6), torch.zeros(6)
    swapped_student = student[[1, 0, 2, 3]]
    torch.testing.assert_close(dino_loss(student, teacher, center), dino_loss(swapped_student, teacher.flip(0), center))


def test_dino_loss_gives_no_gradient_to_the_teacher_input():
    torch.manual_seed(2)
    student = torch.randn(4, 3, 6, requires_grad=True)
    teacher = torch.randn(2, 3, 6, requires_grad=True)
    dino_loss(student, teacher, torch.zeros(6)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_dino_loss_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        dino_loss(torch.randn(4, 3, 6), torch.randn(2, 3, 6), torch.zeros(5))
    with pytest.raises(ValueError):
        dino_loss(torch.randn(4, 3, 6), torch.randn(2, 2, 6), torch.zeros(6))
    with pytest.raises(ValueError):
        dino_loss(torch.randn(2, 3, 6), torch.randn(3, 3, 6), torch.zeros(6))   # more teacher than student views


def test_teacher_temperature_warms_up_linearly_then_stays():
    cfg = DINOConfig()                                   # 0.04 -> 0.07 over the first 30% of training
    for progress, expected in [(0.0, 0.04), (0.15, 0.055), (0.3, 0.07), (0.6, 0.07), (1.0, 0.07)]:
        assert teacher_temperature(cfg, progress) == pytest.approx(expected, abs=1e-12)
    assert teacher_temperature(DINOConfig(teacher_temperature_warmup=0.0), 0.0) == 0.07


def test_logged_teacher_temperature_follows_training_progress():
    method = small_method()
    views = views_of(method)
    assert method.loss(views)[1]["teacher_temperature"] == pytest.approx(0.04)
    method.after_step(0.1)
    assert method.loss(views)[1]["teacher_temperature"] == pytest.approx(0.05)


def test_sharpening_teacher_entropy_falls_with_its_temperature():
    method = small_method("method.teacher_temperature_warmup=1.0", "method.warmup_teacher_temperature=0.02",
                          "method.teacher_temperature=0.2")
    views = views_of(method)
    entropies = []
    for progress in (1.0, 0.75, 0.5, 0.25, 0.0):              # tau_t 0.2 -> 0.02
        method.progress.set(progress)
        with torch.no_grad():
            entropies.append(float(method.loss(views)[1]["teacher_entropy"]))
    assert all(a > b for a, b in zip(entropies, entropies[1:])), entropies
    assert entropies[0] > 2 * entropies[-1]


def test_centering_update_rule_by_hand():
    method = small_method()
    method.center.copy_(torch.randn(128))
    center_before = method.center.clone()
    views = views_of(method)
    with torch.no_grad():
        teacher = method.teacher_head(torch.cat(encode_views(method.teacher_backbone, views[:2])))
    method.loss(views)
    method.after_step(0.5)
    expected = 0.9 * center_before + 0.1 * teacher.mean(0)
    torch.testing.assert_close(method.center, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(method.center, center_before)


def test_centering_removes_a_collapsed_teacher_output():
    # A teacher giving every image the same output, once that output is the centre, gives uniform targets:
    # the loss is then the student's cross-entropy against the uniform distribution.
    torch.manual_seed(3)
    collapsed = torch.randn(6)
    teacher = collapsed.expand(2, 4, 6)
    student = torch.randn(3, 4, 6)
    uniform_target = -F.log_softmax(student / 0.1, dim=-1).mean(-1)            # (V, B)
    expected = (uniform_target[1].mean() + uniform_target[2].mean() + uniform_target[0].mean()
                + uniform_target[2].mean()) / 4
    torch.testing.assert_close(dino_loss(student, teacher, collapsed, 0.1, 0.04), expected)


def test_teacher_is_the_ema_of_the_student_and_gets_no_gradient():
    method = small_method("method.base_momentum=0.9")
    optimizer = build_optimizer(method, method_cfg_optim())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    teacher_params = list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters())
    assert not any(p.requires_grad for p in teacher_params)
    assert not any(id(p) in in_optimizer for p in teacher_params)

    method.progress.set(0.5)                                   # past the frozen last layer
    loss, _ = method.loss(views_of(method))
    loss.backward()
    assert all(p.grad is None for p in teacher_params)
    assert method.head.last_layer.weight.grad is not None
    assert all(p.grad is not None for p in method.backbone.parameters())

    teacher_before = [p.clone() for p in teacher_params]
    optimizer.step()
    method.after_step(0.25)
    m = cosine_momentum(0.9, 0.25)
    student_params = list(method.backbone.parameters()) + list(method.head.parameters())
    for t, before, s in zip(teacher_params, teacher_before, student_params):
        torch.testing.assert_close(t, m * before + (1 - m) * s)
    # Its batch-norm statistics are its own (from its forward over the global views), not the student's.
    teacher_stats = dict(method.teacher_backbone.named_buffers())
    student_stats = dict(method.backbone.named_buffers())
    means = [name for name in teacher_stats if name.endswith("running_mean")]
    assert means and all(not torch.equal(teacher_stats[n], student_stats[n]) for n in means)


def method_cfg_optim():
    return load_config(overrides=["optim.name=sgd", "optim.lr=0.1"]).optim


def test_last_layer_is_frozen_for_the_first_fraction_of_training():
    method = small_method("method.freeze_last_layer=0.1")
    views = views_of(method)
    method.loss(views)[0].backward()
    assert method.head.last_layer.weight.grad is None
    assert method.head.mlp[0].weight.grad is not None
    method.zero_grad(set_to_none=True)
    method.after_step(0.1)
    method.loss(views)[0].backward()
    assert method.head.last_layer.weight.grad is not None


def test_head_output_uses_unit_norm_prototypes():
    method = small_method()
    with torch.no_grad():
        method.head.last_layer.weight.mul_(5.0)             # the scale of the weights must not matter
        x = torch.randn(4, method.backbone.feature_dim)
        out = method.head(x)
    assert out.shape == (4, 128)
    assert out.abs().max() <= 1.0 + 1e-5                     # cosines of unit vectors


def test_config_has_the_recipe_and_user_settings_win():
    cfg = load_config(overrides=["method.name=dino"])
    assert isinstance(cfg.method, DINOConfig)
    assert cfg.augment.local_crops == DINO.recipe["augment"]["local_crops"] > 0
    assert (cfg.method.student_temperature, cfg.method.warmup_teacher_temperature, cfg.method.teacher_temperature,
            cfg.method.center_momentum) == (0.1, 0.04, 0.07, 0.9)
    assert load_config(overrides=["method.name=dino", "augment.local_crops=0"]).augment.local_crops == 0


@pytest.mark.parametrize("override", ["method.student_temperature=0", "method.center_momentum=1.0",
                                      "method.teacher_temperature_warmup=1.5", "method.out_dim=0",
                                      "method.base_momentum=1.1"])
def test_invalid_settings_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(overrides=["method.name=dino", override])


def test_resume_gives_bitwise_the_state_of_an_unbroken_run(tiny_fashion, tmp_path, monkeypatch):
    """The teacher, centre and schedule position all come back: 3 + 3 steps equal 6 steps."""
    data = load_images("fashion-mnist", data_dir=str(tiny_fashion))
    extra = ["train.steps=6", "train.batch_size=16", "method.freeze_last_layer=0.4", "method.teacher_temperature_warmup=0.8",
             "train.checkpoint_every=3"]
    straight, resumed = straight_and_resumed(lambda: small_config(*extra), data, tmp_path, 3, monkeypatch)
    assert_bitwise_equal(straight, resumed)
    assert {"model.center", "model.progress.value"} <= straight.keys()
    rows = [json.loads(line) for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    expected = [min(0.07, 0.04 + 0.03 * step / 6 / 0.8) for step in range(6)]     # the warm-up ends at step 4.8
    assert [r["teacher_temperature"] for r in rows] == pytest.approx(expected)


def test_short_training_learns_without_collapse_and_beats_random_init_on_knn(tiny_fashion, tmp_path):
    """DINO's loss is the teacher's entropy plus KL(teacher || student). The temperature warm-up and the
    centring raise the entropy from ~0 (the untrained net gives every image the same output), so the
    loss itself rises at first; learning shows in the KL falling while the teacher stays off log K
    (uniform outputs, the collapse centring alone would cause)."""
    cfg = small_config("train.epochs=3", "optim.lr=1.0", f"data.data_dir={tiny_fashion}",
                       "augment.crop_scale=[0.6,1.0]", "augment.flip_p=0.0", "augment.local_crop_scale=[0.3,0.6]")
    result = pretrain(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == len(rows) == 3 * (360 // 32)       # 3 epochs of the 360 training images

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)
    assert mean("kl", rows[-8:]) < 0.5 * mean("kl", rows[:4]), rows
    assert mean("teacher_entropy", rows[-8:]) < 0.95 * math.log(128), rows
    report, _ = knn_against_random_init(load_run(tmp_path / "run"))
    assert report["knn_top1"] > report["knn_top1_random_init"], report


def test_loss_under_bf16_autocast_is_fp32_and_close_to_the_fp32_loss():
    method = small_method()
    views = views_of(method)
    with torch.no_grad():
        full, _ = method.loss(views)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, logs = method.loss(views)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_the_teacher_sees_only_the_global_views_and_the_student_every_view(monkeypatch):
    method = small_method()
    views = views_of(method)                        # 2 global views of 20 px, 2 local of 12 px
    seen = {"student": [], "teacher": []}
    for name, network in (("student", method.backbone), ("teacher", method.teacher_backbone)):
        real = network.forward
        monkeypatch.setattr(network, "forward", lambda x, real=real, name=name: seen[name].append(x.shape) or real(x))
    method.loss(views)
    assert sorted(s[0] for s in seen["teacher"]) == [2 * 8]                 # the two global views, once
    assert sorted(s[-1] for s in seen["teacher"]) == [views[0].shape[-1]]
    assert sorted(s[-1] for s in seen["student"]) == sorted({v.shape[-1] for v in views})
    assert sum(s[0] for s in seen["student"]) == 8 * len(views)             # every view, global and local


def test_evaluations_read_the_teacher_as_the_paper_does(tmp_path):
    """embed, the feature maps, Run.backbone (kNN, probes, fine-tuning, the report) and export read the
    teacher; with teacher and student made to differ, the features are the teacher's."""
    method = small_method()
    with torch.no_grad():
        for p in method.teacher_backbone.parameters():
            p.mul_(0.5)
    method.eval()
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    x = method._layout(eval_transform(images, method.augment_cfg))
    torch.testing.assert_close(method.embed(images), method.teacher_backbone(x))
    assert not torch.allclose(method.embed(images), method.backbone(x))
    torch.testing.assert_close(method.embed_maps(images)[-1], method.teacher_backbone.stage_maps(x)[-1])
    assert method.evaluated_backbone is method.teacher_backbone
    assert Run(tmp_path, small_config(), method, 0).backbone is method.teacher_backbone


def test_method_evaluate_student_makes_evaluations_read_the_student():
    method = small_method("method.evaluate=student")
    assert method.evaluated_backbone is method.backbone
    with pytest.raises(ValueError, match="method.evaluate must be teacher or student"):
        small_method("method.evaluate=ema")
