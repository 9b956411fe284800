"""Text: tokenizers, sources, token tensors, text backbones, clm / mlm / simcse, generation, baselines."""
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones import build_backbone
from selfsup.data import DataError
from selfsup.methods.clm import CLM, CLMConfig
from selfsup.methods.masking import lowest
from selfsup.methods.mlm import IGNORE, MLM, MLMConfig, bert_mask, most_chosen
from selfsup.methods.simcse import SimCSE, SimCSEConfig
from selfsup.text import (BOS, EOS, MASK, PAD, ByteTokenizer, bag_of_words, build_tokenizer,
                          encode_documents, generate, iter_documents, load_tokenizer, pack_corpus, perplexity,
                          save_tokenizer)
import selfsup.text.data as text_data
from selfsup.text.generate import continue_prompt, restrict
from selfsup.text.tokenizer import TOKENIZER_FILE, save_tokenizer

MULTILINGUAL = "héllo wörld, 日本語のテキスト, emoji 🙂 and Ελληνικά"


def small_backbone(name, vocab_size=50, max_length=16, dim=32, depth=2, dropout=0.0):
    heads = {"heads": 4} if name in ("transformer", "gpt") else {}       # recurrent backbones have none
    return build_backbone(name, vocab_size=vocab_size, max_length=max_length, dim=dim, depth=depth,
                          dropout=dropout, **heads)


def random_ids(rows, length, vocab_size=50, seed=0):
    return torch.randint(4, vocab_size, (rows, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- tokenizers

def test_byte_tokenizer_round_trip_and_specials(tmp_path):
    tok = ByteTokenizer()
    ids = tok.encode(MULTILINGUAL)
    assert tok.vocab_size == 260
    assert len(ids) == len(MULTILINGUAL.encode("utf-8")) and min(ids) >= 4 and max(ids) <= 259
    assert tok.decode(ids) == MULTILINGUAL
    assert tok.decode([BOS] + ids + [EOS, PAD, MASK]) == MULTILINGUAL          # specials skipped
    assert tok.decode(torch.tensor(ids)) == MULTILINGUAL
    assert tok.decode([0xFF + 4]) == "\ufffd"                                   # invalid UTF-8 replaced
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tok.json"))
    assert isinstance(loaded, ByteTokenizer) and loaded.encode("x") == tok.encode("x")


def test_build_tokenizer_kinds_and_bad_files(tmp_path):
    def never_read():
        raise AssertionError("the byte tokenizer must not read the corpus")
    assert isinstance(build_tokenizer("byte", never_read, 0), ByteTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer 'words'.*byte, bpe"):
        build_tokenizer("words", lambda: [], 100)
    (tmp_path / "other.json").write_text(json.dumps({"kind": "pickle"}))
    with pytest.raises(ValueError, match="not a selfsup tokenizer"):
        load_tokenizer(tmp_path / "other.json")


def test_bpe_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)          # `import tokenizers` now fails
    with pytest.raises(ImportError, match=r"pip install 'selfsup\[bpe\]'"):
        build_tokenizer("bpe", lambda: ["some text"], 300)


def test_bpe_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    corpus = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 30
    tok = build_tokenizer("bpe", lambda: iter(corpus), 300)
    assert 260 < tok.vocab_size <= 300
    assert len(tok.encode("the cat sat on the mat")) < len("the cat sat on the mat")     # merges were learned
    for text in (MULTILINGUAL, "the cat sat", "never seen: ÿ \x00 tabs\tand\nnewlines"):
        ids = tok.encode(text)
        assert min(ids) >= 4 and tok.decode(ids) == text
    assert MASK not in tok.encode("a <mask> and <pad>")            # special names in text stay text
    assert tok.decode([BOS] + tok.encode("the cat") + [EOS, PAD, MASK]) == "the cat"
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "bpe.json"))
    assert loaded.vocab_size == tok.vocab_size and loaded.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)
    assert MASK not in loaded.encode("<mask>")
    with pytest.raises(ValueError, match="at least 260"):
        build_tokenizer("bpe", lambda: corpus, 100)


