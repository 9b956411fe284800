"""Interaction logs, leave-one-out, full-ranking metrics, the recommendation baselines and the three
sequence pretext tasks (nextitem, maskeditem, cl4srec), each against its formula on small tensors."""
import json
import math
import zipfile

import pytest
import torch
import torch.nn.functional as F

from selfsup.build import build_method, complete_config, load_training_data
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data.fetch import MOVIELENS_FILES, MOVIELENS_MEMBERS, extract_movielens, find
from selfsup.errors import CheckpointError, ConfigError, DataError
from selfsup.export import export_onnx
from selfsup.evaluate.ranking import (item_knn, most_popular, rank_counts, ranking_metrics, ranking_report,
                                      tie_aware_metrics)
from selfsup.interactions.data import ITEM_OFFSET, leave_one_out, read_interactions, windows
from selfsup.methods.cl4srec import item_crop, item_mask, item_reorder
from selfsup.methods.losses import nt_xent
from selfsup.methods.mlm import IGNORE
from selfsup.modalities import modality_of
from selfsup.pipeline import pretrain_and_evaluate
from selfsup.run import load_run
from selfsup.text.tokenizer import MASK, PAD
from selfsup.train import pretrain

from small_data import write_interactions

SMALL = ["interactions.max_length=8", "backbone.dim=16", "backbone.heads=2", "train.batch_size=16",
         "train.precision=fp32", "optim.warmup_epochs=0", "eval.online_every=0", "train.threads=1"]


def config(log, method="nextitem", *extra):
    return load_config(overrides=[f"method.name={method}", f"data.source={log}", *SMALL, *extra])


# ---------------------------------------------------------------- reading a log

def write_log(path, header, rows):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_a_log_becomes_time_ordered_histories_with_string_ids_duplicates_dropped_and_holes_skipped(tmp_path, capsys):
    log = read_interactions(write_log(tmp_path / "a.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float", [
        "bob\tz\t\t30", "bob\tx\t4\t10", "ann\tx\t5\t5", "bob\ty\t3\t20", "bob\ty\t3\t20",    # an exact duplicate
        "ann\t\t3\t7", "bob\tx\t2\t40"]))                         # a row without an item; bob has x again later
    assert log.users == ["ann", "bob"] and log.items == ["x", "y", "z"]
    x, y, z = (ITEM_OFFSET + i for i in range(3))
    assert log.histories == [[x], [x, y, z, x]]
    assert (log.skipped_rows, log.duplicates) == (1, 1)
    assert "skipped 1 row(s) without a user or item and 1 exact duplicate" in capsys.readouterr().err


def test_numeric_ids_sort_by_value_and_without_a_time_column_the_file_order_is_time(tmp_path):
    path = write_log(tmp_path / "a.csv", "user,item", ["1,10", "1,2", "2,10"])
    with pytest.raises(DataError, match="no time column 'timestamp'.*interactions.time_column=''"):
        read_interactions(path, "user", "item")
    log = read_interactions(path, "user", "item", "")
    assert log.items == ["2", "10"] and log.histories[0] == [ITEM_OFFSET + 1, ITEM_OFFSET]


def test_bad_logs_get_errors_that_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no user column 'user_id'; its columns are who, what, when"):
        read_interactions(write_log(tmp_path / "a.csv", "who,what,when", ["1,2,3"]))
    with pytest.raises(DataError, match=r"line 3: the time 'noon' is not a number"):
        read_interactions(write_log(tmp_path / "b.csv", "user_id,item_id,timestamp", ["1,2,3", "1,3,noon"]))
    with pytest.raises(DataError, match="suffix '.txt'"):
        read_interactions(write_log(tmp_path / "c.txt", "user_id,item_id", ["1,2"]))
    (tmp_path / "two").mkdir()
    for name in ("a.inter", "b.inter"):
        write_log(tmp_path / "two" / name, "user_id\titem_id\ttimestamp", ["1\t2\t3"])
    with pytest.raises(DataError, match="holds 2 .inter files, not one"):
        read_interactions(tmp_path / "two")


