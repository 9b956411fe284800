"""Few-label evaluation from the command line on a real (tiny) run, transfer to another data set,
and the report: written at the end of pretraining, and rendered without errors in headless Chromium."""
import json
import os
import shutil
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import write_tiny_fashion
from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.data import load_images
from selfsup.evaluate import features, protocols
from selfsup.evaluate.features import AVERAGED_MAPS
from selfsup.evaluate.protocols import check_features, read_results
from selfsup.report.plots import label_efficiency
from selfsup.modalities.image import image_parts
from selfsup.evaluate.splits import balanced_subset
from selfsup.run import Run, split_labelled

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TINY = ["--quiet", "backbone.width=0.125", "train.batch_size=50", "train.steps=8", "train.threads=1",
        "eval.knn_k=20", "eval.online_every=0.5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = write_tiny_fashion(tmp_path_factory.mktemp("data") / "fmnist")
    runs = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "--runs-dir", str(runs), "--name", "r", "--data-dir", str(data), *TINY,
                 "eval.labels=[5/class,20/class]"]) == 0
    return runs / "r"


def copy_of(run_dir, tmp_path):
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def stripes_folder(root, size=32):
    """An RGB image folder with two classes a linear probe can tell apart: horizontal and vertical stripes."""
    for cls in ("horizontal", "vertical"):
        (root / cls).mkdir(parents=True)
        for i in range(30):
            img = Image.new("RGB", (size, size), (20, 20 + i, 20))
            for k in range(0, size, 6):
                box = (0, k, size, k + 2) if cls == "horizontal" else (k, 0, k + 2, size)
                img.paste((230, 200, 60), box)
            img.save(root / cls / f"{i}.png")
    return root


def test_pretrain_ends_with_few_label_results_online_measures_and_a_report(tiny_run, capsys):
    rows = read_results(tiny_run)
    assert [(r["protocol"], r["labels"], r["num_labels"]) for r in rows] == [
        ("knn", "5/class", 50), ("knn", "20/class", 200), ("linear", "5/class", 50), ("linear", "20/class", 200)]
    assert all(0.3 < r["mean"] <= 1.0 for r in rows)              # separable classes: far above chance (0.1)
    online = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()
              if "rankme" in line]
    assert [r["step"] for r in online] == [4, 8]
    assert all(1.0 <= r["rankme"] <= 64 and r["std"] > 0 and "alignment" in r and "uniformity" in r for r in online)
    assert (tiny_run / "report.html").is_file()
    for figure in ("training", "online", "label_efficiency", "embedding_map", "retrieval", "views", "explanations"):
        assert (tiny_run / "report" / f"{figure}.png").stat().st_size > 1000, figure


def test_evaluate_over_budgets_and_seeds_reports_mean_and_std(tiny_run, tmp_path, capsys):
    run_dir = copy_of(tiny_run, tmp_path)
    assert main(["evaluate", "linear", str(run_dir), "--labels", "2/class", "10%", "--seeds", "3", "--quiet"]) == 0
    rows = read_results(run_dir)[-2:]
    assert [(r["labels"], r["num_labels"], r["seeds"], len(r["top1"])) for r in rows] == [
        ("2/class", 20, 3, 3), ("10%", 36, 3, 3)]      # 10% of the 360 training images (40 validate)
    for r in rows:
        mean = sum(r["top1"]) / 3
        assert r["mean"] == pytest.approx(mean)
        assert r["std"] == pytest.approx((sum((t - mean) ** 2 for t in r["top1"]) / 2) ** 0.5)
        assert len(r["per_seed"]) == 3 and all("weight_decay" in d for d in r["per_seed"])
    assert "linear with   2/class labels (20 images, 3 seed(s))" in capsys.readouterr().out


