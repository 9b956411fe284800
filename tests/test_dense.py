"""Scenes with dense labels (selfsup/data/scenes.py) and segmentation from an encoder (selfsup/evaluate/dense.py)."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_idx
from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.data import load_images, load_scenes
from selfsup.data.coco import find_annotations, read_coco
from selfsup.data.scenes import SceneRecipe, compose, read_scenes, render_items, write_scenes
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.dense import (SegmentSettings, confusion_matrix, feature_maps, segment,
                                    segmentation_scores, stacked_map)
from selfsup.evaluate.detect import centre_targets, coco_map, decode, flip_boxes, focal_loss
from selfsup.evaluate.explain import explanation_maps

TINY = SceneRecipe(canvas=48, train_scenes=120, test_scenes=30, max_items=3, scale_range=(0.5, 1.5))


def items(n, value=200, seed=0):
    """(n, 28, 28) uint8 items: a bright rectangle of a random size each, labels n % 10."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        h, w = rng.integers(8, 24, 2)
        images[i, 14 - h // 2:14 + h - h // 2, 14 - w // 2:14 + w - w // 2] = value
    return images, np.arange(n) % 10


def test_an_item_rendered_at_its_own_size_and_place_is_the_item_itself():
    item = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 28, 28) % 251
    # The sampling grid is computed in float32: a pixel may move by ~1e-6 of a pixel, 1e-3 of a grey level.
    exact = dict(atol=1e-3, rtol=0)
    same = render_items(item, torch.tensor([28.0]), torch.tensor([0.0]), torch.tensor([[14.0, 14.0]]), 28)
    torch.testing.assert_close(same, item, **exact)
    moved = render_items(item, torch.tensor([28.0]), torch.tensor([0.0]), torch.tensor([[30.0, 20.0]]), 56)[0]
    torch.testing.assert_close(moved[6:34, 16:44], item[0], **exact)
    assert moved.sum() == pytest.approx(item.sum().item(), abs=1.0)
    # A quarter turn moves the item's top row to one side, and a half-size copy covers a quarter of the area.
    turned = render_items(item, torch.tensor([28.0]), torch.tensor([math.pi / 2]), torch.tensor([[14.0, 14.0]]), 28)
    assert torch.allclose(turned[0], item[0].rot90(1), atol=1e-3) or torch.allclose(turned[0], item[0].rot90(-1), atol=1e-3)
    ones = torch.full((1, 28, 28), 100.0)
    half = render_items(ones, torch.tensor([14.0]), torch.tensor([0.0]), torch.tensor([[14.0, 14.0]]), 28)
    assert (half > 50).sum() == 14 * 14