def test_leave_one_out_holds_out_the_last_two_items_and_short_users_only_train(tmp_path):
    log = read_interactions(write_log(tmp_path / "a.csv", "user_id,item_id,timestamp",
                                      [f"a,{i},{i}" for i in range(6)] + ["b,0,1", "b,1,2"]))
    split = leave_one_out(log, max_length=3)
    t = [ITEM_OFFSET + i for i in range(6)]
    assert split.train_histories == [t[:4], t[:2]] and (split.scored_users, split.unscored_users) == (1, 1)
    assert split.val.targets.tolist() == [t[4]] and split.val.histories.tolist() == [t[1:4]]
    assert split.test.targets.tolist() == [t[5]] and split.test.histories.tolist() == [t[2:5]]
    assert split.test.seen[0].tolist() == t[:5] and split.test.history_lengths.tolist() == [5]
    # Training rows: windows of max_length from the newest item back, a lone oldest item dropped.
    assert windows(list(range(7)), 3) == [[4, 5, 6], [1, 2, 3]]
    assert split.training_rows().tolist() == [[t[1], t[2], t[3]], [t[0], t[1], PAD]]


# ---------------------------------------------------------------- ranking metrics

def test_metrics_follow_their_formulas_and_ties_count_in_expectation():
    one = tie_aware_metrics(torch.tensor([2]), torch.tensor([1]), k=10)        # rank 3
    assert one["hr"].item() == 1 and one["ndcg"].item() == pytest.approx(1 / math.log2(4))
    assert one["mrr"].item() == pytest.approx(1 / 3)
    tied = tie_aware_metrics(torch.tensor([9]), torch.tensor([2]), k=10)      # rank 10 or 11
    assert tied["hr"].item() == pytest.approx(0.5)
    assert tied["ndcg"].item() == pytest.approx(0.5 / math.log2(11))
    assert tied["mrr"].item() == pytest.approx((1 / 10 + 1 / 11) / 2)


def test_items_the_user_had_are_not_ranked_but_a_repeated_target_is():
    scores = torch.tensor([[9.0, 9, 9, 9, 5, 4, 3, 2]])        # tokens 0-3 are specials, never ranked
    greater, equal = rank_counts(scores, torch.tensor([6]), [torch.tensor([4])])
    assert (greater.item(), equal.item()) == (1, 1)             # item 4 (seen) is out; 5 is above 6
    greater, _ = rank_counts(scores, torch.tensor([6]), [torch.tensor([6, 4])])
    assert greater.item() == 1


def test_the_baselines_follow_their_definitions():
    vocab = ITEM_OFFSET + 4
    a, b, c, d = (ITEM_OFFSET + i for i in range(4))
    train = [[a, b], [a, c], [a, b, d]]
    assert most_popular(train, vocab)(torch.tensor([[b]]))[0, ITEM_OFFSET:].tolist() == [3, 2, 1, 1]
    # cos(i, j) over the items' user columns; a user who had b scores j by cos(b, j).
    users = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]])
    cosine = F.normalize(users, dim=0).T @ F.normalize(users, dim=0)
    scores = item_knn(train, vocab)(torch.tensor([[b, PAD]]))
    torch.testing.assert_close(scores[0, ITEM_OFFSET:], cosine[1])


# ---------------------------------------------------------------- the pretext tasks

def test_nextitem_scores_come_from_the_newest_item_and_padding_changes_nothing(tmp_path):
    cfg = config(write_interactions(tmp_path / "log"))
    complete_config(cfg, load_training_data(cfg))
    method = build_method(cfg).eval()
    history = torch.tensor([[5, 6, 7, PAD, PAD, PAD, PAD, PAD]])
    expected = method.head(method.backbone.tokens(history[:, :3])[:, 2])
    torch.testing.assert_close(method.next_item_scores(history), expected)
    # The loss is the mean cross-entropy of each position's logits against the next item.
    rows = torch.tensor([[5, 6, 7, 8, PAD, PAD, PAD, PAD]])
    logits = method.head(method.backbone.tokens(rows))
    loss, _ = method.loss(method.views(rows, torch.Generator()))
    torch.testing.assert_close(loss, F.cross_entropy(logits[0, :3], rows[0, 1:4]))


