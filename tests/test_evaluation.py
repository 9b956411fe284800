"""Evaluation protocols where the right answer is known: few-label splits, the linear probe, the
label-free measures, fine-tuning and its layer-wise learning rates, the online monitor."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.data import ImageSet
from selfsup.evaluate.features import MAP_LAYOUTS, map_features
from selfsup.evaluate.knn import knn_predict
from selfsup.evaluate.finetune import FinetuneSettings, finetune, lr_scales
from selfsup.evaluate.linear import fit_logistic_regression, linear_probe
from selfsup.evaluate.online import OnlineMonitor
from selfsup.evaluate.representation import (CollapseWatch, alignment, collapse_warning, normalised_std, rankme,
                                             representation_metrics, uniformity)
from selfsup.evaluate.selftrain import selftrain
from selfsup.evaluate.splits import balanced_subset, class_balanced_folds, parse_label_budget, train_val_split
from selfsup.modalities import image_input


# ----------------------------------------------------------------------------- label budgets and splits

@pytest.mark.parametrize("text, available, classes, count", [
    ("1%", 60000, 10, 600), ("10%", 60000, 10, 6000), ("100%", 60000, 10, 60000), ("all", 500, 10, 500),
    ("100/class", 60000, 10, 1000), ("600", 60000, 10, 600), ("0.001%", 60000, 10, 10), ("5000", 300, 3, 300)])
def test_label_budgets_count_images(text, available, classes, count):
    assert parse_label_budget(text).count(available, classes) == count


@pytest.mark.parametrize("text", ["0%", "150%", "-3", "0", "ten", "5/klass", ""])
def test_bad_label_budget_says_what_is_allowed(text):
    with pytest.raises(ValueError, match="percentage .* per class .* total"):
        parse_label_budget(text)


def test_balanced_subset_is_balanced_and_repeats_with_its_seed():
    labels = torch.arange(1000) % 10
    idx = balanced_subset(labels, 100, seed=3)
    assert len(idx) == len(idx.unique()) == 100
    assert torch.bincount(labels[idx]).tolist() == [10] * 10
    assert torch.equal(idx, balanced_subset(labels, 100, seed=3))
    assert not torch.equal(idx, balanced_subset(labels, 100, seed=4))


def test_balanced_subset_shares_out_what_a_small_class_lacks():
    labels = torch.tensor([0] * 2 + [1] * 50 + [2] * 50)
    counts = torch.bincount(labels[balanced_subset(labels, 30, seed=0)]).tolist()
    assert counts == [2, 14, 14]


def test_validation_split_is_disjoint_covers_and_has_every_class():
    labels = torch.arange(200) % 4
    train, val = train_val_split(labels, 0.1, seed=0)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(200))
    assert torch.bincount(labels[val]).tolist() == [5] * 4


def test_folds_partition_the_set_class_by_class_and_repeat_with_their_seed():
    labels = torch.tensor([0] * 12 + [1] * 7 + [2] * 4)
    folds = class_balanced_folds(labels, 5, seed=1)
    assert len(folds) == 5
    validated = torch.cat([val for _, val in folds])
    assert sorted(validated.tolist()) == list(range(23))          # every image validated exactly once
    for train, val in folds:
        assert sorted(train.tolist() + val.tolist()) == list(range(23))
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.bincount(labels[val], minlength=3)[0] in (2, 3) for _, val in folds)   # 12 / 5
    again = class_balanced_folds(labels, 5, seed=1)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(folds, class_balanced_folds(labels, 5, seed=2)))


def test_folds_leave_out_what_a_tiny_set_cannot_fill():
    folds = class_balanced_folds(torch.tensor([0, 1, 1]), 5, seed=0)
    assert len(folds) == 3 and all(len(val) == 1 for _, val in folds)


# ----------------------------------------------------------------------------- linear probe

def clusters(n, num_classes=10, dim=16, spread=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(n) % num_classes
    return centres[labels] + spread * torch.randn(n, dim, generator=gen), labels


def test_linear_probe_separates_clusters():
    (x, y), (xt, yt) = clusters(500), clusters(300, seed=1)
    assert linear_probe(x, y, xt, yt)["top1"] > 0.99


def test_linear_probe_on_random_labels_is_at_chance():
    (x, _), (xt, _) = clusters(500), clusters(2000, seed=1)
    gen = torch.Generator().manual_seed(5)
    y, yt = torch.randint(0, 10, (500,), generator=gen), torch.randint(0, 10, (2000,), generator=gen)
    assert 0.05 < linear_probe(x, y, xt, yt)["top1"] < 0.16


def test_linear_probe_beats_closed_form_least_squares_where_that_masks_a_class():
    """Three classes along a line (Hastie et al., ESL fig. 4.2): regressing one-hot targets in closed
    form lets the middle class never win, logistic regression separates all three."""
    def line_of_classes(n, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        x = torch.stack([y.float() * 4 + torch.randn(n, generator=gen), torch.randn(n, generator=gen)], 1)
        return x, y
    (x, y), (xt, yt) = line_of_classes(600, 0), line_of_classes(600, 1)
    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    coef = torch.linalg.lstsq(design, F.one_hot(y, 3).double()).solution
    least_squares = ((torch.cat([xt, torch.ones(len(xt), 1)], 1).double() @ coef).argmax(1) == yt).float().mean()
    probe = linear_probe(x, y, xt, yt)["top1"]
    assert least_squares < 0.8 and probe > 0.95


@pytest.mark.parametrize("given_scale", [False, True])
def test_logistic_regression_reaches_the_optimum_of_its_objective(given_scale):
    x, y = clusters(300, num_classes=3, dim=5, spread=2.0)
    scale = (torch.full((5,), 0.5), torch.linspace(1.0, 3.0, 5)) if given_scale else None
    fit = fit_logistic_regression(x, y, 3, weight_decay=1e-2, scale=scale)
    if given_scale:
        assert torch.equal(fit.mean, scale[0]) and torch.equal(fit.std, scale[1])
    else:
        assert torch.allclose(fit.mean, x.mean(0)) and torch.allclose(fit.std, x.std(0))
    w = fit.weight.clone().requires_grad_(True)
    b = fit.bias.clone().requires_grad_(True)
    z = (x - fit.mean) / fit.std
    loss = F.cross_entropy(z @ w + b, y) + 1e-2 / 2 * w.square().sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4      # the gradient vanishes there


def test_linear_probe_cross_validates_few_labels_and_splits_many(monkeypatch):
    import selfsup.evaluate.linear as linear
    (x, y), (xt, yt) = clusters(200, spread=1.5), clusters(100, spread=1.5, seed=1)
    few = linear_probe(x, y, xt, yt, weight_decays=(1e-3, 1e-1))
    assert few["folds"] == 5 and few["val_size"] == 200             # every labelled image validated once
    monkeypatch.setattr(linear, "CROSS_VALIDATE_BELOW", 100)
    many = linear.linear_probe(x, y, xt, yt, weight_decays=(1e-3, 1e-1))
    assert many["folds"] == 1 and many["val_size"] == 20            # one 10% split


def test_every_fit_of_the_probe_is_standardised_with_the_unlabelled_pool(monkeypatch):
    import selfsup.evaluate.linear as linear
    (x, y), (xt, yt) = clusters(60, num_classes=3, dim=5), clusters(60, num_classes=3, dim=5, seed=1)
    pool = torch.cat([x, 3 + 10 * torch.randn(500, 5, generator=torch.Generator().manual_seed(2))])
    scales, real_fit = [], linear.fit_logistic_regression
    monkeypatch.setattr(linear, "fit_logistic_regression",
                        lambda *a, scale=None, **k: scales.append(scale) or real_fit(*a, scale=scale, **k))
    result = linear.linear_probe(x, y, xt, yt, weight_decays=(1e-3, 1e-1), scale=linear.feature_scale(pool))
    assert len(scales) == 2 * linear.FOLDS + 1                       # the sweep's fits and the final one
    for mean, std in scales:
        assert torch.allclose(mean, pool.mean(0)) and torch.allclose(std, pool.std(0))
    assert result["top1"] > 0.9
    scales.clear()
    linear.linear_probe(x, y, xt, yt, weight_decays=(1e-3,))
    assert scales == [None] * (linear.FOLDS + 1)                     # without a pool, each fit scales by its rows


def test_linear_probe_chooses_weight_decay_without_the_test_labels():
    (x, y), (xt, yt) = clusters(400, spread=1.5), clusters(300, spread=1.5, seed=1)
    honest = linear_probe(x, y, xt, yt)
    scrambled = linear_probe(x, y, xt, yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))])
    assert honest["weight_decay"] == scrambled["weight_decay"] and honest["val_top1"] == scrambled["val_top1"]
    assert honest["top1"] > scrambled["top1"]


# ----------------------------------------------------------------------------- label-free measures

def test_rankme_counts_equally_used_dimensions():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    for k in (1, 4, 16):
        z = basis[:, :k] @ basis[:k, :]          # k equal singular values, 64 - k zeros
        eps = 1e-7                                               # the paper's epsilon on every p_k
        p = [1 / k + eps] * k + [eps] * (64 - k)
        assert rankme(z) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-6)
        assert rankme(z) == pytest.approx(k, rel=1e-3)


def test_alignment_and_uniformity_against_their_formulas():
    z1 = F.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    z2 = F.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    assert alignment(z1, z2) == pytest.approx(sum((z1[i] - z2[i]).norm().item() ** 2 for i in range(12)) / 12, rel=1e-5)
    assert alignment(z1, z1) == 0.0
    pairs = [math.exp(-2 * (z1[i] - z1[j]).norm().item() ** 2) for i in range(12) for j in range(i + 1, 12)]
    assert uniformity(z1) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-5)


def test_normalised_std_and_the_collapse_warning():
    spread = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    collapsed = torch.ones(2000, 64) + 1e-4 * spread
    assert normalised_std(spread) == pytest.approx(1.0, abs=0.05)
    assert normalised_std(collapsed) < 0.01
    assert collapse_warning(representation_metrics(spread)) is None
    assert "single point" in collapse_warning(representation_metrics(collapsed))
    two_directions = spread[:, :2] @ torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    metrics = representation_metrics(two_directions)
    assert metrics["rankme"] < 2.0 and "effective dimensions" in collapse_warning(metrics)


class ConstantBackbone(nn.Module):
    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) + 0 * x.mean()


def test_online_monitor_reports_a_collapsed_backbone_without_labels():
    from selfsup.augment import AugmentConfig
    from selfsup.methods import method_class
    method = method_class("simclr")(ConstantBackbone(), method_class("simclr").config_class(),
                                    AugmentConfig(size=16, mean=[0.5], std=[0.25]))
    method.train()
    sample = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    record = OnlineMonitor(sample, None, 10, 0.1, 32, torch.device("cpu"), "fp32")(method)
    assert "online_knn_top1" not in record and record["std"] < 1e-3 and record["alignment"] < 1e-6
    assert collapse_warning(record) is not None
    assert method.training                       # put back in training mode


# ----------------------------------------------------------------------------- fine-tuning

def bright_quadrant_images(n, seed, random_labels=False):
    """16x16 images whose class (0-3) is the quadrant that is bright; noise elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 1, 16, 16), generator=gen, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 2)
        images[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 220
    if random_labels:
        labels = torch.randint(0, 4, (n,), generator=gen)
    return ImageSet(images, labels, ["a", "b", "c", "d"])


def tiny_resnet():
    torch.manual_seed(0)
    return build_backbone("resnet18", width=0.125, stem="cifar", in_channels=1)


def test_finetune_learns_a_visible_rule_and_not_random_labels():
    # A random backbone, as the supervised baseline trains it: full learning rate, random head.
    settings = FinetuneSettings(steps=40, batch_size=32, lr=3e-3, backbone_lr_scale=1.0, crop_scale=(0.9, 1.0),
                                flip_p=0.0, probe_init=False)
    learned = finetune(tiny_resnet(), bright_quadrant_images(128, 0), bright_quadrant_images(200, 1), settings,
                       image_input(16, [0.2], [0.3], settings))
    assert learned["top1"] > 0.9
    noise = finetune(tiny_resnet(), bright_quadrant_images(128, 0, True), bright_quadrant_images(400, 1, True),
                     settings, image_input(16, [0.2], [0.3], settings))
    assert noise["top1"] < 0.4                                     # 4 classes: chance is 0.25


def test_finetune_leaves_the_given_backbone_untouched():
    backbone = tiny_resnet()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    settings = FinetuneSettings(steps=2, batch_size=16)
    finetune(backbone, bright_quadrant_images(32, 0), bright_quadrant_images(16, 1), settings,
             image_input(16, [0.2], [0.3], settings))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_finetune_trains_an_encoder_whose_weights_were_frozen(monkeypatch):
    """DINO's evaluated encoder is its momentum teacher, built with requires_grad off: fine-tuning must
    still train every weight of its copy, not just the head."""
    import selfsup.evaluate.finetune as finetuning
    backbone = tiny_resnet().requires_grad_(False)
    trained = []
    real_train = finetuning.train_classifier

    def keep_model(*args, **kwargs):
        model, loss = real_train(*args, **kwargs)
        trained.append(model)
        return model, loss
    monkeypatch.setattr(finetuning, "train_classifier", keep_model)
    settings = FinetuneSettings(steps=2, batch_size=16, probe_init=False)
    finetune(backbone, bright_quadrant_images(32, 0), bright_quadrant_images(16, 1), settings,
             image_input(16, [0.2], [0.3], settings))
    model = trained[0]
    assert all(p.requires_grad for p in model.parameters())
    frozen = dict(backbone.named_parameters())
    unchanged = [name for name, p in model.backbone.named_parameters() if torch.equal(p, frozen[name])]
    assert unchanged == []


def test_selftrain_fine_tunes_again_on_every_image_with_the_labels_propagation_gave(monkeypatch):
    import selfsup.evaluate.selftrain as selftraining
    calls = []
    real_train = selftraining.train_classifier
    monkeypatch.setattr(selftraining, "train_classifier",      # a[1]: the settings it trains with
                        lambda backbone, data, *a, **k: calls.append((data, a[1]))
                        or real_train(backbone, data, *a, **k))
    train, test = bright_quadrant_images(96, 0), bright_quadrant_images(200, 1)
    labelled = torch.tensor([0, 1, 2, 3, 40, 41, 42, 43])         # two of each class
    settings = FinetuneSettings(steps=30, batch_size=32, lr=3e-3, backbone_lr_scale=1.0, crop_scale=(0.9, 1.0),
                                flip_p=0.0)
    backbone = tiny_resnet()
    # A graph for 96 images: Iscen et al.'s 50 neighbours (made for tens of thousands) would join the classes.
    result = selftrain(backbone, train, labelled, test, settings, image_input(16, [0.2], [0.3], settings),
                       neighbours=10, alpha=0.9)
    (few, first_settings), (everything, second_settings) = calls
    assert torch.equal(few.images, train.images[labelled]) and torch.equal(few.labels, train.labels[labelled])
    assert torch.equal(everything.images, train.images) and torch.equal(everything.labels, result["propagated_labels"])
    assert torch.equal(result["propagated_labels"][labelled], train.labels[labelled])
    assert (first_settings.steps, second_settings.steps) == (30, 60)
    # Eight labels teach a random backbone little (about half right); over its features the labels still
    # spread along the bright quadrants, and the second model, trained on all 96 images, gets them.
    assert result["first_top1"] < 0.8
    assert (result["propagated_labels"] == train.labels).float().mean() > 0.9
    assert result["top1"] > 0.9


def test_vit_layer_decay_gives_earlier_blocks_smaller_learning_rates():
    vit = build_backbone("vit_tiny", patch_size=4, in_channels=1, image_size=16)
    depth = len(vit.blocks)
    groups = lr_scales(vit, FinetuneSettings(backbone_lr_scale=0.5, layer_decay=0.75))
    scale_of = {id(p): scale for params, scale in groups for p in params}
    assert scale_of[id(vit.patch_embed.weight)] == pytest.approx(0.5 * 0.75 ** (depth + 1))
    for i, block in enumerate(vit.blocks):
        assert scale_of[id(block.attn.qkv.weight)] == pytest.approx(0.5 * 0.75 ** (depth - i))
    assert scale_of[id(vit.norm.weight)] == pytest.approx(0.5)
    assert len(scale_of) == len(list(vit.parameters()))
    flat = lr_scales(vit, FinetuneSettings(backbone_lr_scale=0.5, layer_decay=0.0))
    assert len(flat) == 1 and flat[0][1] == 0.5


def test_probe_initialised_head_predicts_what_the_probe_predicts():
    """LP-FT's start: with no fine-tuning steps, the classifier must give the linear probe's predictions."""
    from selfsup.evaluate.finetune import Classifier, accuracy, class_logits, init_head_from_probe
    backbone, train, test = tiny_resnet(), bright_quadrant_images(64, 0), bright_quadrant_images(64, 1)
    model = Classifier(backbone, 4, image_input(16, [0.2], [0.3], FinetuneSettings()))
    init_head_from_probe(model, train, 4, torch.device("cpu"), "fp32")
    model.eval()
    with torch.no_grad():
        feats = model.backbone(model.prepare(train.images))
        test_feats = model.backbone(model.prepare(test.images))
    probe = fit_logistic_regression(feats, train.labels, 4, weight_decay=1e-3)
    assert accuracy(model, test, torch.device("cpu"), "fp32") == pytest.approx(probe.accuracy(test_feats, test.labels))
    with torch.no_grad():
        torch.testing.assert_close(model.head(test_feats), probe.logits(test_feats), rtol=1e-4, atol=1e-4)
    # The same model's logits, in batches smaller than the set: the probe's, in order.
    logits = class_logits(model, test, torch.device("cpu"), "fp32", batch_size=24)
    torch.testing.assert_close(logits, probe.logits(test_feats), rtol=1e-4, atol=1e-4)


def test_averaged_probes_score_the_mean_of_their_held_out_and_test_probabilities():
    from selfsup.evaluate.protocols import averaged_probes
    (x, y), (xt, yt) = clusters(60, num_classes=3, dim=5), clusters(90, num_classes=3, dim=5, seed=1)
    noisy = [x + torch.randn(x.shape, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    probes = [linear_probe(feats, y, xt, yt, weight_decays=(1e-3, 1e-1), seed=4, probabilities=True) for feats in noisy]
    for probe in probes:                              # every label held out once, by the fit that did not see it
        assert sorted(probe["held_out"].tolist()) == list(range(60))
        cross_validated = (probe["held_out_probabilities"].argmax(1) == y[probe["held_out"]]).float().mean().item()
        assert cross_validated == pytest.approx(probe["val_top1"][str(probe["weight_decay"])])
        torch.testing.assert_close(probe["test_probabilities"].sum(1), torch.ones(90))
    averaged = averaged_probes(probes, y, yt)
    mean_held_out = sum(probe["held_out_probabilities"] for probe in probes) / 3
    mean_test = sum(probe["test_probabilities"] for probe in probes) / 3
    assert averaged["cross_validated"] == pytest.approx((mean_held_out.argmax(1) == y[probes[0]["held_out"]])
                                                        .float().mean().item())
    assert averaged["top1"] == pytest.approx((mean_test.argmax(1) == yt).float().mean().item())
    other_folds = linear_probe(noisy[0], y, xt, yt, weight_decays=(1e-3,), seed=5, probabilities=True)
    with pytest.raises(ValueError, match="same labels"):
        averaged_probes([probes[0], other_folds], y, yt)
    assert "held_out" not in linear_probe(x, y, xt, yt, weight_decays=(1e-3,))


def test_augmented_copies_join_the_fit_only_for_their_own_training_images(monkeypatch):
    import selfsup.evaluate.linear as linear
    (x, y), (xt, yt) = clusters(200, num_classes=4, dim=6), clusters(100, num_classes=4, dim=6, seed=1)
    # Copy c of image i is marked by its first coordinate, 1000 * (i + 1) + c: every row says where it came from.
    augmented = x.repeat(2, 1, 1)
    augmented[:, :, 0] = 1000 * (torch.arange(200) + 1).float() + torch.arange(2).float()[:, None]
    fitted = []
    real_fit = linear.fit_logistic_regression
    monkeypatch.setattr(linear, "fit_logistic_regression",
                        lambda feats, labels, *a, **k: fitted.append((feats, labels)) or real_fit(feats, labels, *a, **k))
    result = linear.linear_probe(x, y, xt, yt, weight_decays=(1e-3,), seed=0, augmented=augmented)
    _, val_idx = linear.class_balanced_folds(y, linear.FOLDS, 0)[0]
    sweep_feats, sweep_labels = fitted[0]
    sources = {int(v) // 1000 - 1 for v in sweep_feats[:, 0].tolist() if v >= 1000}
    assert len(sweep_feats) == 3 * (200 - len(val_idx))
    assert sources.isdisjoint(val_idx.tolist()) and len(sources) == 200 - len(val_idx)
    final_feats, final_labels = fitted[-1]
    assert len(final_feats) == 600 and torch.equal(final_labels, y.repeat(3))


def test_linear_probe_copes_with_one_label_per_class_and_refuses_one_label():
    (x, y), (xt, yt) = clusters(2, num_classes=2, dim=4), clusters(50, num_classes=2, dim=4, seed=1)
    result = linear_probe(x, y, xt, yt)              # two folds, each fitted on a single image
    assert result["folds"] == 2 and result["top1"] > 0.9
    with pytest.raises(ValueError, match="at least 2 labelled"):
        linear_probe(x[:1], y[:1], xt, yt)


def test_map_features_join_the_two_stages_before_the_last_at_up_to_seven_cells_a_side():
    gen = torch.Generator().manual_seed(0)
    first, last = torch.randn(2, 2, 28, 28, generator=gen), torch.randn(2, 8, 2, 2, generator=gen)
    unit = lambda part: F.normalize(part.flatten(1), dim=1)
    for side in (4, 7):                             # small maps are kept as they are
        two_before, before_last = torch.randn(2, 4, side, side, generator=gen), torch.randn(2, 3, side, side, generator=gen)
        joined = map_features([first, 100 * two_before, before_last, last])
        assert joined.shape == (2, 7 * side * side)
        torch.testing.assert_close(joined, torch.cat([unit(two_before), unit(before_last)], 1))   # each at unit norm
    big = torch.randn(2, 3, 14, 14, generator=gen)  # larger ones are averaged down to 7 x 7
    expected = big.unflatten(2, (7, 2)).unflatten(4, (7, 2)).mean((3, 5))
    torch.testing.assert_close(map_features([first, big, big, last]), torch.cat([unit(expected)] * 2, 1))


def test_each_map_layout_joins_its_own_stages_in_order():
    gen = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, channels, side, side, generator=gen) for channels, side in ((2, 14), (3, 7), (4, 7), (5, 4))]
    unit = lambda part: F.normalize(part.flatten(1), dim=1)
    pooled_first = F.adaptive_avg_pool2d(maps[0], 7)
    assert MAP_LAYOUTS["map"] == (-3, -2)            # the screened default, which `auto` keeps as a candidate
    torch.testing.assert_close(map_features(maps, MAP_LAYOUTS["map-late"]),
                               torch.cat([unit(maps[2]), unit(maps[3])], 1))
    torch.testing.assert_close(map_features(maps, MAP_LAYOUTS["map-all"]),
                               torch.cat([unit(pooled_first), unit(maps[1]), unit(maps[2]), unit(maps[3])], 1))


def left_or_right_squares(n: int, gen: torch.Generator):
    """Class 0: a bright square in the left half, class 1: in the right half, at a random height."""
    images, labels = torch.zeros(n, 1, 28, 28), torch.randint(0, 2, (n,), generator=gen)
    for image, label in zip(images, labels.tolist()):
        row, col = torch.randint(4, 18, (1,), generator=gen).item(), torch.randint(4, 8, (1,), generator=gen).item()
        image[:, row:row + 6, col + 10 * label:col + 10 * label + 6] = 1
    return images, labels


def test_the_map_probe_sees_where_things_are_and_the_pooled_one_does_not():
    gen = torch.Generator().manual_seed(0)
    (x, y), (xt, yt) = left_or_right_squares(200, gen), left_or_right_squares(200, gen)
    torch.manual_seed(0)
    net = build_backbone("resnet18", width=0.25, in_channels=1).eval()
    with torch.no_grad():
        pooled = [F.normalize(net(images), dim=1) for images in (x, xt)]
        maps = [F.normalize(map_features(net.stage_maps(images)), dim=1) for images in (x, xt)]
    assert linear_probe(maps[0], y, maps[1], yt)["top1"] > 0.97
    assert linear_probe(pooled[0], y, pooled[1], yt)["top1"] < 0.85     # global pooling forgets the position


def test_knn_votes_by_similarity_weights_on_a_hand_worked_case():
    """Query (1, 0); neighbours at cosines 1.0 (class 0), 0.8 and 0.6 (class 1), 0.0 (class 0).
    k=3, T=0.1: class 0 scores e^10 = 22026, class 1 e^8 + e^6 = 3384, so 0 wins though class 1 has
    the majority. T=1: class 0 e^1 = 2.72, class 1 e^0.8 + e^0.6 = 4.05, so 1 wins. k=1: the nearest, 0."""
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, query, k=3, temperature=0.1).tolist() == [0]
    assert knn_predict(train, labels, query, k=3, temperature=1.0).tolist() == [1]
    assert knn_predict(train, labels, query, k=1, temperature=1.0).tolist() == [0]
    assert knn_predict(train, labels, query, k=4, temperature=1.0).tolist() == [1]     # e^1 + e^0 = 3.72 < 4.05


def test_knn_over_a_bank_cut_in_chunks_votes_as_over_the_whole_bank():
    """The k best of each bank chunk merged into the running k best are the k best of the whole bank,
    whatever the chunk (smaller than k, not dividing the bank, larger than it)."""
    gen = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(3000, 16, generator=gen), dim=1)
    labels = torch.randint(0, 7, (3000,), generator=gen)
    queries = F.normalize(torch.randn(300, 16, generator=gen), dim=1)
    whole = knn_predict(bank, labels, queries, k=200, bank_chunk=3000)
    for bank_chunk in (64, 450, 2999, 10_000):
        assert torch.equal(knn_predict(bank, labels, queries, k=200, chunk=70, bank_chunk=bank_chunk), whole)
    assert torch.equal(knn_predict(bank, labels, queries, k=3000, bank_chunk=1000),
                       knn_predict(bank, labels, queries, k=3000, bank_chunk=3000))


def test_the_collapse_watch_warns_on_a_collapse_that_persists_not_on_a_dip():
    spread = representation_metrics(torch.randn(500, 32, generator=torch.Generator().manual_seed(0)))
    point = representation_metrics(torch.ones(500, 32) + 1e-6 * torch.randn(500, 32))
    faint = {"std": 0.03, "rankme": 8.0}         # a predictive method's healthy spread, a joint method's dip
    recovering = {"std": 0.04, "rankme": 8.0}
    watch = CollapseWatch(spreads=True)
    assert [watch(m) is None for m in (point, spread, point, spread, faint, recovering)] == [True] * 6
    assert "single point" in watch(faint)                         # twice in a row, and not growing
    predictive = CollapseWatch(spreads=False)
    assert all(predictive(m) is None for m in (faint, faint, faint, spread, point))
    assert "single point" in predictive(point)
    assert collapse_warning({"std": 0.3, "rankme": 1.4}, spreads=True) is not None
    assert collapse_warning({"std": 0.3, "rankme": 1.4}, spreads=False) is None    # rank is not their aim
