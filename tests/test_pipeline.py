"""selfsup.pretrain_and_evaluate is what `selfsup pretrain` runs: a Python user gets the same run folder."""
import json

import selfsup
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.run_folder import RunFolder

TINY = ["backbone.width=0.125", "train.batch_size=50", "train.steps=4", "train.threads=1", "eval.knn_k=20",
        "eval.online_every=0", "eval.after_pretrain=[knn]", "eval.labels=[5/class]"]


def run_files(folder: RunFolder) -> set[str]:
    """The run folder's files, less the cached features, whose names carry a digest of the samples."""
    return {str(p.relative_to(folder.path)) for p in folder.path.rglob("*") if p.is_file()
            and folder.features_dir not in p.parents}


def test_the_library_call_writes_what_the_command_writes(tiny_fashion, tmp_path, capsys):
    assert main(["pretrain", "--quiet", "--runs-dir", str(tmp_path), "--name", "cli", "--data-dir", str(tiny_fashion),
                 *TINY]) == 0
    cfg = load_config(overrides=[f"data.data_dir={tiny_fashion}", *TINY])
    result = selfsup.pretrain_and_evaluate(cfg, tmp_path / "library", progress=False)
    cli, library = RunFolder(tmp_path / "cli"), RunFolder(tmp_path / "library")
    assert run_files(cli) == run_files(library)
    assert {"train_summary.json", "eval/knn.json", "eval/results.jsonl", "report.html"} <= run_files(library)
    assert library.read_summary() == result.summary and result.summary["steps"] == result.training.steps == 4
    assert json.loads(library.eval_file("knn").read_text()) == result.knn and result.knn["step"] == 4
    # Same seed, same data: the same weights, so the same scores.
    assert cli.read_eval("knn")["knn_top1"] == library.read_eval("knn")["knn_top1"]
    assert [r["top1"] for r in cli.read_results()] == [r["top1"] for r in library.read_results()]
    assert result.report == library.report_page


def test_evaluate_false_trains_and_summarises_only(tiny_fashion, tmp_path, capsys):
    cfg = load_config(overrides=[f"data.data_dir={tiny_fashion}", *TINY])
    result = selfsup.pretrain_and_evaluate(cfg, tmp_path / "run", progress=False, evaluate=False)
    folder = RunFolder(tmp_path / "run")
    assert folder.read_summary() == result.summary and result.knn is None and result.report is None
    assert not folder.eval_dir.exists() and not folder.report_page.exists()