def test_evaluate_propagate_from_the_command_line(tiny_run, tmp_path, capsys):
    run_dir = copy_of(tiny_run, tmp_path)
    assert main(["evaluate", "propagate", str(run_dir), "--labels", "5/class", "100%", "--seeds", "2", "--quiet"]) == 0
    row, chosen, every_label, every_label_chosen = read_results(run_dir)[-4:]
    assert every_label["per_seed"] == [{"propagated_top1": None}] * 2      # nothing left to propagate to
    assert (row["protocol"], row["num_labels"], row["seeds"]) == ("propagate", 50, 2)
    # Settings fixed in advance, and settings cross-validated inside each draw's labels: both reported.
    assert (row["settings"]["choice"], row["settings"]["graph_neighbours"]) == ("fixed", 50)
    assert chosen["settings"]["choice"] == every_label_chosen["settings"]["choice"] == "cross-validated"
    # Separable classes: the labels spread right above chance with either setting, and the chosen setting
    # classifies the test images above chance. The fixed setting's 200 voters are more than half of the
    # 360 training images, so when the 8-step features lie close together its test top-1 follows the class
    # sizes of the spread labels (10% on one machine's numerics): only its spread is checked.
    for result in (row, chosen):
        assert all(0.3 < d["propagated_top1"] <= 1.0 for d in result["per_seed"])
    assert 0.3 < chosen["mean"] <= 1.0 and 0 <= row["mean"] <= 1.0
    assert all(d["chosen"]["alpha"] in (0.9, 0.99) and 0 < d["cv_top1"] <= 1 for d in chosen["per_seed"])
    out = capsys.readouterr().out
    assert "propagate (fixed) with   5/class labels (50 images, 2 seed(s))" in out
    assert "propagate (cross-validated) with   5/class labels" in out


def test_knn_sweep_reuses_the_cached_features(tiny_run, tmp_path, monkeypatch):
    run_dir = copy_of(tiny_run, tmp_path)
    assert list((run_dir / "eval" / "features").glob("*.safetensors"))      # written by pretrain's evaluation

    def no_extraction(*args, **kwargs):
        raise AssertionError("features should come from the cache")
    monkeypatch.setattr(Run, "embed", no_extraction)
    assert main(["evaluate", "knn", str(run_dir), "--k", "5", "20", "--labels", "10/class", "--quiet"]) == 0
    rows = read_results(run_dir)[-2:]
    assert [(r["settings"]["k"], r["num_labels"]) for r in rows] == [(5, 100), (20, 100)]


