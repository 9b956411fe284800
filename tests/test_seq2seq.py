"""The encoder-decoder, BART's and T5's corruptions checked against their papers' definitions, and the
Debian description pairs (issue 28)."""
import collections
import itertools
import json

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.data import fetch as fetch_module
from selfsup.data import DataError
from selfsup.errors import ConfigError
from selfsup.build import build_method, load_training_data
from selfsup.methods.bart import BART, BARTConfig, permute_sentences, text_infilling
from selfsup.methods.denoising import compact, document_tokens, random_segments
from selfsup.methods.t5 import T5, T5Config, noise_spans
from selfsup.text.descriptions import description_pairs, long_description, parse_deb822, part_of_source, \
    source_packages
from selfsup.text import encode_documents
from selfsup.text.generate import perplexity
from selfsup.text.tokenizer import BOS, EOS, MASK, PAD, ByteTokenizer, sentence_end_ids
from selfsup.train import pretrain

from small_data import write_corpus

TOKENIZER = ByteTokenizer()


def rows(texts, length=64):
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    for i, text in enumerate(texts):
        encoded = [BOS] + TOKENIZER.encode(text)[:length - 1]
        ids[i, :len(encoded)] = torch.tensor(encoded)
    return ids


def tiny_seq2seq(vocab_size=260, length=64):
    return build_backbone("seq2seq", vocab_size=vocab_size, max_length=length, dim=32, depth=2, heads=4,
                          dropout=0.0).eval()


# ---------------------------------------------------------------- the encoder-decoder

def test_decoding_one_token_at_a_time_with_the_cache_equals_the_whole_target_at_once():
    model = tiny_seq2seq()
    gen = torch.Generator().manual_seed(0)
    source = torch.randint(4, 260, (3, 20), generator=gen)
    source[1, 12:] = PAD
    target = torch.randint(4, 260, (3, 9), generator=gen)
    memory = model.tokens(source)
    caches = [{} for _ in model.decoder_blocks]
    stepwise = torch.cat([model.decode(target[:, t:t + 1], memory, source, caches, start=t) for t in range(9)], 1)
    torch.testing.assert_close(stepwise, model.decode(target, memory, source), atol=1e-5, rtol=1e-5)


def test_padding_the_source_changes_nothing_and_the_decoder_never_sees_later_target_tokens():
    model = tiny_seq2seq()
    gen = torch.Generator().manual_seed(1)
    source = torch.randint(4, 260, (2, 10), generator=gen)
    target = torch.randint(4, 260, (2, 8), generator=gen)
    padded = torch.cat([source, torch.zeros(2, 6, dtype=torch.long)], 1)
    logits = model.logits(source, target)
    torch.testing.assert_close(model.logits(padded, target), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(padded), model(source), atol=1e-5, rtol=1e-5)
    changed = target.clone()
    changed[:, 5:] = 7
    torch.testing.assert_close(model.logits(source, changed)[:, :5], logits[:, :5], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.logits(source, changed)[:, 5:], logits[:, 5:])


def test_the_output_layer_is_the_shared_token_embedding():
    model = tiny_seq2seq()
    assert model.lm_head.weight is model.token_embedding.weight


# ---------------------------------------------------------------- batched building blocks

def test_compact_keeps_each_rows_chosen_values_in_order():
    values = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    keep = torch.tensor([[True, False, True, True], [False, False, False, True]])
    assert compact(values, keep, 3).tolist() == [[5, 7, 8], [12, PAD, PAD]]
    assert compact(values, keep, 5).tolist() == [[5, 7, 8, PAD, PAD], [12, PAD, PAD, PAD, PAD]]


def test_random_segments_cover_every_item_with_nonempty_runs_and_every_cut_is_equally_likely():
    gen = torch.Generator().manual_seed(0)
    counts, parts = torch.full((3000,), 4), torch.full((3000,), 2)
    lengths = random_segments(counts, parts, 8, gen)
    assert (lengths.sum(1) == 4).all() and (lengths[:, :2] > 0).all() and (lengths[:, 2:] == 0).all()
    shares = collections.Counter(tuple(r[:2]) for r in lengths.tolist())
    assert set(shares) == {(1, 3), (2, 2), (3, 1)}
    assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in shares.values())


# ---------------------------------------------------------------- BART

def test_text_infilling_hides_exactly_the_mask_ratio_in_spans_each_replaced_by_one_mask():
    gen = torch.Generator().manual_seed(0)
    tokens, counts = document_tokens(rows(["abcdefghijklmnopqrstuvwxyz0123456789"] * 400 + ["short"] * 100))
    noised, noised_counts = text_infilling(tokens, counts, 0.3, 3.0, gen)
    masks = (noised == MASK).sum(1)
    kept = ((noised != MASK) & (noised != PAD)).sum(1)
    hidden = (counts.double() * 0.3).round().long()
    assert (kept == counts - hidden).all()                  # exactly round(0.3 n) tokens went
    assert (noised_counts == kept + masks).all()
    for row, count in zip(noised.tolist(), counts.tolist()):
        kept_tokens = [t for t in row if t not in (MASK, PAD)]
        original = tokens[0, :count].tolist() if count == 36 else tokens[-1, :count].tolist()
        iterator = iter(original)
        assert all(t in iterator for t in kept_tokens)      # the kept tokens, in their order


