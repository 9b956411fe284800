"""Rotation prediction and jigsaw puzzles: rotations, the fixed permutation set, tiles that un-permute
to the view, the cross-entropy losses against loops, the recipes, and short training runs."""
import math

import pytest
import torch

from selfsup.augment import AugmentConfig
from selfsup.backbones import build_backbone
from selfsup.config import ConfigError, load_config
from selfsup.methods.jigsaw import (Jigsaw, JigsawConfig, cut_tiles, normalize_tiles, permutation_set, shuffle_tiles,
                                    unshuffle_tiles)
from selfsup.methods.masking import crop_flip_view
from selfsup.methods.losses import pretext_cross_entropy
from selfsup.methods.rotation import Rotation, RotationConfig, rotate
from selfsup.run import knn_report, labelled_eval_sets, load_run
from selfsup.train import pretrain

SMALL = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp32", "train.log_every=1",
         "optim.warmup_epochs=0", "eval.batch_size=256", "eval.online_every=0",
         "train.threads=1"]
AUG = AugmentConfig(mean=[0.5], std=[0.25])


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def uint8_batch(b, c=1, size=28, seed=0):
    return torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=generator(seed))


def reference_cross_entropy(logits, labels):
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        total += -(row[y] - math.log(sum(math.exp(v) for v in row)))
    return total / len(labels)


# ----------------------------------------------------------------------------- rotation

def test_rotate_turns_each_image_by_its_own_quarter_turns():
    x = torch.randn(5, 2, 6, 6)
    turns = torch.tensor([0, 1, 2, 3, 1])
    out = rotate(x, turns)
    for i, k in enumerate(turns.tolist()):
        expected = x[i]
        for _ in range(k):        # one counter-clockwise quarter turn: column j becomes row S-1-j
            expected = torch.stack([c.T.flip(0) for c in expected])
        assert torch.equal(out[i], expected)
    with pytest.raises(ValueError, match="square"):
        rotate(torch.randn(1, 1, 4, 6), torch.tensor([1]))


@pytest.mark.parametrize("channels", [1, 3])
def test_views_hold_all_four_rotations_of_every_image(channels):
    method = Rotation(build_backbone("resnet18", width=0.125, in_channels=channels), RotationConfig(),
                      AugmentConfig(mean=[0.5] * channels, std=[0.25] * channels))
    batch = uint8_batch(3, channels)
    images, turns = method.views(batch, generator(5))
    assert images.shape == (12, channels, 20, 20)
    assert turns.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    upright = crop_flip_view(batch, method.augment_cfg, generator(5))
    for k in range(4):
        torch.testing.assert_close(images[3 * k:3 * (k + 1)], upright.rot90(k, dims=(2, 3)))
    loss, logs = method.loss([images, turns])
    assert loss.shape == () and 0 <= logs["accuracy"] <= 1


def test_one_rotation_per_image_when_configured():
    method = Rotation(build_backbone("resnet18", width=0.125, in_channels=1), RotationConfig(all_rotations=False), AUG)
    images, turns = method.views(uint8_batch(64), generator(1))
    assert images.shape == (64, 1, 20, 20) and turns.shape == (64,)
    assert set(turns.tolist()) == {0, 1, 2, 3}
    upright = crop_flip_view(uint8_batch(64), AUG, generator(1))
    torch.testing.assert_close(images, rotate(upright, turns))


@pytest.mark.parametrize("m,classes,scale", [(2, 4, 3), (7, 4, 3), (2, 30, 2), (6, 100, 2)])
def test_pretext_loss_matches_loop(m, classes, scale):
    """Rotation (4 quarter turns) and jigsaw (30 or 100 permutations) share this cross-entropy."""
    torch.manual_seed(m)
    logits, labels = torch.randn(m, classes) * scale, torch.randint(0, classes, (m,))
    assert pretext_cross_entropy(logits, labels).item() == pytest.approx(reference_cross_entropy(logits, labels),
                                                                         rel=1e-5)


def test_rotation_head_sizes_and_recipe():
    linear = Rotation(build_backbone("resnet18", width=0.125, in_channels=1), RotationConfig(head_hidden_dim=0), AUG)
    assert [type(m).__name__ for m in linear.classifier] == ["Linear"]
    assert linear.classifier[0].out_features == 4
    cfg = load_config(overrides=["method.name=rotation"])
    assert isinstance(cfg.method, RotationConfig) and cfg.method.all_rotations
    with pytest.raises(ConfigError, match="head_hidden_dim"):
        load_config(overrides=["method.name=rotation", "method.head_hidden_dim=-1"])


