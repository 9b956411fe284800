"""Text and tables through the same commands as images: pretrain, evaluate, report, embed, resume.

Each end-to-end run is tiny (a few dozen steps on a synthetic corpus or table); what the methods
learn is checked in test_text.py and test_tabular.py, and on real data in the slow tests at the end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from selfsup.cli import main
from selfsup.config import ConfigError, load_config
from selfsup.data.fetch import find
from selfsup.data.holdout import index_position
from selfsup.modalities import text_part
from selfsup.run import load_run
from selfsup.text import EOS, generate

from small_data import write_corpus, write_table

FAST = ["train.threads=1", "train.log_every=5", "eval.online_every=0", "eval.report=false",
        "eval.after_pretrain=[]"]


def test_text_run_end_to_end(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    runs = tmp_path / "runs"
    assert main(["pretrain", "--method", "simcse", "--data", str(corpus), "--runs-dir", str(runs), "--name", "t",
                 "--quiet", "text.field=body", "text.label_field=topic", "text.max_length=48", "train.steps=20",
                 "train.batch_size=32", "backbone.dim=32", "backbone.heads=2", *FAST]) == 0
    out = capsys.readouterr().out
    run = runs / "t"
    cfg = load_config(run / "config.yaml")
    assert cfg.modality == "text" and cfg.text.vocab_size == 260 and (run / "tokenizer.json").is_file()
    assert "bag of words" in out and "pretrained backbone" in out
    held_out = [i for i in range(120) if text_part(cfg, i) == "test"]
    training = [i for i in range(120) if text_part(cfg, i) == "train"]
    from selfsup.build import load_training_data
    # Pretraining sees neither the test share nor the validation share.
    assert len(load_training_data(cfg, run)) == len(training) < 120 - len(held_out)
    for protocol in ("linear", "raw", "finetune"):
        extra = ["--steps", "5", "--batch-size", "16"] if protocol == "finetune" else []
        assert main(["evaluate", protocol, str(run), "--labels", "50%", "--quiet", *extra]) == 0
    rows = [json.loads(line) for line in (run / "eval" / "results.jsonl").read_text().splitlines()]
    assert [r["protocol"] for r in rows] == ["linear", "raw", "finetune"]
    assert (rows[2]["settings"]["lr"], rows[2]["settings"]["backbone_lr_scale"]) == (0.002, 0.1)  # text's defaults
    assert all(r["test_size"] == len(held_out) and r["num_labels"] == len(training) // 2 for r in rows)
    assert rows[1]["mean"] > 0.9            # the two topics share no words: bag of words separates them
    assert main(["report", str(run), "--quiet"]) == 0
    page = (run / "report.html").read_text()
    assert "Retrieval" in page and "markets" in page
    emb = tmp_path / "emb.npy"
    assert main(["embed", str(run), "--data", str(corpus), "--out", str(emb)]) == 0
    assert np.load(emb).shape == (120, 32)


def test_clm_on_a_folder_packs_the_corpus_generates_and_resumes(tmp_path, capsys):
    folder = tmp_path / "speeches"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(" ".join(["we the people of the united states"] * (20 + i)))
    runs = tmp_path / "runs"
    common = ["--runs-dir", str(runs), "--name", "lm", "--quiet", "text.max_length=32", "train.batch_size=16",
              "backbone.dim=32", "backbone.heads=2", *FAST]
    assert main(["pretrain", "--modality", "text", "--method", "clm", "--data", str(folder), *common,
                 "train.steps=6"]) == 0
    run = runs / "lm"
    cfg = load_config(run / "config.yaml")
    assert cfg.backbone.name == "gpt"
    # Packed: the corpus is one token stream cut into windows, so there are about (bytes / 32) samples.
    # Packed: the training documents (not the held-out ones) are one token stream (bytes + EOS each) cut
    # into windows of 32.
    kept = [p for i, p in enumerate(sorted(folder.iterdir())) if text_part(cfg, i) == "train"]
    assert 0 < len(kept) < 6
    from selfsup.build import load_training_data
    assert len(load_training_data(cfg, run)) == sum(len(p.read_bytes()) + 1 for p in kept) // 32
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--quiet", "train.steps=12", *FAST]) == 0
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 12
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "we the", "--tokens", "20", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "we the", "--tokens", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first
    # the command's continuation is the library's, read after the token packed training put before documents
    loaded = load_run(run)
    continuation = generate(loaded.method, loaded.modality.tokenizer(loaded.config, run), "we the",
                            max_new_tokens=20, seed=1, start_token=EOS)
    assert first == "we the" + continuation + "\n" and len(continuation) > 0
    assert main(["evaluate", "perplexity", str(run)]) == 0
    result = json.loads((run / "eval" / "perplexity.json").read_text())
    assert result["perplexity"] < 260                     # below a uniform guess over the byte vocabulary


def test_tabular_run_end_to_end(tmp_path, capsys):
    table = write_table(tmp_path / "table.csv")
    runs = tmp_path / "runs"
    assert main(["pretrain", "--method", "scarf", "--data", str(table), "--runs-dir", str(runs), "--name", "tab",
                 "--quiet", "table.label_column=label", "train.steps=30", "train.batch_size=32",
                 "backbone.dim=32", *FAST]) == 0
    run = runs / "tab"
    cfg = load_config(run / "config.yaml")
    assert cfg.modality == "tabular" and (run / "table.json").is_file()
    # x1, x2, noise numeric; colour categorical (3 colours + the missing/unknown slot); label never a feature.
    assert cfg.table.numeric_features == 3 and cfg.table.cardinalities == [4]
    knn = json.loads((run / "eval" / "knn.json").read_text())
    assert knn["raw_features"] == "raw columns" and knn["knn_top1_raw"] > 0.9
    for protocol in ("linear", "raw", "supervised"):
        extra = ["--steps", "10", "--batch-size", "32"] if protocol == "supervised" else []
        assert main(["evaluate", protocol, str(run), "--labels", "10/class", "--seeds", "2", "--quiet",
                     *extra]) == 0
    rows = [json.loads(line) for line in (run / "eval" / "results.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in rows} == {"linear", "raw", "supervised"}
    assert all(r["num_labels"] == 30 and r["seeds"] == 2 for r in rows)
    assert main(["report", str(run), "--quiet"]) == 0
    assert "Label efficiency" in (run / "report.html").read_text()


def test_held_out_documents_are_a_fixed_share_of_any_stream():
    first = [i for i in range(20000) if index_position(i) < 0.2]
    assert abs(len(first) / 20000 - 0.2) < 0.01
    assert first == [i for i in range(20000) if index_position(i) < 0.2]
    assert set(i for i in range(20000) if index_position(i) < 0.05) < set(first)   # a smaller share is a subset


def test_a_method_of_another_modality_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="for text choose one of: bart, clm, mlm, simcse, t5"):
        load_config(overrides=["method.name=simclr", "data.modality=text"])


def test_text_without_a_source_says_what_to_pass(tmp_path, capsys):
    assert main(["pretrain", "--method", "clm", "--runs-dir", str(tmp_path), "--quiet", *FAST]) == 2
    assert "pass --data with a folder of .txt files" in capsys.readouterr().err


def test_mlm_refuses_a_causal_backbone(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl")
    code = main(["pretrain", "--method", "mlm", "--data", str(corpus), "--runs-dir", str(tmp_path), "--quiet",
                 "text.field=body", "backbone.name=gpt", "train.batch_size=16", *FAST])
    assert code == 2 and "bidirectional" in capsys.readouterr().err


@pytest.mark.slow
def test_real_spam_subset_end_to_end(tmp_path):
    """The real SpamAssassin bodies (fetched by `selfsup data fetch spam-assassin`): a short SimCSE run
    and the bag-of-words baseline on a subset."""
    source = find("spam-assassin")
    if source is None:
        pytest.skip("spam-assassin not fetched (selfsup data fetch spam-assassin)")
    subset = tmp_path / "spam.jsonl"
    lines = source.read_text().splitlines()
    subset.write_text("\n".join(lines[::12]) + "\n")           # ~500 emails, both classes
    runs = tmp_path / "runs"
    assert main(["pretrain", "--method", "simcse", "--data", str(subset), "--runs-dir", str(runs), "--name", "s",
                 "--quiet", "text.label_field=label", "train.steps=10", "train.batch_size=32",
                 "backbone.dim=32", "backbone.heads=2", "text.max_length=64", *FAST]) == 0
    # The bag-of-words baseline as kNN, from the evaluation pretraining ends with (the linear probe on it,
    # `evaluate raw`, is tested on small text above and takes two minutes on these 30,000-word vectors).
    knn = json.loads((runs / "s" / "eval" / "knn.json").read_text())
    assert knn["raw_features"] == "bag of words" and knn["knn_top1_raw"] > 0.8


@pytest.mark.slow
def test_real_letter_recognition_subset_end_to_end(tmp_path):
    source = find("letter-recognition")
    if source is None:
        pytest.skip("letter-recognition not fetched (selfsup data fetch letter-recognition)")
    subset = tmp_path / "letters.csv"
    lines = source.read_text().splitlines()
    subset.write_text("\n".join(lines[:1] + lines[1::10]) + "\n")     # 2,000 rows
    runs = tmp_path / "runs"
    assert main(["pretrain", "--method", "scarf", "--data", str(subset), "--runs-dir", str(runs), "--name", "l",
                 "--quiet", "table.label_column=lettr", "train.steps=20", "train.batch_size=64", *FAST]) == 0
    knn = json.loads((runs / "l" / "eval" / "knn.json").read_text())
    assert knn["knn_top1"] > 1 / 26 * 3 and knn["test_size"] == 400
