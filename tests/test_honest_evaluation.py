"""Honest numbers: the validation part is carved from the training data and chooses everything, the
test part gives final figures only, and no held-out sample of any source enters pretraining."""
import gzip
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_tiny_fashion
from resume import model_tensors
from selfsup.checkpoint import read_pointer
from selfsup.config import ConfigError, load_config
from selfsup.data import load_images
from selfsup.data.holdout import carve_validation, part_of, path_position
from selfsup.evaluate.datasets import labelled_eval_sets
from selfsup.modalities.image import image_parts
from selfsup.evaluate.finetune import FinetuneSettings
from selfsup.evaluate.protocols import evaluate_protocol
from selfsup.modalities import text_part
from selfsup.run import load_run
from selfsup.build import load_training_data
from selfsup.train import pretrain
from small_data import write_corpus, write_table

SMALL = ["backbone.width=0.125", "train.batch_size=32", "train.precision=fp32", "optim.warmup_epochs=0",
         "eval.batch_size=256"]


def test_parts_are_bands_of_the_hash_and_a_validation_draw_is_fixed():
    assert [part_of(p, 0.2, 0.1) for p in (0.0, 0.19, 0.2, 0.29, 0.31, 0.99)] == \
        ["test", "test", "val", "val", "train", "train"]
    assert path_position("cat/1.png") == path_position("cat\\1.png") != path_position("cat/2.png")
    positions = [path_position(f"c/{i}.jpg") for i in range(4000)]
    assert abs(np.mean([p < 0.2 for p in positions]) - 0.2) < 0.02       # the shares hold on many files
    train, val = carve_validation(torch.arange(100), 30)
    assert len(val) == 30 and len(train) == 70 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(carve_validation(torch.arange(100), 30)[1], val)
    with pytest.raises(ValueError, match="cannot hold 100 of 100"):
        carve_validation(torch.arange(100), 100)


def test_a_built_in_set_pretrains_without_its_validation_images(tiny_fashion):
    cfg = load_config(overrides=[f"data.data_dir={tiny_fashion}"])
    training = load_training_data(cfg)
    train, val = labelled_eval_sets(cfg, part="val")
    _, test = labelled_eval_sets(cfg, part="test")
    assert len(training) == len(train) == 360 and len(val) == 40 and len(test) == 100    # 10% of 400 validate
    assert torch.equal(training.images, train.images)
    every = {bytes(x.numpy()) for x in load_images("fashion-mnist", data_dir=str(tiny_fashion)).images}
    assert {bytes(x.numpy()) for x in val.images} <= every and not \
        {bytes(x.numpy()) for x in val.images} & {bytes(x.numpy()) for x in training.images}
    assert image_parts(load_images("fashion-mnist", data_dir=str(tiny_fashion)), "fashion-mnist", 0.5)["val"].numel() \
        == 200
    sixty_thousand = type(train)(torch.zeros(60000, 1, 1, 1, dtype=torch.uint8))
    assert image_parts(sixty_thousand, "fashion-mnist", 0.1)["val"].numel() == 5000     # its stated count, not 10%


def _write_folder(root, classes=("a", "b"), per_class=40):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), 40 * c + i).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_never_pretrains_on_its_held_out_files(tmp_path):
    folder = _write_folder(tmp_path / "photos")
    cfg = load_config(overrides=[f"data.source={folder}", "data.size=8", "data.channels=1"])
    training = load_training_data(cfg)
    train, val = labelled_eval_sets(cfg, part="val")
    _, test = labelled_eval_sets(cfg, part="test")
    assert len(training) + len(val) + len(test) == 80 and len(val) > 0 and len(test) > 0
    assert set(training.paths) == set(train.paths)
    assert not set(training.paths) & (set(val.paths) | set(test.paths))
    assert not set(val.paths) & set(test.paths)
    # A folder that cannot be evaluated (images at its top level) keeps every image for pretraining.
    for i in range(3):
        Image.new("L", (8, 8), i).save(folder / f"loose{i}.png")
    assert len(load_training_data(cfg)) == 83


