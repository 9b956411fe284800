"""Streamed images (selfsup.data.stream): crops cut on the original image by data workers, the same
batches whatever the worker count, exact resume after SIGKILL, and bad images, dead workers and the
automatic choice handled; evaluation, embeddings and the report read a streamed source a batch at a time."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

import selfsup.data.stream as stream
from selfsup.augment import AugmentConfig, CroppedViews, augment_views, multi_crop
from selfsup.build import complete_config, load_training_data
from selfsup.config import load_config
from selfsup.data import DataError, pack
from selfsup.data.order import epoch_order
from selfsup.data.stream import (CropRecipe, ImageSource, StepBatches, StreamBatches, StreamedImages, crop_box,
                                 read_crops)
from selfsup.cli.runs import write_rows
from selfsup.errors import ConfigError, TrainingError
from selfsup.evaluate.datasets import labelled_eval_sets
from selfsup.evaluate.features import extract_features, pixel_features
from selfsup.modalities.image import image_parts, streamed_source
from selfsup.run import load_run

from selfsup.train import pretrain

from resume import assert_bitwise_equal, model_tensors, straight_and_resumed
from test_distributed import free_port

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

TINY = ["backbone.width=0.125", "train.batch_size=8", "train.precision=fp32", "optim.warmup_epochs=0",
        "eval.online_every=0", "augment.size=16", "train.threads=1"]


def photo(width, height, seed):
    """A smooth photo-like RGB image: gradients and a disc, so JPEG keeps it close to what was drawn."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.2, 1.0, 3)
    disc = ((x - a / 2) ** 2 + (y - b / 2) ** 2) < (c / 4) ** 2
    pixels = np.stack([x * 255 * a, y * 255 * b, disc * 200 + 30 * c], axis=-1)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 images of varied sizes and aspect ratios in two class folders, and their packed store."""
    root = tmp_path_factory.mktemp("stream") / "photos"
    for i in range(24):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        width, height = 40 + 7 * i, 90 - 2 * i
        photo(width, height, i).save(folder / f"{i:02d}.{'jpg' if i % 3 else 'png'}", quality=95)
    store = root.parent / "photos.store"
    pack(root, store, progress=False, workers=1)
    return root, store


# ----------------------------------------------------------------------------- crops

def test_the_crop_box_has_the_drawn_share_of_the_pixels_and_the_drawn_aspect_ratio():
    recipe = CropRecipe(16, (0.1, 0.5), (0.5, 2.0), 0.5)
    (left, top, right, bottom), flip = crop_box(200, 100, torch.tensor([0.5, 0.5, 0.25, 1.0, 0.9]), recipe)
    w, h = right - left, bottom - top
    assert math.isclose(w * h, 0.3 * 200 * 100) and math.isclose(w / h, 1.0)      # area U(0.1, 0.5), log-aspect mid
    assert math.isclose(left, 0.25 * (200 - w)) and math.isclose(bottom, 100) and not flip
    # A box wider than the image is cut to its width; the flip is drawn against flip_p.
    (left, top, right, bottom), flip = crop_box(50, 100, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.1]), recipe)
    assert (left, right) == (0.0, 50.0) and math.isclose(bottom - top, math.sqrt(0.5 * 5000 / 2)) and flip


def test_crops_are_cut_from_the_original_image_and_flipped(tmp_path):
    file = tmp_path / "wide.png"
    photo(120, 40, 0).save(file)
    box = (30.0, 5.0, 70.0, 35.0)
    plain, flipped = read_crops(file, "RGB", lambda w, h: [(box, False), (box, True)], [12, 12])
    expected = np.asarray(Image.open(file).convert("RGB").resize((12, 12), Image.BILINEAR, box=box, reducing_gap=2.0))
    assert np.array_equal(plain, expected) and np.array_equal(flipped, expected[:, ::-1])
    grey, = read_crops(file, "L", lambda w, h: [((0.0, 0.0, w, h), False)], [8])
    assert grey.shape == (8, 8)


def test_a_big_jpeg_is_decoded_at_a_reduced_scale_when_its_crops_allow(tmp_path, monkeypatch):
    file = tmp_path / "big.jpg"
    photo(800, 600, 1).save(file, quality=95)
    asked = []
    real_draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft",
                        lambda self, mode, size: asked.append(size) or real_draft(self, mode, size))
    whole, = read_crops(file, "RGB", lambda w, h: [((0.0, 0.0, w, h), False)], [50])
    assert asked == [(67, 50)]                             # the short side the 50-px crop needs
    reference = np.asarray(Image.open(file).convert("RGB").resize((50, 50), Image.BILINEAR, reducing_gap=2.0))
    assert np.abs(whole.astype(int) - reference).mean() < 2.0    # draft scaling is not bit-exact, but close


def test_cropped_views_go_through_the_same_augmentation_draws_as_images_in_memory():
    """With an identity crop (whole image, no flip) in memory, and the same crops handed over already
    cut, every op after the crop sees the same draws: the views agree."""
    cfg = AugmentConfig(size=12, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, mean=[0.5] * 3,
                        std=[0.25] * 3, jitter_p=1.0, grayscale_p=0.5, solarize_p=0.5)
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    in_memory = multi_crop(images, cfg, torch.Generator().manual_seed(3), 2)
    streamed = multi_crop(CroppedViews(torch.cat([images, images]), 2), cfg, torch.Generator().manual_seed(3), 2)
    for a, b in zip(in_memory, streamed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(streamed[0], streamed[1])                  # the two views were augmented apart
    with pytest.raises(ValueError, match="holds 1 crop"):
        augment_views(CroppedViews(images, 1), cfg, torch.Generator(), copies=2)


# ----------------------------------------------------------------------------- step batches

def streamed(photos_path, *extra):
    cfg = load_config(overrides=[f"data.source={photos_path}", *TINY, *extra])
    return cfg, load_training_data(cfg)


def step_batches(data, cfg, views=2):
    return StepBatches(data, cfg.augment, views, seed=0, steps_per_epoch=len(data) // 8, local_batch=8, rank=0,
                       world_size=1)


def test_a_store_streams_its_training_part_and_a_step_is_its_slice_of_the_epochs_permutation(photos):
    root, store = photos
    cfg, data = streamed(store, "augment.local_crops=2", "augment.local_size=8")
    assert isinstance(data, StreamedImages)
    parts = image_parts(ImageSource(store), str(store), cfg.data.val_fraction)
    assert torch.equal(data.indices, parts["train"]) and len(parts["val"]) + len(parts["test"]) > 0
    batches = step_batches(data, cfg)
    step = batches.steps_per_epoch + 1                                    # the second step of epoch 1
    assert torch.equal(batches.positions(step), epoch_order(len(data), 0, 1)[8:16])
    batch = batches[step]
    assert batch.crops.shape == (16, 3, 16, 16) and batch.crops.dtype == torch.uint8 and batch.shape == (8, 3, 16, 16)
    assert batch.local.crops.shape == (16, 3, 8, 8)
    assert torch.equal(batches[step].crops, batch.crops) and not torch.equal(batches[step + 1].crops, batch.crops)


def test_under_torchrun_each_rank_streams_its_own_share_and_the_ranks_see_every_image_once(photos):
    _, store = photos
    cfg, data = streamed(store)
    world, local_batch = 4, 1
    steps_per_epoch = len(data) // (world * local_batch)
    seen = []
    for rank in range(world):
        ranks_batches = StepBatches(data, cfg.augment, 2, 0, steps_per_epoch, local_batch, rank, world)
        seen += [p for step in range(steps_per_epoch) for p in ranks_batches.positions(step).tolist()]
    assert len(seen) == len(set(seen)) == steps_per_epoch * world


def test_the_workers_hand_over_the_same_batches_as_the_main_process(photos):
    _, store = photos
    cfg, data = streamed(store)
    expected = [step_batches(data, cfg)[step].crops for step in range(5)]
    loader = StreamBatches(step_batches(data, cfg), workers=2, device=torch.device("cpu"))
    got = [loader(step).crops for step in (0, 1, 2, 1, 2, 3, 4)]         # a step asked again restarts the workers
    assert all(torch.equal(a, b) for a, b in zip(got, [expected[s] for s in (0, 1, 2, 1, 2, 3, 4)]))
    loader.close()


def test_a_folder_streams_when_asked_or_when_it_would_not_fit_in_memory(photos, monkeypatch, capsys):
    root, store = photos
    cfg = load_config(overrides=[f"data.source={root}"])
    assert not stream.streams(cfg, root) and stream.streams(cfg, store)
    monkeypatch.setattr(stream, "memory_bytes", lambda: 1000)
    assert stream.streams(cfg, root) and "streaming them from disk" in capsys.readouterr().err
    assert not stream.streams(load_config(overrides=[f"data.source={root}", "data.stream=off"]), root)
    monkeypatch.undo()
    in_memory = load_config(overrides=[f"data.source={root}", "data.size=16", "train.batch_size=8"])
    complete_config(in_memory, load_training_data(in_memory))
    assert in_memory.data.stream == "off"            # the choice auto made, so evaluation reads the same way
    assert isinstance(streamed(root, "data.stream=on")[1], StreamedImages)
    with pytest.raises(ConfigError, match="data.stream=on reads image files"):
        load_training_data(load_config(overrides=["data.stream=on"]))
    with pytest.raises(ConfigError, match="data.stream must be auto, on or off"):
        load_config(overrides=["data.stream=sometimes"])


def test_an_unreadable_image_is_replaced_by_another_of_its_batch_or_stops_a_strict_run(photos, tmp_path):
    root, _ = photos
    broken = tmp_path / "photos"
    for file in root.rglob("*.*"):
        (broken / file.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (broken / file.relative_to(root)).write_bytes(file.read_bytes())
    victim = broken / "a" / "01.jpg"
    victim.write_bytes(victim.read_bytes()[:200])                          # a cut JPEG
    cfg, data = streamed(broken, "data.stream=on", "train.batch_size=24", "data.val_fraction=0")
    data = StreamedImages(data.source, torch.arange(24), 3)               # every image, the cut one included
    batches = StepBatches(data, cfg.augment, 2, 0, 1, 24, 0, 1)
    with pytest.warns(UserWarning, match="skipped unreadable image .*01.jpg"):
        batch = batches[0]
    assert batch.crops.shape[0] == 48
    strict = StepBatches(StreamedImages(data.source, torch.arange(24), 3, strict=True), cfg.augment, 2, 0, 1, 24, 0, 1)
    with pytest.raises(DataError, match="cannot read image .*01.jpg"):
        strict[0]
    with pytest.raises(DataError, match="^cannot read image .*01.jpg[^\n]*$"):     # from a worker: one line
        StreamBatches(strict, workers=1, device=torch.device("cpu"))(0)


def test_a_worker_that_dies_is_a_clear_error_not_a_hang(photos, monkeypatch):
    _, store = photos
    cfg, data = streamed(store)
    monkeypatch.setattr(StepBatches, "__getitem__", lambda self, step: os._exit(3))     # runs in the worker
    loader = StreamBatches(step_batches(data, cfg), workers=1, device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="a data worker stopped while reading step 0"):
        loader(0)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_training_from_a_store_with_two_workers_resumes_bitwise(method, photos, tmp_path, monkeypatch):
    _, store = photos
    extra = ["augment.local_crops=2", "augment.local_size=8"] if method == "dino" else []

    def make_config():
        return load_config(overrides=[f"method.name={method}", f"data.source={store}", *TINY, *extra,
                                      "train.workers=2", "train.steps=4", "train.checkpoint_every=2"])
    data = load_training_data(make_config())
    straight, resumed = straight_and_resumed(make_config, data, tmp_path, 2, monkeypatch)
    assert_bitwise_equal(straight, resumed)


def test_sigkill_mid_epoch_while_streaming_then_resume_is_bitwise_identical(photos, tmp_path):
    _, store = photos
    command = [sys.executable, "-m", "selfsup", "pretrain", "--quiet", "--no-eval", "--data", str(store),
               "--name", "run", *TINY, "train.workers=2", "train.steps=6", "train.checkpoint_every=1", "train.log_every=1",
               "train.batch_size=4"]

    def run(runs, *more):
        return subprocess.run(command + ["--runs-dir", str(runs), *more], capture_output=True, text=True)
    assert run(tmp_path / "straight").returncode == 0
    runs = tmp_path / "broken"
    metrics = runs / "run" / "metrics.jsonl"
    proc = subprocess.Popen(command + ["--runs-dir", str(runs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while (not metrics.exists() or metrics.read_text().count('"loss"') < 2) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = run(runs, "--resume", str(runs / "run"))
    assert finished.returncode == 0, finished.stderr
    assert_bitwise_equal(model_tensors(tmp_path / "straight" / "run"), model_tensors(runs / "run"))
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("method", ["simclr", "byol", "dino", "mae"])
def test_the_imagenet_recipes_train_from_a_store_at_their_view_sizes(method, photos, tmp_path):
    """configs/<method>-imagenet.yaml as written (224 px views, ResNet-50 or ViT-S/16, multi-crop for DINO),
    with a batch of 4 for one step."""
    _, store = photos
    cfg = load_config(CONFIGS / f"{method}-imagenet.yaml", [f"data.source={store}", "train.batch_size=4",
                                                             "train.steps=1", "train.workers=1", "train.threads=2",
                                                             "eval.online_every=0", "train.precision=fp32"])
    assert cfg.augment.size == 224 and cfg.optim.lr_per_images == 256
    result = pretrain(cfg, tmp_path / "run", progress=False)
    assert result.steps == 1 and math.isfinite(result.final_loss)


# ----------------------------------------------------------------------------- evaluation

def stripes(width, height):
    """Three equal bands, red | green | blue, across the image's long side: its centre square is green."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    long_side, axis = (width, 1) if width >= height else (height, 0)
    for band in range(3):
        where = [slice(None), slice(None)]
        where[axis] = slice(band * long_side // 3, (band + 1) * long_side // 3)
        pixels[tuple(where)] = np.eye(3, dtype=np.uint8)[band] * 255
    return Image.fromarray(pixels)


def test_an_evaluation_view_is_the_centre_square_of_the_original_image(tmp_path):
    for i, (width, height) in enumerate([(96, 32), (32, 96), (150, 50)]):
        stripes(width, height).save(tmp_path / f"{i}.png")
    cfg = load_config(overrides=[f"data.source={tmp_path}", "data.stream=on", "data.size=8", "train.workers=1"])
    views = streamed_source(cfg, str(tmp_path)).samples
    assert views.shape == (3, 3, 8, 8) and views.dtype == torch.uint8
    pixels = views[:].float()
    assert (pixels[:, 1, 1:-1, 1:-1] > 245).all() and (pixels[:, [0, 2], 1:-1, 1:-1] < 10).all()
    assert torch.equal(views[1], views[torch.tensor([1])][0]) and torch.equal(views[::2], views[[0, 2]])


def test_evaluation_streams_a_store_a_batch_at_a_time_from_workers(photos):
    _, store = photos
    cfg = load_config(overrides=[f"data.source={store}", *TINY, "data.size=12", "train.workers=2"])
    train, val = labelled_eval_sets(cfg, part="val", max_train=0, max_test=0)
    parts = image_parts(ImageSource(store), str(store), cfg.data.val_fraction)
    assert isinstance(train, StreamedImages) and isinstance(val, StreamedImages)
    assert torch.equal(train.indices, parts["train"]) and torch.equal(val.indices, parts["val"])
    assert torch.equal(train.labels, ImageSource(store).labels[parts["train"]])
    decoded = train.samples[:]
    batches = list(train.samples.batches(5))
    assert [len(b) for b in batches] == [5] * (len(train) // 5) + ([len(train) % 5] if len(train) % 5 else [])
    assert torch.equal(torch.cat(batches), decoded)
    embed = lambda x: x.float().flatten(1)[:, :7] + 1          # noqa: E731 - a stand-in encoder
    assert torch.equal(extract_features(embed, train.samples, batch_size=5), extract_features(embed, decoded))
    raw = pixel_features(train.samples)
    assert raw.shape == (len(train), 3 * 12 * 12) and torch.allclose(raw, pixel_features(decoded), atol=1e-6)


def test_an_unreadable_image_is_evaluated_black_with_a_warning_or_stops_a_strict_read(tmp_path):
    stripes(60, 20).save(tmp_path / "good.png")
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    cfg = load_config(overrides=[f"data.source={tmp_path}", "data.stream=on", "data.size=8", "train.workers=1"])
    views = streamed_source(cfg, str(tmp_path)).samples
    cut = [p.endswith("cut.jpg") for p in views.streamed.paths].index(True)
    with pytest.warns(UserWarning, match="unreadable image .*cut.jpg.*evaluated as black images"):
        batch = torch.cat(list(views.batches(4)))
    assert batch[cut].sum() == 0 and batch[1 - cut].sum() > 0
    with pytest.raises(DataError, match="cannot read image .*cut.jpg"):
        streamed_source(cfg, str(tmp_path), strict=True).samples[:]


def test_a_run_on_a_store_is_evaluated_embedded_and_reported_from_the_store(photos, tmp_path):
    """`selfsup pretrain` (kNN and its baselines), `embed` and `report` on a streamed store: embed writes the
    rows as `Run.embed` gives them, in the store's order, with their paths and labels."""
    _, store = photos
    runs = tmp_path / "runs"
    common = ["--quiet", "--data", str(store), "--runs-dir", str(runs), "--name", "run"]
    done = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", *common, *TINY, "train.steps=2",
                           "train.workers=1", "data.size=12"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_config(runs / "run" / "config.yaml").data.stream == "on"     # evaluation reads it streamed too
    knn = json.loads((runs / "run" / "eval" / "knn.json").read_text())
    assert {"knn_top1", "knn_top1_random_init", "knn_top1_raw"} <= knn.keys() and knn["step"] == 2
    out = tmp_path / "emb.npy"
    done = subprocess.run([sys.executable, "-m", "selfsup", "embed", str(runs / "run"), "--data", str(store),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run = load_run(runs / "run")
    source = ImageSource(store)
    expected = run.embed(streamed_source(run.config, str(store)).samples[:], precision="fp32")
    assert torch.allclose(torch.from_numpy(np.load(out)), expected, atol=1e-5)
    assert Path(f"{out}.paths.txt").read_text().split() == source.paths
    assert np.array_equal(np.load(tmp_path / "emb.labels.npy"), source.labels.numpy())
    done = subprocess.run([sys.executable, "-m", "selfsup", "report", str(runs / "run"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and (runs / "run" / "report.html").is_file(), done.stderr


def test_embeddings_are_written_as_they_come_and_a_failure_keeps_the_older_file(tmp_path):
    out = tmp_path / "emb.npy"
    assert write_rows(out, 5, iter([torch.ones(3, 2), torch.zeros(2, 2)])) == (5, 2)
    assert np.load(out).tolist() == [[1, 1]] * 3 + [[0, 0]] * 2

    def failing():
        yield torch.full((3, 2), 7.0)
        raise RuntimeError("the encoder failed")
    with pytest.raises(RuntimeError, match="the encoder failed"):
        write_rows(out, 5, failing())
    assert np.load(out).tolist() == [[1, 1]] * 3 + [[0, 0]] * 2 and sorted(os.listdir(tmp_path)) == ["emb.npy"]
    with pytest.raises(DataError, match="embedded 3 rows of 5"):
        write_rows(out, 5, iter([torch.ones(3, 2)]))


TWO_NODES = """
import os
import sys
from selfsup.config import load_config
from selfsup.data import stream
from selfsup.train import pretrain

store, runs, log = sys.argv[1:4]
read = stream.StepBatches.__getitem__


def logged(self, step):
    # Runs in the rank's data worker: which node and rank read which images at which step.
    images = self.data.indices[self.positions(step)].tolist()
    with open(f"{log}/rank{self.rank}.txt", "a") as out:
        out.write(f"{os.environ['GROUP_RANK']} {self.world_size} {step} {' '.join(map(str, images))}\\n")
    return read(self, step)


stream.StepBatches.__getitem__ = logged
overrides = sys.argv[4:]
pretrain(load_config(overrides=[f"data.source={store}", *overrides]), f"{runs}/run", progress=False)
"""


def test_two_nodes_of_two_processes_each_stream_their_own_share_and_see_every_image_once(photos, tmp_path):
    """`torchrun --nnodes 2 --node_rank 0|1 --master_addr ... --nproc_per_node 2`, both "machines" on
    localhost: four ranks, one data worker each, train one epoch from the store; every training image
    of the epoch is read exactly once, by one rank, and the two nodes hold ranks 0-1 and 2-3."""
    _, store = photos
    (tmp_path / "log").mkdir()
    (tmp_path / "two_nodes.py").write_text(TWO_NODES)
    train_part = image_parts(ImageSource(store), str(store), load_config().data.val_fraction)["train"]
    steps = len(train_part) // 4                                         # one epoch of global batch 4
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                               "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
                               str(tmp_path / "two_nodes.py"), str(store), str(tmp_path / "runs"), str(tmp_path / "log"),
                               *TINY, "train.batch_size=4", "train.workers=1", f"train.steps={steps}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for node in (0, 1)]
    outcomes = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(err[-3000:] for _, err in outcomes)
    read = {}                                                            # (rank, step) -> images
    for rank in range(4):
        for line in (tmp_path / "log" / f"rank{rank}.txt").read_text().splitlines():
            node, world, step, *images = map(int, line.split())
            assert (node, world) == (rank // 2, 4)
            read[rank, step] = images
    epoch = [(rank, step) for rank in range(4) for step in range(steps)]
    assert set(epoch) <= set(read)                                     # (the workers also read ahead past the end)
    seen = [image for key in epoch for image in read[key]]
    assert len(seen) == len(set(seen)) == steps * 4
    assert set(seen) <= set(train_part.tolist())
    assert (tmp_path / "runs" / "run" / "checkpoints").is_dir()
