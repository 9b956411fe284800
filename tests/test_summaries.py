"""Fine-tuning an encoder-decoder on document -> summary pairs, decoding, ROUGE, the lead baseline (issue 28)."""
import itertools
import json

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.errors import CheckpointError, DataError
from selfsup.evaluate.summaries import PromptedSummarizer, SummarySettings, evaluate_summaries, summarize, \
    summarizer_for
from selfsup.report import write_report
from selfsup.run import load_run
from selfsup.text.pairs import encode_pairs, pair_parts, read_pairs
from selfsup.text.summarize import DecodeSettings, banned_by_ngrams, first_sentence, generate_seq2seq, \
    lead_summaries, rouge
from selfsup.text.tokenizer import BOS, EOS, MASK, ByteTokenizer
from selfsup.train import pretrain

from small_data import write_corpus


def tiny_model(vocab_size=260):
    torch.manual_seed(0)
    return build_backbone("seq2seq", vocab_size=vocab_size, max_length=16, dim=16, depth=1, heads=2,
                          dropout=0.0).eval()


def test_no_repeat_ngram_bans_the_token_that_would_repeat_an_ngram():
    assert sorted(banned_by_ngrams([5, 6, 7, 5, 6], 3)) == [7]          # 5 6 7 once already
    assert banned_by_ngrams([5, 6, 7, 5, 8], 3) == []
    assert sorted(banned_by_ngrams([5, 6, 5], 2)) == [6]
    assert banned_by_ngrams([5, 6], 0) == []


def test_a_wide_beam_finds_the_best_length_normalised_sequence_of_all():
    """With 2 writable tokens, 3 steps and more beams than hypotheses, beam search is exhaustive: its answer
    must be the sequence (ended by EOS, or cut at 3 tokens) with the best log p / length."""
    model = tiny_model(vocab_size=6)
    source = torch.tensor([[4, 5, 5, 4, EOS]])
    settings = DecodeSettings(strategy="beam", beams=128, max_new_tokens=3, no_repeat_ngram=0, length_penalty=1.0)
    found = generate_seq2seq(model, source, settings)[0]

    def score(words, ended):
        target = words + ([EOS] if ended else [])
        logprobs = model.logits(source, torch.tensor([[BOS] + target[:-1]])).log_softmax(-1)[0]
        total = sum(logprobs[i, t].item() for i, t in enumerate(target))
        return total / max(len(words), 1)

    writable = [4, 5]                                  # PAD, BOS and MASK are never written; EOS ends
    candidates = [(score(list(w), True), list(w)) for n in range(3) for w in itertools.product(writable, repeat=n)]
    candidates += [(score(list(w), False), list(w)) for w in itertools.product(writable, repeat=3)]
    assert found == max(candidates)[1]


def test_one_beam_is_greedy_and_sampling_repeats_with_its_seed():
    model = tiny_model()
    sources = torch.randint(4, 260, (3, 10), generator=torch.Generator().manual_seed(0))
    greedy = generate_seq2seq(model, sources, DecodeSettings(strategy="greedy", max_new_tokens=8))
    assert generate_seq2seq(model, sources, DecodeSettings(strategy="beam", beams=1, max_new_tokens=8)) == greedy
    sample = DecodeSettings(strategy="sample", temperature=1.5, top_p=0.9, max_new_tokens=8, seed=3)
    assert generate_seq2seq(model, sources, sample) == generate_seq2seq(model, sources, sample)
    assert all(len(ids) <= 8 for ids in greedy)


def test_rouge_and_the_lead_baseline():
    perfect = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert perfect["rouge1"] == perfect["rouge2"] == perfect["rougeL"] == 100.0 and perfect["length"] == 6
    assert rouge(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0
    assert first_sentence("Tool to do X. It also does Y.\nMore.") == "Tool to do X."
    assert first_sentence("Version 1.2 of the tool\nsecond line") == "Version 1.2 of the tool"
    assert lead_summaries(["one two three four five. six"], 3) == ["one two three"]


def write_pairs(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines))
    return path