# ----------------------------------------------------------------------------- jigsaw

def test_permutation_set_is_fixed_distinct_and_spread():
    perms = permutation_set(9, 100)
    assert torch.equal(perms, permutation_set(9, 100))
    assert perms.shape == (100, 9)
    assert all(sorted(p.tolist()) == list(range(9)) for p in perms)
    distances = (perms[:, None] != perms[None]).sum(-1)
    off_diagonal = distances[~torch.eye(100, dtype=torch.bool)]
    assert off_diagonal.min() >= 5           # greedy max-min: no two permutations a few swaps apart
    assert len({tuple(p.tolist()) for p in permutation_set(4, 24)}) == 24     # 2x2: all 4! of them


def assemble(tiles, grid):
    """(B, grid*grid, C, t, t) in grid order -> (B, C, grid*t, grid*t)."""
    b, _, c, t, _ = tiles.shape
    return tiles.view(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * t, grid * t)


def test_cut_tiles_takes_each_tile_at_its_offset():
    x = torch.randn(2, 3, 9, 9)
    offsets = torch.randint(0, 2, (2, 9, 2))
    tiles = cut_tiles(x, 3, 2, offsets, jitter=1)
    assert tiles.shape == (2, 9, 3, 2, 2)
    for b in range(2):
        for t in range(9):
            top, left = 3 * (t // 3) + offsets[b, t, 0], 3 * (t % 3) + offsets[b, t, 1]
            assert torch.equal(tiles[b, t], x[b, :, top:top + 2, left:left + 2])
    with pytest.raises(ValueError, match="do not fit"):
        cut_tiles(x, 3, 3, offsets, jitter=1)


def test_a_shuffled_image_unshuffles_to_the_original():
    x = torch.randn(4, 1, 12, 12)
    perms = permutation_set(9, 30)[torch.tensor([0, 5, 17, 29])]
    tiles = cut_tiles(x, 3, 4, torch.zeros(4, 9, 2, dtype=torch.long), jitter=0)
    torch.testing.assert_close(assemble(tiles, 3), x)
    shuffled = shuffle_tiles(tiles, perms)
    for b in range(4):
        for i in range(9):
            assert torch.equal(shuffled[b, i], tiles[b, perms[b, i]])
    assert not torch.equal(shuffled, tiles)
    torch.testing.assert_close(assemble(unshuffle_tiles(shuffled, perms), 3), x)


def test_jigsaw_views_are_the_view_tiled_and_shuffled_by_the_labelled_permutation():
    method = Jigsaw(build_backbone("resnet18", width=0.125, in_channels=1), JigsawConfig(tile_jitter=0),
                    AugmentConfig(size=27, mean=[0.5], std=[0.25]))
    batch = uint8_batch(5)
    tiles, labels = method.views(batch, generator(2))
    assert tiles.shape == (5 * 9, 1, 9, 9) and labels.shape == (5,)
    restored = unshuffle_tiles(tiles.view(5, 9, 1, 9, 9), method.permutations[labels])
    view = crop_flip_view(batch, method.augment_cfg, generator(2))
    in_place = normalize_tiles(cut_tiles(view, 3, 9, torch.zeros(5, 9, 2, dtype=torch.long), jitter=0))
    torch.testing.assert_close(restored, in_place)


def test_permutations_are_saved_with_the_model():
    method = Jigsaw(build_backbone("resnet18", width=0.125, in_channels=1), JigsawConfig(num_permutations=30), AUG)
    assert torch.equal(method.state_dict()["permutations"], permutation_set(9, 30))


def test_jigsaw_config_recipe_and_errors():
    cfg = load_config(overrides=["method.name=jigsaw"])
    assert isinstance(cfg.method, JigsawConfig)
    assert (cfg.method.grid, cfg.method.num_permutations) == (3, 100)
    assert cfg.augment.size == Jigsaw.recipe["augment"]["size"]
    with pytest.raises(ConfigError, match="num_permutations"):
        load_config(overrides=["method.name=jigsaw", "method.grid=2", "method.num_permutations=25"])
    with pytest.raises(ConfigError, match="grid"):
        load_config(overrides=["method.name=jigsaw", "method.grid=1"])
    method = Jigsaw(build_backbone("resnet18", width=0.125, in_channels=1), JigsawConfig(tile_jitter=3),
                    AugmentConfig(size=9, mean=[0.5], std=[0.25]))
    with pytest.raises(ValueError, match="augment.size"):
        method.views(uint8_batch(2), generator())


# ----------------------------------------------------------------------------- training


def train_puzzles(images_of, steps: int = 40):
    """A 2x2 jigsaw (24 permutations) trained `steps` steps of 32 images from images_of(gen); the last
    loss and accuracy."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    method = Jigsaw(build_backbone("resnet18", width=0.125, in_channels=1),
                    JigsawConfig(grid=2, num_permutations=24, head_hidden_dim=128),
                    AugmentConfig(size=16, mean=[0.5], std=[0.25], crop_scale=(0.8, 1.0), flip_p=0.0))
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    gen = generator()
    for _ in range(steps):
        loss, logs = method.loss(method.views(images_of(gen), gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item(), float(logs["accuracy"])


def test_jigsaw_learns_puzzles_whose_tiles_show_their_place_by_their_content(one_thread):
    """Each quarter of the image holds its own texture (stripes across, stripes down, diagonals, a
    checkerboard): 60 steps must take the loss far below chance (log 24) if tiles, order, labels and
    the per-tile normalisation agree (measured: 0.22, every puzzle solved)."""
    rows, cols = torch.arange(28)[:, None], torch.arange(28)[None]
    textures = [(rows // 2) % 2, (cols // 2) % 2, ((rows + cols) // 2) % 2, (rows // 2 + cols // 2) % 2]
    quarter = (rows >= 14).long() * 2 + (cols >= 14).long()
    pattern = torch.zeros(28, 28, dtype=torch.long)
    for q, texture in enumerate(textures):
        pattern = torch.where(quarter == q, texture, pattern)

    def images(gen):
        return (pattern * 150 + torch.randint(0, 60, (32, 1, 28, 28), generator=gen)).clamp(0, 255).to(torch.uint8)
    loss, accuracy = train_puzzles(images, steps=60)
    assert loss < 0.25 * math.log(24) and accuracy > 0.9


def test_tile_brightness_no_longer_gives_the_place_away(one_thread):
    """Tiles that differ only in brightness (a ramp across the image, plus noise) are the same puzzle
    piece once each is normalised: the net stays near chance, where without the normalisation it
    solved them in 40 steps (loss under a quarter of log 24)."""
    ramp = torch.arange(28)[:, None] * 6 + torch.arange(28)[None] * 2

    def images(gen):
        return (ramp + torch.randint(0, 40, (32, 1, 28, 28), generator=gen)).clamp(0, 255).to(torch.uint8)
    loss, accuracy = train_puzzles(images)
    assert loss > 0.75 * math.log(24) and accuracy < 0.3


def test_each_tile_is_normalised_on_its_own():
    # float64 and a seeded draw: the checks below hold to rounding, not to a tolerance a random draw can cross.
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 4.0, 0.5, 2.0], dtype=torch.float64).view(1, 4, 1, 1, 1)
    tiles = torch.rand(3, 4, 2, 5, 5, generator=gen, dtype=torch.float64) * scales + 7
    out = normalize_tiles(tiles, eps=0.0)
    torch.testing.assert_close(out.mean(dim=(2, 3, 4)), torch.zeros(3, 4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3, 4)), torch.ones(3, 4, dtype=torch.float64), atol=1e-12, rtol=0)
    # Brightness and contrast drop out exactly once eps scales with the contrast; with the fixed default
    # eps they drop out up to eps / std.
    torch.testing.assert_close(normalize_tiles(tiles * 3 + 5, eps=3e-5), normalize_tiles(tiles, eps=1e-5),
                               atol=1e-12, rtol=0)
    assert not torch.allclose(normalize_tiles(tiles * 3 + 5, eps=1e-5), normalize_tiles(tiles, eps=1e-5),
                              atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,extra", [
    ("rotation", ["train.epochs=6", "optim.lr=1.0"]),
    # Ten permutations and near-whole crops: at 100 permutations tiny_fashion's noisy tiles stay at
    # chance for hundreds of steps (measured), which would test nothing.
    ("jigsaw", ["train.epochs=15", "optim.lr=0.3", "method.num_permutations=10", "augment.crop_scale=[0.9,1.0]"]),
])
def test_short_training_beats_random_init_on_knn(name, extra, tiny_fashion, tmp_path, one_thread):
    cfg = load_config(overrides=SMALL + [f"method.name={name}", f"data.data_dir={tiny_fashion}"] + extra)
    result = pretrain(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    train, test = labelled_eval_sets(run.config)
    report = knn_report(run, train, test, k=20, progress=False)
    losses = [r["loss"] for r in map(__import__("json").loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert result.final_loss < losses[0]
    assert report["knn_top1"] > report["knn_top1_random_init"]