# ---------------------------------------------------------------- sources

def test_iter_documents_folder_with_labels(tmp_path):
    root = tmp_path / "reviews"
    for rel, text in {"pos/a.txt": "good", "neg/b.txt": "bad", "neg/deeper/c.TXT": "awful\n\nreally",
                      "neg/notes.md": "not text", ".hidden/d.txt": "ignored", "pos/empty.txt": "  \n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    assert list(iter_documents(root, labels=True)) == [("bad", "neg"), ("awful\n\nreally", "neg"), ("good", "pos")]
    assert list(iter_documents(str(root))) == [("bad", None), ("awful\n\nreally", None), ("good", None)]
    (root / "loose.txt").write_text("no class")
    with pytest.raises(DataError, match="inside class subfolders"):
        list(iter_documents(root, labels=True))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        list(iter_documents(tmp_path / "nothing"))


def test_iter_documents_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"body": "first", "y": 1}\n\n{"body": "second", "y": "b"}\n{"text": "third", "y": 2}\n')
    docs = iter_documents(path, text_field="body", label_field="y", labels=True)
    assert next(docs) == ("first", "1") and next(docs) == ("second", "b")      # streamed: read up to line 3
    with pytest.raises(DataError, match=r"line 4 has no field 'body'; its fields are \['text', 'y'\]"):
        next(docs)
    assert next(iter_documents(path, text_field="body", label_field="y")) == ("first", None)
    with pytest.raises(DataError, match="label_field"):
        list(iter_documents(path, text_field="body", labels=True))
    path.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        list(iter_documents(path))
    path.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match="holds a int, not a string"):
        list(iter_documents(path))


def test_iter_documents_text_file_list_and_errors(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("line one\nline two\n\n\n  \nsecond paragraph\r\n\nthird")
    assert [t for t, _ in iter_documents(path)] == ["line one\nline two", "second paragraph", "third"]
    with pytest.raises(DataError, match="has no labels"):
        list(iter_documents(path, labels=True))
    assert list(iter_documents(["a", "b"])) == [("a", None), ("b", None)]
    with pytest.raises(DataError, match="no labels"):
        list(iter_documents(["a"], labels=True))
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(tmp_path / "missing.jsonl"))
    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(DataError, match="holds no text"):
        list(iter_documents(tmp_path / "blank.txt"))
    with pytest.raises(DataError, match="holds no text"):
        list(iter_documents([]))
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="suffix '.csv'"):
        list(iter_documents(tmp_path / "table.csv"))


# ---------------------------------------------------------------- token tensors

def test_encode_documents_pads_truncates_and_labels():
    tok = ByteTokenizer()
    data = encode_documents([("ab", "x"), ("abcdefgh", "a"), ("é", "x")], tok, max_length=6, name="t")
    a, b = ord("a") + 4, ord("b") + 4
    assert data.tokens.tolist()[0] == [BOS, a, b, PAD, PAD, PAD]
    assert data.tokens.tolist()[1] == [BOS] + tok.encode("abcde")              # BOS + max_length - 1 tokens
    assert data.tokens.tolist()[2] == [BOS] + tok.encode("é") + [PAD] * 3
    assert data.classes == ["a", "x"] and data.labels.tolist() == [1, 0, 1] and data.labels.dtype == torch.int64
    assert data.texts == ["ab", "abcdefgh", "é"] and data.samples is data.tokens and len(data) == 3
    picked = data.select(torch.tensor([2, 0]))
    assert picked.texts == ["é", "ab"] and picked.labels.tolist() == [1, 1] and picked.tokens.shape == (2, 6)
    assert len(data.subset(2)) == 2 and data.subset(0) is data
    given = encode_documents([("ab", "x")], tok, 4, classes=["y", "x"])
    assert given.labels.tolist() == [1] and given.classes == ["y", "x"]
    with pytest.raises(DataError, match=r"not among the classes"):
        encode_documents([("ab", "z")], tok, 4, classes=["x"])
    with pytest.raises(DataError, match="no label"):
        encode_documents([("ab", "x"), ("cd", None)], tok, 4)
    assert encode_documents([("ab", None)], tok, 4).labels is None