def test_maskeditem_hides_items_with_mask_only_and_scores_a_mask_after_the_newest_item(tmp_path):
    cfg = config(write_interactions(tmp_path / "log"), "maskeditem", "backbone.name=bert4rec")
    complete_config(cfg, load_training_data(cfg))
    method = build_method(cfg).eval()
    rows = torch.randint(ITEM_OFFSET, method.backbone.vocab_size, (64, 8), generator=torch.Generator().manual_seed(0))
    rows[:, 6:] = PAD
    corrupted, targets = method.views(rows, torch.Generator().manual_seed(1))
    chosen = targets != IGNORE
    assert (corrupted[chosen] == MASK).all() and (corrupted[~chosen] == rows[~chosen]).all()
    assert (chosen.sum(1) == round(0.2 * 6)).all()                  # rho = 0.2 of the 6 items
    history = torch.tensor([[5, 6, 7, PAD, PAD, PAD, PAD, PAD]])
    expected = method.head(method.backbone.tokens(torch.tensor([[5, 6, 7, MASK]]))[:, 3])
    torch.testing.assert_close(method.next_item_scores(history), expected)
    full = torch.arange(ITEM_OFFSET, ITEM_OFFSET + 8)[None]          # a full row drops its oldest item
    expected = method.head(method.backbone.tokens(torch.cat([full[:, 1:], torch.tensor([[MASK]])], 1))[:, 7])
    torch.testing.assert_close(method.next_item_scores(full), expected)


def test_cl4srec_augmentations_crop_mask_and_reorder_as_the_paper_defines_them():
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22, 23, 24, PAD, PAD, PAD, PAD, PAD]])
    for _ in range(20):
        cropped = item_crop(rows, 0.6, gen)
        for row, out, n in zip(rows.tolist(), cropped.tolist(), (10, 5)):
            kept = [t for t in out if t != PAD]
            assert len(kept) == int(0.6 * n) and out[:len(kept)] == kept
            start = row.index(kept[0])
            assert row[start:start + len(kept)] == kept                # a contiguous run of the original
        masked = item_mask(rows, 0.3, gen)
        assert ((masked == MASK).sum(1) == torch.tensor([3, 1])).all()
        assert ((masked == rows) | (masked == MASK)).all()
        reordered = item_reorder(rows, 0.6, gen)
        for row, out, n in zip(rows.tolist(), reordered.tolist(), (10, 5)):
            moved = [i for i in range(len(row)) if row[i] != out[i]]
            assert sorted(out) == sorted(row)
            if moved:
                assert moved[-1] - moved[0] < int(0.6 * n)             # only within one run of beta * n
    assert (item_reorder(rows, 0.6, gen) != rows).any()