def test_text_and_tables_hold_their_validation_and_test_shares_out(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", n=200)
    cfg = load_config(overrides=["method.name=mlm", f"data.source={corpus}", "text.field=body",
                                 "text.label_field=topic", "text.pack=off", "text.max_length=32"])
    training = load_training_data(cfg)
    parts = [text_part(cfg, i) for i in range(200)]
    assert len(training) == parts.count("train") and parts.count("val") > 10 and parts.count("test") > 30
    texts = [json.loads(line)["body"] for line in corpus.read_text().splitlines()]
    assert training.texts == [t for t, p in zip(texts, parts) if p == "train"]

    table = write_table(tmp_path / "t.csv", n=200)
    cfg = load_config(overrides=["method.name=scarf", f"data.source={table}", "table.label_column=label"])
    rows = load_training_data(cfg)
    train, val = labelled_eval_sets(cfg, part="val")
    _, test = labelled_eval_sets(cfg, part="test")
    assert len(rows) == len(train) == 200 - 20 - 40 and (len(val), len(test)) == (20, 40)
    with pytest.raises(ConfigError, match="must stay below 1"):
        load_config(overrides=["table.test_fraction=0.8", "data.val_fraction=0.3"])


def test_held_out_perplexity_knows_the_training_corpus_by_any_name(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", n=60)
    os.symlink(corpus, tmp_path / "link.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "cache"))
    cfg = load_config(overrides=["method.name=clm", "data.source=corpus.jsonl", "text.field=body",
                                 "text.max_length=16"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from selfsup.modalities import TextModality
    text = TextModality()
    text.save_assets(load_training_data(cfg), run_dir)
    held_out = text.held_out_text(cfg, run_dir)
    for name in (str(corpus), "link.jsonl", "./corpus.jsonl"):
        assert torch.equal(text.held_out_text(cfg, run_dir, name).samples, held_out.samples), name
    assert 0 < len(held_out) < len(load_training_data(cfg))


def _shuffle_test_labels(folder):
    """The same fake Fashion-MNIST with its test labels permuted."""
    path = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    labels = np.frombuffer(bytes(raw[8:]), dtype=np.uint8)
    raw[8:] = np.random.default_rng(1).permutation(labels).tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def _pretrain_and_choose(data_dir, run_dir):
    """Everything that is chosen: pretraining with online kNN and the best checkpoint, the linear
    probe's weight decays, a fine-tuning search; and the final test figures."""
    cfg = load_config(overrides=SMALL + [f"data.data_dir={data_dir}", "train.steps=8", "eval.online_every=0.3",
                                         "eval.online_train=200", "eval.online_test=40"])
    pretrain(cfg, run_dir, progress=False)
    run = load_run(run_dir)
    train, test = run.labelled_sets()
    val = run.labelled_sets(part="val")[1]
    quiet = dict(progress=False, log=lambda text: None)
    linear = evaluate_protocol(run, "linear", train, test, ["10%"], 2, **quiet)[0]
    search = {"lr": [1e-3, 1e-2], "weight_decay": [0.05]}
    tuned = evaluate_protocol(run, "finetune", train, test, ["5/class"], 1, val=val, search=search,
                              settings=FinetuneSettings(steps=3, epochs=0, batch_size=16), **quiet)[0]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    online = [(m["step"], m["online_knn_top1"]) for m in metrics if "online_knn_top1" in m]
    chosen = {"weights": model_tensors(run_dir), "online": online,
              "best": read_pointer(run_dir / "checkpoints", "best").name,
              "linear_weight_decays": [d["weight_decay"] for d in linear["per_seed"]],
              "search": tuned["search"], "finetune_settings": tuned["settings"]}
    final = {"linear": linear["top1"], "finetune": tuned["top1"]}
    return chosen, final


def test_shuffled_test_labels_change_no_choice_only_the_final_figures(tmp_path):
    honest = write_tiny_fashion(tmp_path / "honest")
    shuffled = tmp_path / "shuffled"
    shutil.copytree(honest, shuffled)
    _shuffle_test_labels(shuffled)
    chosen, final = _pretrain_and_choose(honest, tmp_path / "a")
    chosen_shuffled, final_shuffled = _pretrain_and_choose(shuffled, tmp_path / "b")
    assert chosen["online"] and len(chosen["search"]["trials"]) == 2
    assert chosen.keys() == chosen_shuffled.keys()
    for key in chosen:
        if key == "weights":
            assert all(torch.equal(v, chosen_shuffled[key][k]) for k, v in chosen[key].items())
        else:
            assert chosen[key] == chosen_shuffled[key], key
    # The test labels did reach the final figures: the shuffle drops them towards chance.
    assert final["linear"] != final_shuffled["linear"] and min(final_shuffled["linear"]) < 0.5 < min(final["linear"])