def test_document_pieces_end_at_the_last_sentence_end_in_their_second_half():
    stop = 9
    ids = [1, 2, stop, 4, 5, 6, stop, 8, 1, 2, 3, 4, 5, 6]          # 14 tokens, room for 8
    pieces = text_data.document_pieces(ids, 8, {stop})
    assert pieces == [[1, 2, stop, 4, 5, 6, stop], [8, 1, 2, 3, 4, 5, 6]]
    early = [stop, 2, 3, 4, 5, 6, 7, 8, 1, 2]                         # its only end is in the first half
    assert text_data.document_pieces(early, 8, {stop}) == [early[:8], early[8:]]
    assert text_data.document_pieces(ids, 20, {stop}) == [ids]
    long = list(range(10, 60))
    assert [t for piece in text_data.document_pieces(long, 7, {stop}) for t in piece] == long


def test_encode_documents_splits_long_documents_at_sentence_ends_when_asked():
    tok = ByteTokenizer()
    ends = {tok.encode(".")[0]}
    docs = [("One two three. Four five. Six seven", None), ("short.", None)]     # 36 and 6 bytes
    with pytest.warns(UserWarning, match="1 document.* cut at sentence ends into 3 rows"):
        data = encode_documents(docs, tok, max_length=28, split_at=ends)
    assert data.texts == ["One two three. Four five.", " Six seven", "short."]
    assert all(row[0] == BOS for row in data.tokens.tolist())
    assert [tok.decode(row) for row in data.tokens.tolist()] == data.texts
    assert encode_documents(docs, tok, max_length=28).texts == [text for text, _ in docs]   # truncating


def test_pack_corpus_windows_are_the_stream_and_the_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "WRITE_CHUNK_TOKENS", 7)     # many small appends to the file
    monkeypatch.setattr(text_data, "ENCODE_CHUNK_DOCS", 2)
    tok = ByteTokenizer()
    texts = [f"document {i} " + "x" * i for i in range(10)]
    stream = [t for text in texts for t in tok.encode(text) + [EOS]]
    cache = tmp_path / "cache" / "corpus.tokens"
    packed = pack_corpus(iter(texts), tok, 8, cache, key="v1")
    rows = len(stream) // 8
    assert packed.tokens.dtype == torch.uint16 and packed.tokens.shape == (rows, 8) and len(stream) % 8
    assert packed.tokens.long().flatten().tolist() == stream[:rows * 8]        # the tail is dropped
    assert packed.tokens[torch.tensor([3, 0])].long().tolist() == [stream[24:32], stream[0:8]]
    assert packed.labels is None and packed.texts == []

    def must_not_read():
        raise AssertionError("the cache should have been reused")
        yield
    again = pack_corpus(must_not_read(), tok, 8, cache, key="v1")
    assert torch.equal(again.tokens, packed.tokens)
    other_window = pack_corpus(must_not_read(), tok, 5, cache, key="v1")       # same stream, other windows
    assert other_window.tokens.long().flatten().tolist() == stream[:len(stream) // 5 * 5]
    rebuilt = pack_corpus(iter(texts[:2]), tok, 8, cache, key="v2")            # another key: rebuilt
    assert rebuilt.tokens.long().flatten().tolist() == stream[:len(rebuilt) * 8] and len(rebuilt) < rows
    with pytest.raises(DataError, match="fewer than one window"):
        pack_corpus(iter(["ab"]), tok, 8, tmp_path / "tiny.tokens")


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("name", ["transformer", "gpt", "lstm", "gru"])
def test_text_backbones_shapes_and_padding_invariance(name):
    backbone = small_backbone(name).eval()
    assert backbone.causal == (name != "transformer") and backbone.feature_dim == 32 and backbone.vocab_size == 50
    ids = random_ids(3, 10)
    ids[1, 6:] = PAD                                    # a shorter document in the batch
    assert backbone.tokens(ids).shape == (3, 10, 32)
    pooled = backbone(ids.to(torch.int32))
    assert pooled.shape == (3, 32) and torch.isfinite(pooled).all()
    padded = torch.cat([ids, torch.full((3, 6), PAD)], dim=1).to(torch.uint16)
    torch.testing.assert_close(backbone(padded), pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backbone(ids[1:2, :6]), pooled[1:2], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(backbone(torch.full((2, 5), PAD))).all()            # an all-PAD row: no NaN


@pytest.mark.parametrize("name", ["transformer", "gpt", "lstm", "gru"])
def test_causal_backbones_never_see_later_tokens(name):
    backbone = small_backbone(name).eval()
    ids = random_ids(2, 12)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] - 4 + 1) % 46 + 4
    before, after = backbone.tokens(ids), backbone.tokens(changed)
    assert not torch.allclose(before[:, 7:], after[:, 7:])
    if backbone.causal:
        torch.testing.assert_close(before[:, :7], after[:, :7])
    else:                                               # bidirectional: earlier states see the change
        assert not torch.allclose(before[:, :7], after[:, :7])