def test_cl4srec_loss_is_next_item_plus_lambda_times_dot_product_info_nce(tmp_path):
    cfg = config(write_interactions(tmp_path / "log"), "cl4srec")
    complete_config(cfg, load_training_data(cfg))
    method = build_method(cfg).eval()
    rows = torch.randint(ITEM_OFFSET, method.backbone.vocab_size, (6, 8), generator=torch.Generator().manual_seed(0))
    views = method.views(rows, torch.Generator().manual_seed(1))
    loss, logged = method.loss(views)
    s1, s2 = (method.backbone.tokens(v)[torch.arange(6), (v != PAD).sum(1) - 1] for v in views[1:])
    z = torch.cat([s1, s2])
    logits = (z @ z.T).fill_diagonal_(float("-inf"))                  # dot product, tau = 1
    info_nce = F.cross_entropy(logits, torch.arange(12).roll(6))
    torch.testing.assert_close(logged["contrastive"], info_nce)
    next_item = F.cross_entropy(method.head(method.backbone.tokens(rows))[:, :-1].reshape(-1, method.backbone.vocab_size),
                                rows[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, next_item + 0.1 * info_nce)
    torch.testing.assert_close(nt_xent(s1, s2, 1.0, normalize=False), info_nce)


def test_a_sequence_method_refuses_a_backbone_of_the_wrong_direction(tmp_path):
    cfg = config(write_interactions(tmp_path / "log"), "nextitem", "backbone.name=bert4rec")
    complete_config(cfg, load_training_data(cfg))
    with pytest.raises(ConfigError, match="sasrec / gru4rec"):
        build_method(cfg)


def test_gru4rec_under_a_sequence_recipe_keeps_the_fields_that_apply_and_drops_the_heads(tmp_path):
    # nextitem's recipe sizes SASRec (heads=2); naming GRU4Rec must not fail on a field the user never set.
    log = write_interactions(tmp_path / "log")
    asked = ["method.name=nextitem", f"data.source={log}", "backbone.name=gru4rec", "train.batch_size=16"]
    cfg = load_config(overrides=asked)
    assert (cfg.backbone.name, cfg.backbone.dim, cfg.backbone.dropout) == ("gru4rec", 64, 0.2)
    complete_config(cfg, load_training_data(cfg))
    assert build_method(cfg).backbone.__class__.__name__ == "TextRNN"
    with pytest.raises(ConfigError, match="backbone.heads=2 does not apply to backbone gru4rec"):
        load_config(overrides=[*asked, "backbone.heads=2"])


# ---------------------------------------------------------------- training and evaluation

def test_a_short_nextitem_run_ranks_far_better_than_its_random_init_and_most_popular(tmp_path):
    log = write_interactions(tmp_path / "log", users=120, items=100)
    cfg = config(log, "nextitem", "train.steps=150", "optim.lr=0.01", "eval.report=false")
    result = pretrain_and_evaluate(cfg, tmp_path / "run", progress=False)
    trained = result.ranking
    run = load_run(tmp_path / "run")
    random_init = build_method(run.config).eval()
    split = modality_of(run.config).leave_one_out(run.config, run_dir=run.path)
    untrained = ranking_metrics(random_init.next_item_scores, split.test)
    assert trained["model"]["ndcg"] > 0.5 > 3 * max(untrained["ndcg"], trained["most_popular"]["ndcg"])
    saved = json.loads((tmp_path / "run" / "eval" / "ranking.json").read_text())
    assert saved["model"] == trained["model"] and saved["users"] == 120
    assert {"item_knn", "cold_start", "last_5_items", "by_history_length"} <= set(saved)


def test_ranking_report_splits_cold_start_users_and_history_lengths(tmp_path):
    log = read_interactions(write_log(tmp_path / "a.csv", "user_id,item_id,timestamp",
                                      [f"a,{i},{i}" for i in range(4)] + [f"b,{i},{i}" for i in range(12)]))
    split = leave_one_out(log, 8)
    report = ranking_report(most_popular(split.train_histories, log.vocab_size), split, "test", log.vocab_size)
    assert report["cold_start"]["users"] == 1 and report["cold_start"]["model"]["users"] == 1
    assert [(r["from"], r["to"], r["users"]) for r in report["by_history_length"]] == [(3, 3, 1), (11, 11, 1)]


def test_user_attributes_label_users_and_a_numeric_one_is_cut_into_bands(tmp_path):
    log = write_interactions(tmp_path / "log", users=80)
    cfg = config(log, "nextitem", "interactions.label=gender")
    train, test = modality_of(cfg).labelled_sets(cfg)
    assert train.classes == ["F", "M"] and len(train) + len(test) < 80
    cfg.interactions.label = "age"                      # 40 values: 4 bands at the training users' quartiles
    train, _ = modality_of(cfg).labelled_sets(cfg)
    assert len(train.classes) == 4 and train.classes[0].startswith("-")
    cfg.interactions.label = "zip"
    with pytest.raises(DataError, match="no user attribute 'zip'.*has age, gender"):
        modality_of(cfg).labelled_sets(cfg)


def test_init_from_starts_from_another_runs_backbone_and_refuses_one_that_does_not_fit(tmp_path):
    log = write_interactions(tmp_path / "log")
    pretrain(config(log, "maskeditem", "train.steps=3"), tmp_path / "masked", progress=False)
    masked = load_run(tmp_path / "masked")
    cfg = config(log, "nextitem", "train.steps=1", f"train.init_from={tmp_path / 'masked'}", "optim.lr=1e-12")
    pretrain(cfg, tmp_path / "fine", progress=False)
    fine = load_run(tmp_path / "fine")
    for name, weight in masked.method.backbone.state_dict().items():
        torch.testing.assert_close(fine.method.backbone.state_dict()[name], weight, atol=1e-6, rtol=0)
    wider = config(log, "nextitem", "train.steps=1", f"train.init_from={tmp_path / 'masked'}", "backbone.dim=32")
    with pytest.raises(CheckpointError, match="its backbone does not fit"):
        pretrain(wider, tmp_path / "wider", progress=False)


def test_a_run_evaluated_on_another_log_with_other_items_is_refused_and_onnx_export_too(tmp_path):
    pretrain(config(write_interactions(tmp_path / "log"), "nextitem", "train.steps=1"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="ONNX export covers image encoders, not the interactions backbone sasrec"):
        export_onnx(tmp_path / "run", tmp_path / "rec.onnx")
    run = load_run(tmp_path / "run")
    other = write_interactions(tmp_path / "other", items=12)
    with pytest.raises(DataError, match="does not have the items the run"):
        modality_of(run.config).leave_one_out(run.config, str(other), run.path)


def test_movielens_is_taken_from_the_wheel_and_a_changed_layout_is_an_error(tmp_path):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in MOVIELENS_FILES:
            archive.writestr(MOVIELENS_MEMBERS + name, "user_id:token\n1\n2\n")
    counts = extract_movielens(wheel, tmp_path / "movielens-100k")
    assert counts == {name: 3 for name in MOVIELENS_FILES}
    assert sorted(p.name for p in (tmp_path / "movielens-100k").iterdir()) == sorted(MOVIELENS_FILES)
    with zipfile.ZipFile(tmp_path / "old.whl", "w") as archive:
        archive.writestr("recbole/other.txt", "")
    with pytest.raises(DataError, match="has no recbole/dataset_example/ml-100k/ml-100k.inter"):
        extract_movielens(tmp_path / "old.whl", tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_the_command_line_trains_a_recommender_and_scores_its_validation_items_apart(tmp_path, capsys):
    log = write_interactions(tmp_path / "log")
    assert main(["pretrain", "--data", str(log), "--method", "nextitem", "--runs-dir", str(tmp_path), "--name", "rec",
                 "--quiet", *SMALL, "train.steps=4", "eval.report=false"]) == 0
    assert "next-item ranking over all 30 items" in capsys.readouterr().out
    test_scores = json.loads((tmp_path / "rec" / "eval" / "ranking.json").read_text())
    assert main(["evaluate", "ranking", str(tmp_path / "rec"), "--part", "val"]) == 0
    assert json.loads((tmp_path / "rec" / "eval" / "ranking.json").read_text()) == test_scores
    assert json.loads((tmp_path / "rec" / "eval" / "ranking-val.json").read_text())["part"] == "val"
    assert main(["pretrain", "--data", str(log), "--modality", "interactions", "--method", "simclr", "--quiet"]) != 0
    assert "for interactions choose one of: cl4srec, maskeditem, nextitem" in capsys.readouterr().err


def test_the_online_monitor_scores_validation_items_and_keeps_the_best_checkpoint_by_ndcg(tmp_path):
    log = write_interactions(tmp_path / "log", users=80, items=60)
    pretrain(config(log, "nextitem", "train.steps=40", "optim.lr=0.01", "eval.online_every=1"), tmp_path / "run",
             progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "online_ndcg10" in r]
    assert len(scored) >= 3 and all(0 <= r["online_hr10"] <= 1 for r in scored)
    best = json.loads(next((tmp_path / "run" / "checkpoints").glob(
        (tmp_path / "run" / "checkpoints" / "best").read_text().strip() + ".json")).read_text())
    assert best["online_knn"] == max(r["online_ndcg10"] for r in scored)
    # The monitor scores the validation items, never the test items.
    run = load_run(tmp_path / "run")
    split = modality_of(run.config).leave_one_out(run.config, run_dir=run.path)
    val = ranking_metrics(run.method.eval().next_item_scores, split.val)
    assert scored[-1]["online_ndcg10"] == pytest.approx(val["ndcg"], abs=1e-4)


@pytest.mark.slow
def test_real_movielens_nextitem_beats_most_popular_on_the_validation_items(tmp_path):
    """MovieLens-100K (`selfsup data fetch movielens-100k`): 100 steps of SASRec (about 5.5 epochs, at
    lr 3e-3 to learn faster) rank the validation items better than the most-popular baseline, with all
    1,682 items ranked."""
    source = find("movielens-100k")
    if source is None:
        pytest.skip("movielens-100k not fetched (selfsup data fetch movielens-100k)")
    cfg = load_config(overrides=["method.name=nextitem", f"data.source={source}", "train.steps=100", "optim.lr=0.003",
                                 "train.precision=fp32", "eval.online_every=0", "train.threads=1"])
    pretrain(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    split = modality_of(run.config).leave_one_out(run.config, run_dir=run.path)
    assert run.config.interactions.items == 1682 and len(split.val) == 943
    scores = ranking_report(run.method.eval().next_item_scores, split, "val", ITEM_OFFSET + 1682)
    assert scores["model"]["ndcg"] > 1.5 * scores["most_popular"]["ndcg"]