def test_span_lengths_follow_poisson_3_and_zero_length_spans_insert_a_mask():
    """With a ratio that the first spans never exhaust, the spans' hidden lengths are the Poisson draws:
    their mean is lambda, and spans of length 0 (e^-3 = 5% of draws) add a MASK without hiding anything."""
    gen = torch.Generator().manual_seed(0)
    tokens, counts = document_tokens(rows(["x" * 63] * 2000))
    noised, _ = text_infilling(tokens, counts, 0.3, 3.0, gen)
    masks = (noised == MASK).sum(1).double()
    hidden = round(63 * 0.3)
    # Every span but the last (which is cut to fit) is a full Poisson draw, so spans ~ hidden / lambda + 1/2.
    assert abs(masks.mean().item() - (hidden / 3.0 + 0.5)) < 0.35


def test_sentence_permutation_shuffles_whole_sentences_into_every_order():
    text = "Aa. Bb! Cc?"
    ids = rows([text] * 1200)
    tokens, counts = document_tokens(ids)
    ends = torch.tensor(sentence_end_ids(TOKENIZER))
    shuffled = permute_sentences(tokens, counts, torch.isin(tokens, ends), torch.Generator().manual_seed(0))
    orders = collections.Counter(TOKENIZER.decode(row) for row in shuffled)
    expected = {"".join(p) for p in itertools.permutations(["Aa.", " Bb!", " Cc?"])}
    assert set(orders) == expected
    assert all(abs(n / 1200 - 1 / 6) < 0.04 for n in orders.values())


def test_bart_reconstructs_the_original_document_followed_by_eos():
    model = BART(tiny_seq2seq(), BARTConfig(sentence_end_ids=sentence_end_ids(TOKENIZER)))
    ids = rows(["One sentence here. Another one there. A third!", "ok"])
    source, target_in, target = model.views(ids, torch.Generator().manual_seed(0))
    assert TOKENIZER.decode(target[0]) == "One sentence here. Another one there. A third!"
    assert target[0, 46].item() == EOS and target_in[0, 0].item() == BOS
    assert torch.equal(target_in[:, 1:], target[:, :-1])
    assert (source == EOS).sum(1).tolist() == [1, 1] and (source == MASK).sum().item() >= 1
    loss, logged = model.loss([source, target_in, target])
    assert torch.isfinite(loss) and logged["perplexity"] > 1


# ---------------------------------------------------------------- T5

def test_t5_noise_is_15_percent_in_spans_of_mean_3_starting_with_kept_tokens():
    counts = torch.tensor([100, 40, 7, 2, 1])
    noise, starts = noise_spans(counts, 0.15, 3.0, 100, 128, torch.Generator().manual_seed(0))
    assert noise.sum(1).tolist() == [15, 6, 1, 1, 0]
    assert starts.sum(1).tolist() == [5, 2, 1, 1, 0]
    assert not noise[:, 0].any()                          # the first run is of kept tokens
    assert (starts <= noise).all()