def test_transformer_rejects_too_long_sequences_and_bad_sizes():
    with pytest.raises(ValueError, match="longer than this backbone's max_length 16"):
        small_backbone("gpt")(random_ids(1, 17))
    with pytest.raises(ValueError, match="divisible"):
        build_backbone("transformer", vocab_size=50, max_length=8, dim=30, heads=4)


# ---------------------------------------------------------------- clm

def test_clm_loss_is_the_mean_next_token_cross_entropy():
    method = CLM(small_backbone("gpt"), CLMConfig()).eval()
    assert method.head.weight is method.backbone.token_embedding.weight        # tied
    ids = random_ids(3, 9)
    ids[0, 5:] = PAD
    ids[2, 8:] = PAD
    loss, logs = method.loss(method.views(ids, torch.Generator()))
    losses = []
    for b in range(3):
        for t in range(8):
            if ids[b, t + 1] != PAD:             # predicted from the prefix alone
                logits = method.logits(ids[b:b + 1, :t + 1])[0, t]
                losses.append(-F.log_softmax(logits, -1)[ids[b, t + 1]])
    assert len(losses) == 4 + 8 + 7
    torch.testing.assert_close(loss, torch.stack(losses).mean())
    torch.testing.assert_close(logs["perplexity"], loss.exp())


def test_clm_needs_a_causal_backbone():
    with pytest.raises(ValueError, match="causal backbone.*gpt / lstm / gru"):
        CLM(small_backbone("transformer"), CLMConfig())


# ---------------------------------------------------------------- mlm

def test_bert_mask_counts_and_80_10_10_split():
    vocab = 1000
    ids = random_ids(2000, 40, vocab)
    lengths = torch.randint(2, 41, (2000,), generator=torch.Generator().manual_seed(1))
    ids[torch.arange(40)[None, :] >= lengths[:, None]] = PAD
    ids[:, 0] = BOS
    ids[5] = PAD                                          # no ordinary token: nothing to choose
    corrupted, targets = bert_mask(ids, vocab, torch.Generator().manual_seed(0))
    chosen = targets != IGNORE
    eligible = ids >= 4
    assert not (chosen & ~eligible).any() and torch.equal(targets[chosen], ids[chosen])
    expected = [max(1, round(0.15 * int(n))) if n else 0 for n in eligible.sum(1)]
    assert chosen.sum(1).tolist() == expected
    assert int(chosen.sum()) <= most_chosen(*ids.shape, 0.15)            # what a compiled mlm step makes room for
    assert int(chosen[lengths == 40].sum(1).max()) == most_chosen(1, 40, 0.15)
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    n = int(chosen.sum())
    masked = (corrupted[chosen] == MASK).float().mean()
    kept = (corrupted[chosen] == ids[chosen]).float().mean()
    random = 1 - masked - kept

    def within(share, p):      # 5 standard deviations of a binomial share
        return abs(float(share) - p) <= 5 * math.sqrt(p * (1 - p) / n)
    kept_p = 0.1 + 0.1 / (vocab - 4)                      # a random draw can hit the original token
    assert within(masked, 0.8) and within(kept, kept_p) and within(random, 0.1 - 0.1 / (vocab - 4))
    replaced = corrupted[chosen][(corrupted[chosen] != MASK) & (corrupted[chosen] != ids[chosen])]
    assert replaced.min() >= 4 and replaced.max() < vocab
    again, _ = bert_mask(ids, vocab, torch.Generator().manual_seed(0))
    assert torch.equal(again, corrupted)                  # all randomness from the generator