def test_pairs_files_say_what_is_wrong(tmp_path, monkeypatch):
    bad = write_pairs(tmp_path / "bad.jsonl", [{"document": "d", "summary": "s"}, {"body": "x"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: no 'document' and 'summary' fields \(it has: body\)"):
        read_pairs(bad, "document", "summary")
    mixed = write_pairs(tmp_path / "mixed.jsonl", [{"document": "d", "summary": ""}, {"document": "a", "summary": "b"},
                                                   b'{"document": "caf\xe9", "summary": "s"}'])
    with pytest.warns(UserWarning, match="skipped 1 pairs with an empty document or summary; 1 lines had bytes"):
        assert read_pairs(mixed, "document", "summary") == [("a", "b"), ("caf\ufffd", "s")]
    few = write_pairs(tmp_path / "few.jsonl", [{"document": "d", "summary": "s"}] * 3)
    with pytest.raises(DataError, match="no pair falls in the"):
        pair_parts(str(few))
    monkeypatch.setenv("HOME", str(tmp_path))              # where a fetched set would be looked for
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    with pytest.raises(DataError, match="not fetched yet"):
        pair_parts("debian-descriptions", data_dir=str(tmp_path / "nowhere"))


def test_long_documents_are_cut_counted_and_end_with_eos():
    with pytest.warns(UserWarning, match="1 of 2 documents longer than 7 tokens"):
        sources, targets = encode_pairs([("x" * 20, "ab"), ("short", "cd")], ByteTokenizer(), 8, 4)
    assert sources.shape == (2, 8) and targets.shape == (2, 4)
    assert sources[0, -1].item() == EOS and targets[0, :3].tolist() == [ord("a") + 4, ord("b") + 4, EOS]


def small_run_and_pairs(tmp_path, method, max_length):
    """A 4-step run of `method` on a small corpus, and pairs of its documents with their topics as summaries."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", n=60)
    pairs = write_pairs(tmp_path / "pairs.jsonl", [{"document": json.loads(line)["body"], "summary": json.loads(line)["topic"]}
                                                   for line in corpus.read_text().splitlines()])
    cfg = load_config(overrides=[f"method.name={method}", f"data.source={corpus}", "text.field=body",
                                 f"text.max_length={max_length}", "backbone.dim=16", "backbone.heads=2",
                                 "train.batch_size=16", "train.steps=4", "train.precision=fp32", "eval.online_every=0"])
    pretrain(cfg, tmp_path / "run", progress=False)
    return load_run(tmp_path / "run"), pairs


def test_finetune_scores_pretrained_scratch_and_lead_then_summarize_uses_the_saved_model(tmp_path, capsys):
    run, pairs = small_run_and_pairs(tmp_path, "bart", 48)
    with pytest.raises(CheckpointError, match="no fine-tuned summarizer"):
        summarize(run, ["a document"])
    settings = SummarySettings(epochs=1, steps=6, batch_size=8, checks=2, summary_tokens=8, val_pairs=4,
                               decode=DecodeSettings(beams=2, max_new_tokens=6))
    rows = evaluate_summaries(run, ["50%", "100%"], seeds=1, settings=settings, baseline=True, source=str(pairs),
                              progress=False)
    assert [(r["init"], r["labels"]) for r in rows] == [("lead", "-"), ("pretrained", "50%"), ("from scratch", "50%"),
                                                         ("pretrained", "100%"), ("from scratch", "100%")]
    assert all(0 <= r["rougeL"] <= 100 for r in rows) and rows[1]["steps"] == 6 and len(rows[1]["examples"]) == 5
    written = [json.loads(line) for line in run.folder.summaries_results_file.read_text().splitlines()]
    assert [r["init"] for r in written] == [r["init"] for r in rows]
    assert run.folder.summarizer_file.is_file() and len(rows[1]["val_rougeL_checks"]) == 2
    page = write_report(run.path).read_text()
    assert "<h2>Summaries</h2>" in page and "from scratch" in page
    document = tmp_path / "doc.txt"
    document.write_text("A document to summarise. It has two sentences.")
    capsys.readouterr()
    assert main(["summarize", str(run.path), "--text", str(document), "--beams", "2",
                 "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_a_clm_run_is_prompted_with_the_document_and_learns_only_the_summary(tmp_path):
    run, pairs = small_run_and_pairs(tmp_path, "clm", 32)
    model = summarizer_for(run, summary_tokens=8)
    assert isinstance(model, PromptedSummarizer) and model.document_tokens == 32 - 8 - 2
    sources = torch.tensor([[10, 11, 12, EOS, 0], [13, EOS, 0, 0, 0]])
    assert model.prompts(sources).tolist() == [[EOS, 10, 11, 12, MASK, 0, 0], [EOS, 13, MASK, 0, 0, 0, 0]]
    targets = torch.tensor([[20, 21, EOS], [22, EOS, 0]])
    model.eval()                                       # no dropout: the two computations must agree
    logits = model.network.logits(torch.tensor([[EOS, 10, 11, 12, MASK, 20, 21], [EOS, 13, MASK, 22, 0, 0, 0]]))
    expected = torch.nn.functional.cross_entropy(torch.cat([logits[0, 4:7], logits[1, 2:4]]),
                                                 torch.tensor([20, 21, EOS, 22, EOS]))
    torch.testing.assert_close(model.loss(sources, targets, 0.0), expected)
    settings = SummarySettings(epochs=1, steps=4, batch_size=8, checks=1, summary_tokens=8, val_pairs=4,
                               decode=DecodeSettings(beams=2, max_new_tokens=6))
    rows = evaluate_summaries(run, ["100%"], settings=settings, source=str(pairs), progress=False)
    assert [r["init"] for r in rows] == ["lead", "pretrained"] and rows[1]["method"] == "clm"
    assert len(summarize(run, ["a document", "another one"])) == 2
    saved = run.folder.summarizer_file.read_bytes()
    more = evaluate_summaries(run, ["50%"], seeds=2, first_seed=1, settings=settings, source=str(pairs), progress=False)
    assert [r["seed"] for r in more[1:]] == [1, 2]                 # added draws: seed 0's saved model stays
    assert run.folder.summarizer_file.read_bytes() == saved
    written = [json.loads(line) for line in run.folder.summaries_results_file.read_text().splitlines()]
    assert [r["init"] for r in written].count("lead") == 1