def test_t5_sentinels_put_the_spans_back_into_exactly_the_original():
    vocab = 260 + 100
    model = T5(tiny_seq2seq(vocab), T5Config())
    texts = ["Thank you for inviting me to your party last week.", "a much longer document " * 2, "hi"]
    source, _, target = model.views(rows(texts), torch.Generator().manual_seed(3))
    for text, src, tgt in zip(texts, source.tolist(), target.tolist()):
        src, tgt = src[:src.index(EOS)], tgt[:tgt.index(EOS)]
        spans, current = {}, None
        for token in tgt:
            if token >= 260:
                current = token
                spans[current] = []
            else:
                spans[current].append(token)
        assert list(spans) == [vocab - 1 - i for i in range(len(spans))]        # <extra_id_0>, <extra_id_1>, ...
        filled = [t for token in src for t in (spans[token] if token >= 260 else [token])]
        assert TOKENIZER.decode(filled) == text


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("method", ["bart", "t5"])
def test_a_short_pretraining_lowers_the_held_out_reconstruction_loss(method, tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl", n=200)
    cfg = load_config(overrides=[f"method.name={method}", f"data.source={source}", "text.field=body",
                                 "text.max_length=48", "backbone.dim=32", "backbone.heads=2", "train.batch_size=32",
                                 "train.steps=60", "train.precision=fp32", "eval.online_every=0", "optim.lr=3e-3"])
    data = load_training_data(cfg)
    other = write_corpus(tmp_path / "other.jsonl", n=32, seed=1)        # documents the run never saw
    held_out = encode_documents(((json.loads(line)["body"], None) for line in other.read_text().splitlines()),
                                TOKENIZER, 48).tokens
    result = pretrain(cfg, tmp_path / "run", data=data, progress=False)
    untrained = build_method(cfg)
    before = perplexity(untrained, held_out)["loss"]
    after = perplexity(result.method, held_out)["loss"]
    assert after < 0.6 * before, (before, after)
    if method == "bart":
        assert result.method.cfg.sentence_end_ids == sentence_end_ids(TOKENIZER)
    else:
        assert result.method.backbone.vocab_size == 260 + 100


def test_denoising_refuses_a_packed_corpus(tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl", n=20)
    cfg = load_config(overrides=["method.name=bart", f"data.source={source}", "text.field=body", "text.pack=on"])
    with pytest.raises(ConfigError, match="text.pack=on would run documents together"):
        load_training_data(cfg)


def test_denoising_pretraining_splits_long_documents_and_reads_the_extra_sources(tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl", n=20)
    addresses = tmp_path / "addresses"
    addresses.mkdir()
    address = " ".join(["Fellow citizens."] * 30)             # one line of 509 bytes, a sentence end every 17
    (addresses / "1790.txt").write_text(address)
    overrides = ["method.name=bart", f"data.source={source}", "text.field=body", "text.max_length=64",
                 f"text.extra_sources=[{addresses}]"]
    with pytest.warns(UserWarning, match="cut at sentence ends"):
        data = load_training_data(load_config(overrides=overrides))
    # 63 tokens a row: 3 sentences (50 bytes), then 9 rows of " Fellow citizens." x 3 (51 bytes)
    address_rows = [text for text in data.texts if "Fellow" in text]
    assert [len(text) for text in address_rows] == [50] + [51] * 9 and "".join(address_rows) == address
    truncated = load_training_data(load_config(overrides=overrides + ["text.long_documents=truncate"]))
    assert [text for text in truncated.texts if "Fellow" in text] == [address]
    with pytest.raises(DataError, match=r"text.extra_sources names .*nowhere.*does not exist"):
        load_training_data(load_config(overrides=overrides[:-1] + [f"text.extra_sources=[{tmp_path / 'nowhere'}]"]))
    with pytest.raises(ConfigError, match="text.long_documents must be auto, split or truncate"):
        load_config(overrides=overrides + ["text.long_documents=cut"])


# ---------------------------------------------------------------- Debian descriptions

TRANSLATION = """Package: foo
Description-md5: 1
Description-en: do foo things
 Foo does things. It wraps
 its lines.
 .
 A second paragraph:
   * a verbatim item
   * another one

Package: foo-dev
Description-md5: 2
Description-en: development files for foo
 Foo does things. It wraps
 its lines.
 .
 A second paragraph:
   * a verbatim item
   * another one

Package: bar
Description-md5: 3
Description-en: a bar with no long description

Package: baz
Description-md5: 4
Description-en: baz it
 Baz is a different tool.
"""
PACKAGES = """Package: foo
Version: 1

Package: foo-dev
Source: foo (1.2-3)
Version: 1

Package: baz
Source: bazsrc
"""


def test_long_descriptions_follow_debian_policy_paragraphs_and_verbatim_lines():
    stanza = next(parse_deb822(TRANSLATION))
    synopsis, *continuation = stanza["Description-en"].split("\n")
    assert synopsis == "do foo things"
    assert long_description(continuation) == ("Foo does things. It wraps its lines.\n"
                                              "A second paragraph:\n  * a verbatim item\n  * another one")
    # Text after a verbatim line starts a line of its own; "  ." is a verbatim full stop, not a break.
    assert long_description([" Features:", "  * a", " More", " text.", "  .", " End."]) == \
        "Features:\n * a\nMore text.\n .\nEnd."


def test_pairs_drop_repeated_descriptions_and_split_by_source_package():
    pairs, dropped = description_pairs([TRANSLATION, TRANSLATION], source_packages([PACKAGES]))
    assert [p["package"] for p in pairs] == ["baz", "foo"]               # foo-dev repeats foo's text
    assert dropped == {"no_long_description": 1, "duplicate_description": 1, "repeated_package": 4}
    assert pairs[0]["source"] == "bazsrc" and pairs[0]["summary"] == "baz it"
    assert part_of_source("foo") == pairs[1]["part"]
    parts = collections.Counter(part_of_source(f"source{i}") for i in range(20000))
    assert abs(parts["train"] / 20000 - 0.8) < 0.02 and abs(parts["test"] / 20000 - 0.1) < 0.02


def test_fetch_writes_the_three_parts_from_apts_indexes_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "apt_english_indexes", lambda lists: ([TRANSLATION], [PACKAGES]))
    output = fetch_module.fetch("debian-descriptions", data_dir=str(tmp_path), log=lambda message: None)
    written = {part: [json.loads(line) for line in (output / f"{part}.jsonl").read_text().splitlines()]
               for part in ("train", "val", "test")}
    assert sorted(p["package"] for part in written.values() for p in part) == ["baz", "foo"]
    assert all(p["part"] == part for part, pairs in written.items() for p in pairs)