def test_lowest_takes_exactly_count_positions_even_when_scores_tie():
    # float32 draws tie now and then; a threshold at the count-th lowest score would take all tied ones
    scores = torch.tensor([[0.5, 0.1, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3]])
    assert lowest(scores, torch.tensor([2, 3])).tolist() == [[True, True, False, False], [True, True, True, False]]


def test_mlm_loss_only_at_chosen_positions():
    method = MLM(small_backbone("transformer"), MLMConfig()).eval()
    ids = random_ids(4, 16)
    ids[:, 0] = BOS
    ids[3, 10:] = PAD
    corrupted, targets = method.views(ids, torch.Generator().manual_seed(3))
    loss, _ = method.loss([corrupted, targets])
    logits = method.logits(corrupted)
    per_position = [-F.log_softmax(logits[b, t], -1)[targets[b, t]]
                    for b in range(4) for t in range(16) if targets[b, t] != IGNORE]
    assert len(per_position) == 3 * max(1, round(0.15 * 15)) + max(1, round(0.15 * 9))
    torch.testing.assert_close(loss, torch.stack(per_position).mean())


def test_mlm_needs_a_bidirectional_backbone_and_valid_ratios():
    with pytest.raises(ValueError, match="bidirectional backbone.*transformer"):
        MLM(small_backbone("gpt"), MLMConfig())
    with pytest.raises(ValueError, match="mask_ratio"):
        MLMConfig(mask_ratio=0).validate()
    with pytest.raises(ValueError, match="sum <= 1"):
        MLMConfig(mask_token=0.8, random_token=0.3).validate()


# ---------------------------------------------------------------- simcse

def test_simcse_loss_is_the_papers_formula_with_dropout_as_augmentation():
    method = SimCSE(small_backbone("transformer", dropout=0.1), SimCSEConfig()).train()
    ids = random_ids(5, 12)
    ids[2, 7:] = PAD
    views = method.views(ids, torch.Generator())
    torch.manual_seed(7)
    loss, _ = method.loss(views)
    torch.manual_seed(7)                                 # the same dropout masks
    z1, z2 = method.backbone(torch.cat(views)).chunk(2)
    assert not torch.allclose(z1, z2)                    # dropout made two different views
    sim = F.cosine_similarity(z1[:, None], z2[None, :], dim=-1) / 0.05
    expected = torch.stack([-(sim[i, i] - sim[i].exp().sum().log()) for i in range(5)]).mean()
    torch.testing.assert_close(loss, expected)
    with_head = SimCSE(small_backbone("lstm", dropout=0.1), SimCSEConfig(projector=True, proj_dim=8)).train()
    assert torch.isfinite(with_head.loss(with_head.views(ids, torch.Generator()))[0])
    assert with_head.embed(ids).shape == (5, 32)
    with pytest.raises(ValueError, match="temperature"):
        SimCSEConfig(temperature=0).validate()


# ---------------------------------------------------------------- generation, perplexity