def test_finetune_and_the_supervised_baseline_on_the_same_labels(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    assert main(["evaluate", "finetune", str(run_dir), "--labels", "5/class", "--steps", "4", "--batch-size", "25",
                 "--baseline", "--quiet"]) == 0
    finetuned, supervised = read_results(run_dir)[-2:]
    assert (finetuned["protocol"], supervised["protocol"]) == ("finetune", "supervised")
    assert finetuned["num_labels"] == supervised["num_labels"] == 50
    assert finetuned["settings"]["steps"] == supervised["settings"]["steps"] == 4
    # The image defaults: the whole network at the head's rate, each protocol at the rate its validation
    # search chose (docs/evaluation.md).
    assert [(r["settings"]["lr"], r["settings"]["backbone_lr_scale"], r["settings"]["weight_decay"])
            for r in (finetuned, supervised)] == [(0.008, 1.0, 0.5), (0.016, 1.0, 0.05)]
    assert main(["evaluate", "finetune", str(run_dir), "--labels", "5/class", "--steps", "2", "--batch-size", "25",
                 "--lr", "0.001", "--backbone-lr-scale", "0.5", "--weight-decay", "0.2", "--quiet"]) == 0
    given = read_results(run_dir)[-1]["settings"]
    assert (given["lr"], given["backbone_lr_scale"], given["weight_decay"], given["steps"]) == (
        0.001, 0.5, 0.2, 2)                                                             # what the user asks wins


def test_selftrain_from_the_command_line_records_both_fine_tunes(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    assert main(["evaluate", "selftrain", str(run_dir), "--labels", "5/class", "--steps", "2", "--batch-size", "25",
                 "--weight-decay", "0.2", "--quiet"]) == 0
    row = read_results(run_dir)[-1]
    assert (row["protocol"], row["num_labels"], row["settings"]["steps"]) == ("selftrain", 50, 2)
    assert row["settings"]["weight_decay"] == 0.2          # a fine-tuning search's choice can be reused
    detail = row["per_seed"][0]
    assert 0 <= detail["first_top1"] <= 1 and 0 <= detail["propagated_top1"] <= 1


def test_the_recipe_screen_scores_a_finished_run_at_another_size_on_validation_and_writes_nothing(
        tiny_run, tmp_path, monkeypatch, capsys):
    """benchmarks/recipe.py --run-dir: the evaluation-size screen re-scores a run without training it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import recipe
    run_dir = copy_of(tiny_run, tmp_path)
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")}
    embedded_sides = []
    embed = Run.embed
    monkeypatch.setattr(Run, "embed", lambda self, samples, *args, **kwargs: (
        embedded_sides.append(self.config.augment.eval_size), embed(self, samples, *args, **kwargs))[1])
    monkeypatch.setattr("sys.argv", ["recipe.py", "again", "--run-dir", str(run_dir), "--eval-size", "20"])
    recipe.main()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["run_dir"], line["eval_size"], line["scored_on"]) == (str(run_dir), 20, "val")
    assert "train_s" not in line and 0 <= line["knn_top1"] <= 1
    assert embedded_sides and set(embedded_sides) == {20}
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")} == before
    monkeypatch.setattr("sys.argv", ["recipe.py", "again", "--run-dir", str(run_dir), "optim.lr=4"])
    with pytest.raises(SystemExit):
        recipe.main()
    assert "KEY=VALUE overrides need a new run" in capsys.readouterr().err


def test_bad_label_budget_is_refused_before_any_work(tiny_run, capsys):
    assert main(["evaluate", "linear", str(tiny_run), "--labels", "5x"]) == 2
    assert "give a percentage (1%, 10%, 100%)" in capsys.readouterr().err


def test_transfer_to_an_rgb_folder_of_another_size(tiny_run, tmp_path, capsys):
    """The encoder pretrained on 28x28 grayscale is evaluated on 32x32 RGB images: they are read at the
    run's size and channel count, the folder is split by the hash of each file's path (about 20% test,
    10% validation), and the probe tells the classes apart."""
    run_dir = copy_of(tiny_run, tmp_path)
    folder = stripes_folder(tmp_path / "stripes")
    assert main(["evaluate", "linear", str(run_dir), "--data", str(folder), "--quiet"]) == 0
    row = read_results(run_dir)[-1]
    parts = image_parts(load_images(str(folder), labels=True), str(folder), 0.1)
    assert row["data"] == str(folder) and row["num_labels"] == len(parts["train"]) and row["test_size"] == len(parts["test"])
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == 60 and len(parts["test"]) > 5
    assert row["mean"] >= 0.9


def test_few_label_draws_never_touch_the_test_split(tmp_path):
    folder = stripes_folder(tmp_path / "stripes")
    full = load_images(str(folder), labels=True, channels=1, size=28)
    train, test = split_labelled(full)
    assert len(train.paths) == len(train) and len(test.paths) == len(test) == 12
    assert set(train.paths).isdisjoint(test.paths) and set(train.paths) | set(test.paths) == set(full.paths)
    drawn = {train.paths[i] for i in balanced_subset(train.labels, 10, seed=0).tolist()}
    assert len(drawn) == 10 and drawn.isdisjoint(test.paths)


def test_report_of_a_run_on_unlabelled_images(tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(40):
        Image.new("L", (20, 20), 6 * i).save(folder / f"{i}.png")
    assert main(["pretrain", "--runs-dir", str(tmp_path / "runs"), "--name", "u", "--data", str(folder),
                 *TINY, "data.size=16", "train.batch_size=8"]) == 0
    out = capsys.readouterr()
    assert "report:" in out.out and "label-free measures only" in out.err
    assert (tmp_path / "runs" / "u" / "report" / "embedding_map.png").is_file()


def chromium_paths():
    found = [shutil.which(name) for name in ("chromium", "chromium-browser", "chromedriver")]
    browser, driver = found[0] or found[1], found[2]
    if not (browser and driver):
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and chromium-driver (scripts/setup.sh --dev installs them)")
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    return browser, driver


def test_report_renders_in_headless_chromium_with_every_image_and_no_errors(tiny_run):
    browser, driver_path = chromium_paths()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get((tiny_run / "report.html").resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "report.png"))
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    finally:
        driver.quit()
    assert len(images) == 7 and all(complete and width > 0 for _, complete, width in images), images
    assert errors == []
    assert {"Label efficiency", "What the encoder looks at", "Evaluations", "Config"} <= set(headings)


def test_the_linear_probe_is_standardised_on_every_training_image(tiny_run, tmp_path, monkeypatch):
    run_dir = copy_of(tiny_run, tmp_path)
    scales, real_probe = [], protocols.linear_probe
    monkeypatch.setattr(protocols, "linear_probe",
                        lambda *a, scale=None, **k: scales.append(scale) or real_probe(*a, scale=scale, **k))
    assert main(["evaluate", "linear", str(run_dir), "--labels", "2/class", "--seeds", "2", "--quiet"]) == 0
    [train_file] = (run_dir / "eval" / "features").glob("*train*")
    every_image = load_file(train_file)["features"]
    assert len(scales) == 2 and scales[1] is scales[0]              # computed once for every draw
    assert torch.allclose(scales[0][0], every_image.mean(0))
    assert torch.allclose(scales[0][1], every_image.std(0).clamp_min(1e-6))      # dead features: the floor
    assert read_results(run_dir)[-1]["settings"]["standardised_on"] == "every training image"


def test_linear_probe_with_augmented_copies(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    assert main(["evaluate", "linear", str(run_dir), "--labels", "5/class", "--augment", "2", "--quiet"]) == 0
    row = read_results(run_dir)[-1]
    assert row["settings"]["augment_copies"] == 2 and row["num_labels"] == 50 and 0.3 < row["mean"] <= 1.0


def test_linear_probe_on_feature_maps_caches_them_in_half_precision(tiny_run, tmp_path, monkeypatch):
    run_dir = copy_of(tiny_run, tmp_path)
    command = ["evaluate", "linear", str(run_dir), "--labels", "5/class", "--features", "map", "--quiet"]
    assert main(command) == 0
    first = read_results(run_dir)[-1]
    assert first["settings"]["features"] == "map" and 0.3 < first["mean"] <= 1.0
    cached = sorted((run_dir / "eval" / "features").glob("*map*"))
    assert len(cached) == 2 and all(load_file(path)["features"].dtype == torch.float16 for path in cached)
    real_embed, embedded = Run.embed, []
    monkeypatch.setattr(Run, "embed", lambda *a, **k: embedded.append(k["kind"]) or real_embed(*a, **k))
    assert main(command) == 0
    assert embedded == [] and read_results(run_dir)[-1]["top1"] == first["top1"]      # the cache was reused
    monkeypatch.setitem(features.MAP_LAYOUTS, "map", (-2,))    # other stages: their own features, not the cached ones
    assert main(command) == 0
    assert embedded == ["map", "map"]


def test_auto_features_keep_the_probe_that_cross_validates_better_inside_the_labels(tiny_run, tmp_path):
    run_dir = copy_of(tiny_run, tmp_path)
    kinds = ("pooled", "map", "map-late", "map-all")
    for kind in (*kinds, AVERAGED_MAPS, "auto"):
        assert main(["evaluate", "linear", str(run_dir), "--labels", "5/class", "--seeds", "2", "--features", kind,
                     "--quiet"]) == 0
    *single, averaged, auto = read_results(run_dir)[-6:]
    by_kind = dict(zip(kinds, single))
    assert averaged["settings"]["features"] == AVERAGED_MAPS
    assert auto["settings"]["features"] == "auto"
    for seed, detail in enumerate(auto["per_seed"]):
        scores = detail["cross_validated_by_features"]
        single_scores = {kind: score for kind, score in scores.items() if kind != AVERAGED_MAPS}
        assert single_scores == {kind: max(row["per_seed"][seed]["val_top1"].values()) for kind, row in by_kind.items()}
        assert AVERAGED_MAPS in scores                # the map layouts' probes averaged: the fifth candidate
        assert detail["features"] == max(scores, key=scores.get)
        # The averaged probes alone score what auto records for them, and auto's top-1 is its chosen candidate's.
        assert averaged["per_seed"][seed]["features"] == AVERAGED_MAPS
        assert averaged["per_seed"][seed]["cross_validated_by_features"][AVERAGED_MAPS] == scores[AVERAGED_MAPS]
        assert auto["top1"][seed] == {**by_kind, AVERAGED_MAPS: averaged}[detail["features"]]["top1"][seed]


def test_map_features_are_for_the_linear_probe_of_a_convolutional_backbone():
    vit = SimpleNamespace(backbone=build_backbone("vit_tiny", patch_size=4, in_channels=1),
                          config=SimpleNamespace(backbone=SimpleNamespace(name="vit_tiny")))
    with pytest.raises(ValueError, match="vit_tiny has none; use --features pooled"):
        check_features(vit, "linear", "map")
    with pytest.raises(ValueError, match="vit_tiny has none; use --features pooled"):
        check_features(vit, "linear", AVERAGED_MAPS)
    with pytest.raises(ValueError, match="linear probe only"):
        check_features(vit, "knn", "map")
    with pytest.raises(ValueError, match="choose one of: pooled, map"):
        check_features(vit, "linear", "spatial")
    check_features(vit, "linear", "pooled")


def test_the_label_efficiency_curve_keeps_pooled_and_map_probes_apart():
    def row(features, n, mean):
        return {"protocol": "linear", "num_labels": n, "mean": mean, "std": 0.0, "settings": {"features": features}}
    figure = label_efficiency([row("pooled", 60, 0.80), row("map", 60, 0.84), row("pooled", 600, 0.86),
                               row("map", 600, 0.89)], knn_k=200)
    curves = {bars.get_label(): [round(y, 2) for y in bars.lines[0].get_ydata()] for bars in figure.axes[0].containers}
    assert curves == {"linear probe (frozen)": [80.0, 86.0], "linear probe on feature maps (frozen)": [84.0, 89.0]}