def test_composed_scenes_label_every_visible_item_pixel_and_box():
    images, labels = items(400)
    scenes = compose(images, labels, 100, TINY, np.random.default_rng(0))
    assert len(scenes) == 100 and scenes.images.shape == (100, 1, 48, 48)
    assert len(set(scenes.items.tolist())) == len(scenes.items)                 # each item at most once
    per_scene = torch.bincount(scenes.box_scene, minlength=100)
    assert per_scene.min() >= 1 and per_scene.max() <= 3
    for row, (scene, box) in enumerate(zip(scenes.box_scene.tolist(), scenes.boxes)):
        number = int((scenes.box_scene[:row] == scene).sum()) + 1              # objects are numbered in order
        visible = scenes.instances[scene] == number
        ys, xs = torch.nonzero(visible, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert (scenes.semantic[scene][visible] == labels[scenes.items[row]] + 1).all()
        # A visible object keeps at least half of its pixels (the rectangles are at least 4x4 at half size).
        assert visible.sum() >= 8
    assert ((scenes.semantic > 0) == (scenes.instances > 0)).all()
    assert torch.equal(compose(images, labels, 100, TINY, np.random.default_rng(0)).images, scenes.images)


def test_a_new_item_that_would_hide_most_of_an_earlier_one_is_dropped():
    big = np.full((2, 28, 28), 200, np.uint8)
    recipe = SceneRecipe(canvas=32, max_items=2, scale_range=(1.0, 1.0), max_rotation_deg=0.0)
    scenes = compose(big, np.array([1, 2]), 1, recipe, np.random.default_rng(3))
    # Two full 28-px squares on a 32-px canvas overlap by at least 24x24 px: the second must not be pasted.
    assert len(scenes.boxes) == 1 and set(scenes.instances.unique().tolist()) <= {0, 1}


def test_select_keeps_each_scenes_objects_and_renumbers_them():
    images, labels = items(300)
    scenes = compose(images, labels, 50, TINY, np.random.default_rng(1))
    picked = scenes.select(torch.tensor([7, 2]))
    assert torch.equal(picked.images, scenes.images[[7, 2]])
    for new, old in ((0, 7), (1, 2)):
        assert torch.equal(picked.boxes[picked.box_scene == new], scenes.boxes[scenes.box_scene == old])
    counts = torch.bincount(scenes.semantic[7].flatten().long(), minlength=11)
    counts[0] = -1
    assert picked.dominant_labels()[0] == counts.argmax() - 1


def fake_fashion(folder):
    """Fashion-MNIST files whose training items are 120 bright and test items 255 bright."""
    folder.mkdir()
    for prefix, n, value in (("train", 600, 120), ("t10k", 200, 255)):
        images, labels = items(n, value, seed=n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


def test_fetch_writes_train_scenes_from_training_items_and_test_scenes_from_test_items(tmp_path):
    data = fake_fashion(tmp_path / "fmnist")
    meta = write_scenes(tmp_path / "fashion-scenes", TINY, str(data), log=lambda _: None)
    train, test = read_scenes(tmp_path / "fashion-scenes", "train"), read_scenes(tmp_path / "fashion-scenes", "test")
    assert meta["counts"]["train"]["scenes"] == len(train) == 120 and len(test) == 30
    # The background stays under 120: no test item (255) can be in a training scene, and every test scene has one.
    assert train.images.max() <= 130 and (test.images.flatten(1).max(1).values > 200).all()
    assert train.items.max() < 600 and test.items.max() < 200
    assert torch.equal(read_scenes(tmp_path / "fashion-scenes").images,
                       write_scenes(tmp_path / "again", TINY, str(data), log=lambda _: None) and
                       read_scenes(tmp_path / "again").images)


def test_scenes_are_a_built_in_image_set_and_a_missing_set_says_how_to_get_it(tmp_path):
    write_scenes(tmp_path / "fashion-scenes", TINY, str(fake_fashion(tmp_path / "fmnist")), log=lambda _: None)
    images = load_images("fashion-scenes", "train", data_dir=str(tmp_path))
    assert images.images.shape == (120, 1, 48, 48) and images.labels.max() < 10
    assert len(load_scenes("test", str(tmp_path))) == 30
    with pytest.raises(DataError, match="selfsup data fetch fashion-scenes"):
        read_scenes(tmp_path / "nothing")
    with pytest.raises(DataError, match="multiple of 8"):
        SceneRecipe(canvas=50).validate()


def test_segmentation_scores_match_a_hand_count():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    confusion = confusion_matrix(pred, target, 4)
    scores = segmentation_scores(confusion)
    # class 0: hits 2, union 3 + 3 - 2 = 4; class 1: hits 2, union 2 + 3 - 2 = 3; class 2: hits 2, union 3 + 2 - 2 = 3
    assert scores["iou"][:3] == [pytest.approx(2 / 4), pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert scores["iou"][3] is None                                            # class 3 never occurs
    assert scores["miou"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)


def test_feature_maps_of_a_resnet_and_a_vit():
    resnet = build_backbone("resnet18", width=0.125, in_channels=1)
    maps = feature_maps(resnet, torch.zeros(2, 1, 32, 32))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4]
    vit = build_backbone("vit_tiny", patch_size=8, in_channels=1, image_size=32)
    (grid,) = feature_maps(vit, torch.zeros(2, 1, 32, 48))
    assert grid.shape == (2, 192, 4, 6)
    with pytest.raises(ConfigError, match="feature maps"):
        feature_maps(nn.Linear(3, 3), torch.zeros(2, 3))


def test_a_vits_intermediate_tokens_are_its_normed_blocks_and_the_stack_ends_with_the_last_map():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=8, in_channels=1, image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens = vit.intermediate_tokens(x, 4)
        by_hand = [vit.norm(vit.blocks[:depth](vit.embed_tokens(x))) for depth in (3, 6, 9, 12)]
        stack, (last,) = stacked_map(vit, x), feature_maps(vit, x)
    assert len(tokens) == 4
    for got, want in zip(tokens, by_hand):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(tokens[-1], vit.forward_tokens(x))
    assert stack.shape == (2, 4 * 192, 4, 4)
    torch.testing.assert_close(stack[:, -192:], last)
    torch.testing.assert_close(stack[:, :192], tokens[0][:, 1:].transpose(1, 2).reshape(2, 192, 4, 4))
    assert len(build_backbone("vit_tiny", patch_size=8, in_channels=1, image_size=32)
               .intermediate_tokens(x, 20)) == 12                              # at most one per block


def test_a_resnets_stack_is_its_stages_pooled_to_the_last_grid():
    resnet = build_backbone("resnet18", width=0.125, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        maps, stack = feature_maps(resnet, x), stacked_map(resnet, x)
    assert stack.shape == (2, sum(m.shape[1] for m in maps), 4, 4)
    torch.testing.assert_close(stack[:, -maps[-1].shape[1]:], maps[-1])
    torch.testing.assert_close(stack[:, :maps[0].shape[1], :1, :1], maps[0][:, :, :8, :8].mean((-2, -1), keepdim=True))


class Oracle(nn.Module):
    """A 'backbone' whose map one-hot encodes each pixel's grey level in steps of 20 at stride 2: enough for
    a linear head to read the class of scenes painted with grey = 20 * (class + 1)."""

    def __init__(self, informative: bool = True):
        super().__init__()
        self.informative = informative
        self.anchor = nn.Parameter(torch.zeros(1))

    def stage_maps(self, x):
        levels = (x * 255 / 20).round().long().clamp(0, 11) if self.informative else torch.randint(0, 12, x.shape)
        return [nn.functional.one_hot(levels[:, 0, ::2, ::2], 12).permute(0, 3, 1, 2).float() + 0 * self.anchor]


def painted_scenes(n, seed):
    images, labels = items(3 * n, seed=seed)
    scenes = compose(images, labels, n, SceneRecipe(canvas=32, max_items=2, scale_range=(0.5, 1.0)),
                     np.random.default_rng(seed))
    scenes.images = (scenes.semantic.long() * 20).to(torch.uint8)[:, None]
    return scenes


def test_a_linear_head_on_informative_maps_segments_and_on_random_maps_does_not():
    train, val, test = painted_scenes(60, 0), painted_scenes(20, 1), painted_scenes(20, 2)
    settings = SegmentSettings(epochs=40, steps=100, batch_size=16, lr=5e-2, maps="last")
    prepare = lambda u8: u8.float() / 255
    good = segment(Oracle(), train, val, test, prepare, settings)
    bad = segment(Oracle(informative=False), train, val, test, prepare, settings)
    assert good["miou"] > 0.8 and good["pixel_accuracy"] > 0.9
    assert bad["miou"] < 0.3
    assert good["steps"] == max(100, math.ceil(40 * 60 / 16))


class EarlyOracle(Oracle):
    """The Oracle's informative map first, then a last map of noise at stride 4: only a head that reads the
    earlier depth can segment."""

    def stage_maps(self, x):
        (informative,) = super().stage_maps(x)
        return [informative, torch.randn(len(x), 12, x.shape[-2] // 4, x.shape[-1] // 4) + 0 * self.anchor]


def test_maps_auto_keeps_the_stacked_maps_when_only_an_earlier_depth_informs_the_validation_scenes():
    train, val, test = painted_scenes(60, 0), painted_scenes(20, 1), painted_scenes(20, 2)
    prepare = lambda u8: u8.float() / 255
    results = {maps: segment(EarlyOracle(), train, val, test, prepare,
                             SegmentSettings(epochs=40, steps=100, batch_size=16, lr=5e-2, maps=maps))
               for maps in ("last", "stack", "auto")}
    assert results["last"]["miou"] < 0.3 and results["stack"]["miou"] > 0.6
    assert results["last"]["maps"] == "last" and "val_miou_by_maps" not in results["stack"]
    auto = results["auto"]
    assert auto["maps"] == "stack" and auto["val_miou_by_maps"]["stack"] > auto["val_miou_by_maps"]["last"]
    assert auto["val_miou_by_maps"]["stack"] == auto["val_miou"]
    with pytest.raises(ConfigError, match="--mode linear"):
        SegmentSettings(mode="finetune", maps="stack")
    with pytest.raises(ConfigError, match="maps must be one of"):
        SegmentSettings(maps="middle")
    assert SegmentSettings().maps == "auto" and SegmentSettings(mode="finetune").maps == ""


def test_segment_and_detect_commands_write_rows_for_the_run_and_its_random_init(tmp_path, capsys):
    write_scenes(tmp_path / "fashion-scenes", TINY, str(fake_fashion(tmp_path / "fmnist")), log=lambda _: None)
    run = tmp_path / "runs" / "scenes"
    assert main(["pretrain", "--data", "fashion-scenes", "--data-dir", str(tmp_path), "--runs-dir",
                 str(tmp_path / "runs"), "--name", "scenes", "--quiet", "--no-eval", "backbone.width=0.125",
                 "train.batch_size=32", "train.steps=3", "train.precision=fp32", "eval.online_every=0"]) == 0
    assert main(["evaluate", "segment", str(run), "--labels", "50%", "--baseline", "--steps", "5", "--epochs", "1",
                 "--batch-size", "16", "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "eval" / "dense.jsonl").read_text().splitlines()]
    assert [(r["init"], r["labels"], r["scenes"]) for r in rows] == [("pretrained", "50%", 54), ("random init", "50%", 54)]
    assert all(0 <= r["miou"] <= 1 and r["scored_on"] == "test" for r in rows)
    assert all(r["settings"]["maps"] == "auto" and set(r["val_miou_by_maps"]) == {"last", "stack"}
               for r in rows)
    assert f"{rows[0]['maps']} maps, validation miou" in capsys.readouterr().out
    assert main(["evaluate", "segment", str(run), "--labels", "50%", "--maps", "last", "--steps", "5", "--epochs",
                 "1", "--batch-size", "16", "--quiet"]) == 0
    row = json.loads((run / "eval" / "dense.jsonl").read_text().splitlines()[-1])
    assert row["maps"] == "last" and "val_miou_by_maps" not in row
    assert main(["evaluate", "segment", str(run), "--mode", "finetune", "--maps", "stack"]) != 0
    assert "--mode linear" in capsys.readouterr().err
    assert main(["evaluate", "segment", str(run), "--labels", "5/class"]) != 0
    assert "a share (10%) or a count" in capsys.readouterr().err
    assert main(["evaluate", "detect", str(run), "--labels", "50%", "--steps", "3", "--epochs", "1", "--batch-size",
                 "16", "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "eval" / "dense.jsonl").read_text().splitlines()]
    assert rows[-1]["protocol"] == "detect" and 0 <= rows[-1]["map"] <= 1 and rows[-1]["stride"] == 2
    assert main(["explain", str(run), "--data", "fashion-scenes", "--data-dir", str(tmp_path), "--count", "3",
                 "--out", str(tmp_path / "maps")]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "explain-000.png", "explain-001.png", "explain-002.png", "explanations.png", "explanations.txt"]
    assert "Grad-CAM towards training image" in (tmp_path / "maps" / "explanations.txt").read_text()
    # A user's own COCO-style folder: detection works with boxes only, segmentation says it needs masks.
    coco = write_coco(tmp_path / "coco", masks=False)
    assert main(["evaluate", "detect", str(run), "--data", str(coco), "--size", "48", "--steps", "3", "--epochs",
                 "0.1", "--batch-size", "8", "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "eval" / "dense.jsonl").read_text().splitlines()]
    assert rows[-1]["data"] == str(coco) and rows[-1]["scenes"] > 10
    capsys.readouterr()
    assert main(["evaluate", "segment", str(run), "--data", str(coco), "--size", "48", "--quiet"]) != 0
    assert "segmentation needs masks" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ detection

def test_centre_targets_put_a_peak_on_each_objects_class_and_cell():
    boxes = torch.tensor([[8.0, 8.0, 24.0, 16.0], [40.0, 0.0, 48.0, 32.0]])
    targets = centre_targets(boxes, torch.tensor([3, 1]), torch.tensor([0, 1]), 2, 5, (12, 12), 4.0)
    heat = targets["heatmap"]
    assert heat.shape == (2, 5, 12, 12)
    assert heat[0, 3, 3, 4] == 1 and heat[1, 1, 4, 11] == 1                   # centres (16, 12) and (44, 16) / 4
    assert heat.eq(1).sum() == 2 and heat[0, 1].sum() == 0 and heat[1, 3].sum() == 0
    torch.testing.assert_close(targets["size"], torch.tensor([[4.0, 2.0], [2.0, 8.0]]))
    torch.testing.assert_close(targets["offset"], torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    # The Gaussian is wider along the longer side: the second box is 4x taller than wide.
    assert heat[1, 1, 6, 11] > heat[1, 1, 4, 9]


def test_focal_loss_is_centernets_formula():
    logits = torch.tensor([[[[0.3, -1.0], [2.0, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.6], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    by_hand = -(((1 - p[0, 0, 0, 0]) ** 2 * torch.log(p[0, 0, 0, 0]))
                + ((1 - p[0, 0, 1, 1]) ** 2 * torch.log(p[0, 0, 1, 1]))
                + (1 - 0.6) ** 4 * p[0, 0, 0, 1] ** 2 * torch.log(1 - p[0, 0, 0, 1])
                + p[0, 0, 1, 0] ** 2 * torch.log(1 - p[0, 0, 1, 0])) / 2
    torch.testing.assert_close(focal_loss(logits, target), by_hand)


def perfect_outputs(scenes, grid, stride):
    """What a head that is always right would output for the scenes: the targets, as logits."""
    rows = scenes.box_scene
    targets = centre_targets(scenes.boxes, scenes.box_labels, rows, len(scenes), scenes.num_classes, grid, stride)
    out = {"heatmap": torch.logit(targets["heatmap"].clamp(1e-4, 1 - 1e-4)),
           "size": torch.zeros(len(scenes), 2, *grid), "offset": torch.zeros(len(scenes), 2, *grid)}
    cx, cy = targets["cell"][:, 0], targets["cell"][:, 1]
    out["size"][rows, :, cy, cx] = targets["size"]
    out["offset"][rows, :, cy, cx] = targets["offset"]
    return out


def test_decoding_perfect_outputs_gives_the_boxes_back_and_full_map():
    images, labels = items(200)
    scenes = compose(images, labels, 30, SceneRecipe(canvas=48, max_items=2, scale_range=(0.8, 1.5)),
                     np.random.default_rng(4))
    detections = decode(perfect_outputs(scenes, (48, 48), 1.0), 1.0)
    first = detections[0]["scores"] > 0.5
    assert torch.allclose(detections[0]["boxes"][first].sort(0).values, scenes.boxes[scenes.box_scene == 0].sort(0).values)
    scores = coco_map(detections, scenes)
    assert scores["map"] == pytest.approx(1.0) and scores["map50"] == pytest.approx(1.0)
    # Boxes shifted by a fifth of their width overlap by IoU 0.8 / 1.2 = 2/3: they count at the thresholds
    # 0.5, 0.55, 0.6 and 0.65 of the ten, so mAP@.5 stays 1 and mAP@[.5:.95] drops to 0.4.
    shifted = [dict(d, boxes=d["boxes"] + torch.stack([(d["boxes"][:, 2] - d["boxes"][:, 0]) / 5,
                                                        torch.zeros(len(d["boxes"]))] * 2, 1)) for d in detections]
    worse = coco_map(shifted, scenes)
    assert worse["map"] == pytest.approx(0.4, abs=0.01) and worse["map50"] == pytest.approx(1.0)
    assert coco_map([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                     for _ in range(len(scenes))], scenes) == {"map": 0.0, "map50": 0.0}


def test_flipped_boxes_follow_the_mirrored_image():
    boxes = torch.tensor([[2.0, 3.0, 10.0, 7.0], [0.0, 0.0, 4.0, 4.0]])
    flipped = flip_boxes(boxes, torch.tensor([True, False]), 32)
    torch.testing.assert_close(flipped, torch.tensor([[22.0, 3.0, 30.0, 7.0], [0.0, 0.0, 4.0, 4.0]]))


# ------------------------------------------------------------------------------------- explanations

def test_class_attention_is_the_weights_the_last_block_averages_values_with():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", patch_size=8, in_channels=1, image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    maps = vit.class_attention(x)
    assert maps.shape == (2, 3, 4, 4) and (maps >= 0).all() and (maps.flatten(2).sum(-1) < 1).all()
    # The class token's output of the last attention (before its projection) is its weights times the values:
    # recompute the weight on the class token itself as 1 - the patches' sum, and compare with the module.
    tokens = vit.embed_tokens(x)
    for block in vit.blocks[:-1]:
        tokens = block(tokens)
    attention, b, n, d = vit.blocks[-1].attn, *tokens.shape
    _, _, v = attention.qkv(vit.blocks[-1].norm1(tokens)).view(b, n, 3, attention.heads, -1).permute(2, 0, 3, 1, 4)
    weights = torch.cat([1 - maps.flatten(2).sum(-1, keepdim=True), maps.flatten(2)], -1)      # (B, heads, n)
    ours = (weights[:, :, None] @ v)[:, :, 0]                                                   # (B, heads, dh)
    q, k, _ = attention.qkv(vit.blocks[-1].norm1(tokens)).view(b, n, 3, attention.heads, -1).permute(2, 0, 3, 1, 4)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, :, 0]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    result = explanation_maps(vit, x)
    assert result["kind"] == "attention" and result["maps"].shape == (2, 3, 32, 32) and result["maps"].max() == 1


class BrightChannel(nn.Module):
    """A 'CNN' whose last stage is (the image, a constant): its embedding leans towards channel 0 as the image
    gets brighter, so Grad-CAM towards a reference on channel 0 must light up the bright pixels."""

    def stage_maps(self, x):
        return [torch.cat([x, torch.ones_like(x)], 1)]


def test_grad_cam_lights_up_the_region_that_makes_an_image_like_its_neighbour():
    x = torch.zeros(1, 1, 16, 16, requires_grad=False)
    x[0, 0, 4:8, 10:14] = 1.0
    references = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [-1.0, -0.2]]), dim=1)
    result = explanation_maps(BrightChannel(), x, references)
    maps = result["maps"][0, 0]
    assert result["kind"] == "grad-cam" and result["nearest"].tolist() == [0]
    assert maps[4:8, 10:14].min() == 1 and maps[:4].max() == 0 and maps[8:].max() == 0
    with pytest.raises(ConfigError, match="ViT .* or a ResNet"):
        explanation_maps(nn.Linear(2, 2), x)


# ---------------------------------------------------------------------------------- COCO annotations

def write_coco(folder, masks=True, count=30):
    """`count` 40x30 grey images with a bright 10x8 rectangle (category 7) and a small 4x4 square in front of it
    (category 3); polygons for the rectangle, RLE for the square; one crowd annotation that must be ignored."""
    from PIL import Image
    folder.mkdir()
    images, annotations = [], []
    for i in range(count):
        picture = np.zeros((30, 40), np.uint8)
        x, y = 2 + i % 20, 3 + i % 15
        picture[y:y + 8, x:x + 10] = 200
        picture[y + 2:y + 6, x + 3:x + 7] = 120
        Image.fromarray(picture).save(folder / f"img{i}.png")
        images.append({"id": 100 + i, "file_name": f"img{i}.png", "width": 40, "height": 30})
        square = np.zeros((30, 40), np.uint8, order="F")
        square[y + 2:y + 6, x + 3:x + 7] = 1
        from pycocotools import mask as coco_mask
        rle = coco_mask.encode(square)
        rle["counts"] = rle["counts"].decode()
        rectangle = {"id": 2 * i + 1, "image_id": 100 + i, "category_id": 7, "bbox": [x, y, 10, 8], "iscrowd": 0}
        small = {"id": 2 * i + 2, "image_id": 100 + i, "category_id": 3, "bbox": [x + 3, y + 2, 4, 4], "iscrowd": 0}
        if masks:
            rectangle["segmentation"] = [[x, y, x + 10, y, x + 10, y + 8, x, y + 8]]
            small["segmentation"] = rle
        annotations += [rectangle, small]
    annotations.append({"id": 999, "image_id": 100, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1})
    spec = {"images": images + [{"id": 500, "file_name": "missing.png", "width": 40, "height": 30}],
            "annotations": annotations, "categories": [{"id": 7, "name": "rectangle"}, {"id": 3, "name": "square"}]}
    (folder / "instances.json").write_text(json.dumps(spec))
    return folder


def test_coco_annotations_become_scenes_with_scaled_boxes_and_masks(tmp_path):
    folder = write_coco(tmp_path / "coco")
    with pytest.warns(UserWarning, match="skipped 1 unreadable or missing"):
        scenes = read_coco(find_annotations(folder), size=80, channels=1)
    assert len(scenes) == 30 and scenes.classes == ["square", "rectangle"] and scenes.images.shape == (30, 1, 80, 80)
    first = scenes.boxes[scenes.box_scene == 0]
    # Image 0: rectangle at x 2, y 3 of 40 x 30, scaled by 2 and 8/3; crowd left out, largest first.
    torch.testing.assert_close(first, torch.tensor([[4.0, 8.0, 24.0, 88 / 3], [10.0, 40 / 3, 18.0, 72 / 3]]))
    assert scenes.box_labels[scenes.box_scene == 0].tolist() == [1, 0]
    # The square is painted over the rectangle: its pixels are class 'square' (1 + 0), the rest of the box 'rectangle'.
    assert scenes.semantic[0, 20, 14] == 1 and scenes.semantic[0, 10, 6] == 2 and scenes.semantic[0, 60, 60] == 0
    assert scenes.instances[0, 20, 14] == 2 and scenes.instances[0, 10, 6] == 1
    assert scenes.dominant_labels()[0] == 1


def test_a_coco_set_with_boxes_only_serves_detection_and_segmentation_says_it_needs_masks(tmp_path, capsys):
    folder = write_coco(tmp_path / "coco", masks=False)
    with pytest.warns(UserWarning):
        scenes = read_coco(folder / "instances.json", size=40)
    assert scenes.semantic is None and len(scenes.boxes) == 60 and scenes.dominant_labels()[0] == 1
    with pytest.raises(DataError, match="not a COCO annotation file"):
        (tmp_path / "bad.json").write_text('{"images": []}')
        read_coco(tmp_path / "bad.json", size=40)