def test_generate_is_reproducible_and_crops_the_context():
    method = CLM(small_backbone("gpt", vocab_size=260, max_length=8), CLMConfig())
    tok = ByteTokenizer()
    text = generate(method, tok, "a long prompt, longer than max_length", max_new_tokens=12, seed=1)
    assert 0 < len(text) <= 12 and method.training      # up to 12 new byte tokens; the mode is restored
    assert generate(method, tok, "a long prompt, longer than max_length", max_new_tokens=12, seed=1) == text
    samples = {generate(method, tok, "x", max_new_tokens=12, temperature=2.0, top_k=0, seed=s) for s in range(4)}
    assert len(samples) > 1
    # The context never reaches max_length: the last position of a training window is never trained.
    seen = []
    real_logits = method.logits
    method.logits = lambda ids: seen.append(ids.shape[1]) or real_logits(ids)
    generate(method, tok, "a long prompt, longer than max_length", max_new_tokens=3, seed=1)
    assert seen == [7, 7, 7]
    del method.logits
    rnn = CLM(small_backbone("gru", vocab_size=260), CLMConfig())
    greedy = generate(rnn, tok, "hi", max_new_tokens=5, temperature=0)
    assert greedy == generate(rnn, tok, "hi", max_new_tokens=5, temperature=0, seed=7)    # no sampling at T=0
    with pytest.raises(ValueError, match="causal language model"):
        generate(MLM(small_backbone("transformer", vocab_size=260), MLMConfig()), tok, "x")


class FixedNextToken(torch.nn.Module):
    """A stand-in language model whose next-token probabilities are always `probs`; records its inputs."""

    def __init__(self, probs):
        super().__init__()
        self.backbone = torch.nn.Linear(1, 1)
        self.backbone.causal = True
        self.log_probs = torch.tensor(probs).log()
        self.inputs = []

    def logits(self, ids):
        self.inputs.append(ids[0].tolist())
        return self.log_probs.expand(ids.shape[0], ids.shape[1], -1)


def sampled(probs, **settings):
    """The set of tokens drawn in 300 single-token generations (token 2, EOS, is never likely here)."""
    model = FixedNextToken(probs)
    tok = ByteTokenizer()
    return {tok.encode(generate(model, tok, "", max_new_tokens=1, seed=seed, **settings))[0] for seed in range(300)}


def test_top_k_top_p_and_temperature_restrict_what_is_sampled():
    probs = [0.0001] * 4 + [0.40, 0.30, 0.15, 0.10] + [0.0496 / 252] * 252        # tokens 4..7 hold 95%
    assert sampled(probs, temperature=1.0, top_k=0) - {4, 5, 6, 7}                # unrestricted: others too
    assert sampled(probs, temperature=1.0, top_k=2) == {4, 5}
    assert sampled(probs, temperature=1.0, top_k=0, top_p=0.6) == {4, 5}          # 0.40 < 0.6 <= 0.70
    assert sampled(probs, temperature=1.0, top_k=0, top_p=0.3) == {4}
    assert sampled(probs, temperature=0.0) == {4}
    assert sampled(probs, temperature=0.02, top_k=0) == {4}                       # (0.3/0.4)^50: never token 5
    logits = torch.tensor(probs).log()
    assert torch.isinf(restrict(logits, 1.0, top_p=0.75)).sum() == 260 - 3      # 0.40 + 0.30 < 0.75: three kept
    with pytest.raises(ValueError, match="top_p"):
        generate(FixedNextToken(probs), ByteTokenizer(), "", top_p=0)


def test_generation_starts_from_the_token_that_begins_a_document_in_training(tmp_path):
    """clm trains on a packed stream, documents separated by EOS and no BOS: generation and the
    features of documents start from EOS, a token the model has read; one row per document starts
    with BOS."""
    from selfsup.config import load_config
    from selfsup.modalities import modality_of
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("first doc", "second one", "third")))
    packed = load_config(overrides=["method.name=clm", f"data.source={corpus}", "text.max_length=8"])
    stream = text_data.pack_corpus((t for t in ("first doc", "second one")), ByteTokenizer(), 8,
                                   tmp_path / "stream.bin").samples
    start = modality_of(packed).start_token(packed)
    assert start == EOS and (stream == EOS).any() and not (stream == BOS).any()
    model = FixedNextToken([1 / 260] * 260)
    generate(model, ByteTokenizer(), "ab", max_new_tokens=1, start_token=start)
    assert model.inputs[0] == [EOS] + ByteTokenizer().encode("ab") and model.inputs[0][0] in stream.flatten().tolist()
    rows = load_config(overrides=["method.name=clm", f"data.source={corpus}", "text.pack=off"])
    assert modality_of(rows).start_token(rows) == BOS
    # A run's own generation (CLI, report, benchmark) starts from its training's start token.
    model = FixedNextToken([1 / 260] * 260)
    save_tokenizer(ByteTokenizer(), tmp_path / TOKENIZER_FILE)
    run = SimpleNamespace(method=model, config=rows, path=tmp_path, modality=modality_of(rows))
    continue_prompt(run, "ab", max_new_tokens=1)
    assert model.inputs[0] == [BOS] + ByteTokenizer().encode("ab")
    assert text_data.encode_documents([("ab", None)], ByteTokenizer(), 8, start=EOS).samples[0, 0] == EOS


def test_perplexity_is_exp_of_the_mean_token_cross_entropy():
    method = CLM(small_backbone("gpt", dropout=0.1), CLMConfig()).train()
    ids = random_ids(7, 10)
    ids[1, 3:] = PAD
    ids[4, 6:] = PAD
    result = perplexity(method, ids, batch_size=3)        # batches with different numbers of targets
    assert method.training
    method.eval()
    with torch.no_grad():
        loss, _ = method.loss([ids])                      # all rows at once: the token-weighted mean
    assert result["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)

    mlm = MLM(small_backbone("transformer"), MLMConfig())
    first = perplexity(mlm, ids, batch_size=4)
    assert first == perplexity(mlm, ids, batch_size=4)       # a fixed, seeded masking
    assert first["perplexity"] == pytest.approx(math.exp(first["loss"]))
    with pytest.raises(ValueError, match="language-model method"):
        perplexity(SimCSE(small_backbone("transformer"), SimCSEConfig()), ids)


# ---------------------------------------------------------------- baseline

def test_bag_of_words_tf_idf_from_the_training_texts_only():
    train, test = bag_of_words(["A a b!", "b c", "b"], ["zebra ZEBRA", "a zebra", ""], max_features=2)
    # document frequencies: b 3, a 1, c 1 -> the top 2 (ties alphabetical) are b, a
    idf = torch.tensor([math.log(4 / 4) + 1, math.log(4 / 2) + 1])
    row = torch.tensor([math.log1p(1), math.log1p(2)]) * idf
    torch.testing.assert_close(train[0], row / row.norm())
    torch.testing.assert_close(train[1], torch.tensor([1.0, 0.0]))      # "c" is not in the vocabulary
    assert train.shape == (3, 2) and test.shape == (3, 2)
    assert test[0].abs().sum() == 0 and test[2].abs().sum() == 0        # test words never join
    torch.testing.assert_close(test[1], torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- short training runs

def _corpus(rows, length, seed=0):
    """Sequences made of a few repeated motifs, so there is something to learn."""
    motifs = torch.tensor([[5, 9, 13, 17], [6, 7, 8, 9], [20, 22, 24, 26], [30, 31, 30, 31]])
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, 4, (rows, length // 4), generator=gen)
    ids = motifs[picks].reshape(rows, -1)
    ids[:, 0] = BOS
    return ids


def _losses(method, data, steps=40, lr=3e-3, batch=16):
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(method.parameters(), lr=lr, weight_decay=0.01)
    method.train()
    losses = []
    for step in range(steps):
        rows = torch.randint(0, len(data), (batch,), generator=torch.Generator().manual_seed(step))
        loss, _ = method.loss(method.views(data[rows], torch.Generator().manual_seed(step)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


@pytest.mark.parametrize("method_class, config, backbone", [
    (CLM, CLMConfig(), "gpt"), (CLM, CLMConfig(), "lstm"), (MLM, MLMConfig(), "transformer"),
    (SimCSE, SimCSEConfig(), "transformer")])
def test_training_lowers_the_loss(method_class, config, backbone):
    torch.manual_seed(0)
    method = method_class(small_backbone(backbone, dim=32, depth=1, dropout=0.1), config)
    first, last = _losses(method, _corpus(256, 16))
    assert last < 0.7 * first, (first, last)
