"""Speech recognition with few transcripts (issue 26): the CTC loss, greedy and beam decoding against an
enumeration of every alignment, error rates, and `selfsup finetune-ctc` through the commands."""
import itertools
import json
import math

import pytest
import torch

from selfsup.evaluate.ctc import (CTCModel, CTCSettings, Vocabulary, beam_decode, ctc_loss, encode_transcripts,
                                  error_rates, finetune_ctc, greedy_decode)
from selfsup.errors import ConfigError, DataError
from selfsup.backbones import build_backbone

pytest.importorskip("soundfile")
pytest.importorskip("jiwer")


AB = Vocabulary(("a", "b"))


def collapse(path):
    """CTC's many-to-one map: merge repeats, then drop blanks (0)."""
    return tuple(c for c, _ in itertools.groupby(path) if c != 0)


def labelling_probabilities(log_probs):
    """Every labelling's probability, summed over every alignment of T frames (the definition)."""
    totals = {}
    frames, symbols = log_probs.shape
    for path in itertools.product(range(symbols), repeat=frames):
        p = math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
        totals[collapse(path)] = totals.get(collapse(path), 0.0) + p
    return totals


def random_log_probs(frames, symbols, seed):
    return torch.log_softmax(2 * torch.randn(frames, symbols, generator=torch.Generator().manual_seed(seed)), -1)


def test_ctc_loss_is_minus_the_log_of_every_alignments_probability():
    log_probs = torch.stack([random_log_probs(5, 3, 0), random_log_probs(5, 3, 1)])
    targets, lengths = torch.tensor([1, 2, 1, 1]), torch.tensor([2, 2])      # "ab" and "aa"
    expected = [-math.log(labelling_probabilities(log_probs[0])[(1, 2)]) / 2,
                -math.log(labelling_probabilities(log_probs[1])[(1, 1)]) / 2]
    assert float(ctc_loss(log_probs, targets, lengths)) == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_greedy_merges_repeats_and_drops_blanks_but_keeps_a_repeat_after_a_blank():
    frames = torch.tensor([1, 1, 0, 1, 2, 2, 0, 0])
    log_probs = torch.log(torch.nn.functional.one_hot(frames, 3).float() * 0.9 + 0.05)
    assert greedy_decode(log_probs, AB) == "aab"
    assert greedy_decode(log_probs, Vocabulary(("one", "two"), "words")) == "one one two"


@pytest.mark.parametrize("seed", range(6))
def test_a_wide_beam_finds_the_likeliest_labelling(seed):
    log_probs = random_log_probs(5, 3, seed)
    totals = labelling_probabilities(log_probs)
    best = max(totals, key=totals.get)
    assert beam_decode(log_probs, AB, beams=200) == "".join("ab"[c - 1] for c in best)


def test_beam_search_beats_greedy_where_one_labelling_has_many_alignments():
    # Each frame: blank 0.4, "a" 0.35, "b" 0.25. Greedy reads blanks only; "a" in one frame or two adds up to more.
    log_probs = torch.log(torch.tensor([[0.4, 0.35, 0.25]] * 2))
    totals = labelling_probabilities(log_probs)
    assert totals[(1,)] > totals[()]
    assert greedy_decode(log_probs, AB) == "" and beam_decode(log_probs, AB, beams=4) == "a"


def test_transcripts_are_encoded_over_the_training_vocabulary_and_scored_with_jiwer():
    characters = Vocabulary.of(["one two", "three"])
    assert characters.symbols == tuple(" ehnortw")
    ids, lengths = encode_transcripts(["two", "one"], characters)
    assert ids.tolist() == [7, 8, 5, 5, 4, 2] and lengths.tolist() == [3, 3]
    with pytest.raises(DataError, match="characters 'fu' "):
        encode_transcripts(["four"], characters)
    words = Vocabulary.of(["one two", "three  two"], "words")
    assert words.symbols == ("one", "three", "two")
    ids, lengths = encode_transcripts(["two two one", "three"], words)
    assert ids.tolist() == [3, 3, 1, 2] and lengths.tolist() == [3, 1]
    assert words.text([3, 1]) == "two one"
    with pytest.raises(DataError, match="words four of these transcripts are not among the training transcripts' "
                                        "words one three two"):
        encode_transcripts(["one four"], words)
    rates = error_rates(["one two", "three"], ["one too", "three"])
    assert rates["wer"] == pytest.approx(100 / 3) and rates["cer"] == pytest.approx(100 * 1 / 12)


def test_a_ctc_head_needs_an_encoder_that_keeps_time():
    with pytest.raises(ConfigError, match="per-frame features"):
        CTCModel(build_backbone("resnet18", width=0.125, in_channels=1), 5)
    torch.manual_seed(0)
    backbone = build_backbone("wav2vec2", width=0.0625, dim=16, depth=1, heads=2).eval()
    waves = torch.randn(2, 8000)
    whole = CTCModel(backbone, 5)
    out = whole(whole.prepare(waves))
    assert out.shape == (2, 24, 6)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 24))
    # Frozen convolutions: their outputs are computed once and the rest reads them, to the same result.
    frozen = CTCModel(backbone, 5, freeze_features=True)
    frozen.head.load_state_dict(whole.head.state_dict())
    torch.testing.assert_close(frozen(frozen.prepare(waves)), out)
    assert not any(p.requires_grad for p in backbone.conv.parameters())
    assert all(p.requires_grad for p in backbone.blocks.parameters())
    conv, blocks = ([p.detach().clone() for p in part.parameters()] for part in (backbone.conv, backbone.blocks))
    finetune_ctc(CTCModel(backbone, 2, freeze_features=True), torch.randn(4, 8000), ["ab", "ba", "a", "bb"],
                 (torch.randn(2, 8000), ["a", "b"]), AB, CTCSettings(steps=3, batch_size=2, checks=1), seed=0,
                 device="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(conv, backbone.conv.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(blocks, backbone.blocks.parameters()))


def test_finetune_ctc_through_the_commands(tmp_path, capsys):
    from selfsup.cli import main
    from small_data import write_tones
    tones = write_tones(tmp_path / "tones", per_class=8)
    manifest = tmp_path / "said.jsonl"
    files = sorted(tones.rglob("*.wav"))
    with open(manifest, "w") as f:
        for i, path in enumerate(files):
            f.write(json.dumps({"path": str(path), "transcript": f"{path.parent.name} tone",
                                "part": ["train", "train", "val", "test"][i % 4]}) + "\n")
    runs = tmp_path / "runs"
    assert main(["pretrain", "--method", "wav2vec2", "--data", str(tones), "--runs-dir", str(runs), "--name", "w",
                 "--quiet", "train.steps=2", "train.threads=1", "eval.online_every=0", "eval.report=false",
                 "eval.after_pretrain=[]", "train.batch_size=8", "audio.seconds=0.5", "backbone.width=0.0625",
                 "backbone.dim=16", "backbone.heads=2", "method.codebook_entries=8", "method.final_dim=16",
                 "method.negatives=4"]) == 0
    capsys.readouterr()
    assert main(["finetune-ctc", str(runs / "w"), "--data", str(manifest), "--labels", "50%", "--baseline",
                 "--steps", "5", "--batch-size", "4", "--seconds", "0.5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "characters ' adefgilnorsty'" in out and "from scratch" in out
    rows = [json.loads(line) for line in (runs / "w" / "eval" / "ctc.jsonl").read_text().splitlines()]
    assert [(r["init"], r["labels"], r["clips"]) for r in rows] == [("pretrained", "50%", 6), ("from scratch", "50%", 6)]
    assert all(r["wer"] >= 0 and r["cer"] >= 0 and len(r["val_cer_checks"]) == 5 for r in rows)
    assert all(r["settings"]["freeze_features"] and r["units"] == "characters" for r in rows)
    assert main(["finetune-ctc", str(runs / "w"), "--data", str(manifest), "--labels", "50%", "--units", "words",
                 "--steps", "2", "--batch-size", "4", "--seconds", "0.5", "--quiet"]) == 0
    assert "words falling rising steady tone" in capsys.readouterr().out
    last = json.loads((runs / "w" / "eval" / "ctc.jsonl").read_text().splitlines()[-1])
    assert last["units"] == "words" and last["init"] == "pretrained"
    assert main(["finetune-ctc", str(runs / "w"), "--data", str(tones / "rising" / "0.wav")]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_spoken_words_folder_fetched_before_the_digit_strings_is_refused_with_what_to_do(tmp_path, monkeypatch):
    from selfsup.data import fetch
    from selfsup.evaluate.ctc import transcribed_clips
    (tmp_path / "clips.jsonl").write_text("")
    monkeypatch.setattr(fetch, "find", lambda name, data_dir=None: tmp_path)
    with pytest.raises(DataError, match="fetched before spoken-words had digit strings: remove the folder"):
        transcribed_clips("spoken-words", 5.0, 16000)
    manifest = tmp_path / "said.jsonl"
    manifest.write_text(json.dumps({"path": "a.wav"}) + "\n")
    import numpy as np
    import soundfile
    soundfile.write(tmp_path / "a.wav", 0.3 * np.sin(np.arange(8000) / 5), 16000)
    with pytest.raises(DataError, match="needs a \"transcript\""):
        transcribed_clips(str(manifest), 0.5, 16000)


def test_transcripts_the_frames_cannot_hold_and_clips_longer_than_read_are_refused(tmp_path):
    import numpy as np
    import soundfile
    from selfsup.evaluate.ctc import check_alignable, transcribed_clips
    check_alignable([torch.tensor([1, 2, 3]), torch.tensor([1, 1])], frames=3, seconds=1.0)     # "aa" needs 3
    with pytest.raises(DataError, match=r"1 of 2 transcripts need more than the 3 frames .* \(up to 4\)"):
        check_alignable([torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2])], frames=3, seconds=1.0)
    soundfile.write(tmp_path / "long.wav", 0.3 * np.sin(np.arange(32000) / 5), 16000)       # two seconds
    manifest = tmp_path / "said.jsonl"
    manifest.write_text(json.dumps({"path": "long.wav", "transcript": "one two"}) + "\n")
    with pytest.raises(DataError, match="last longer than 1 s, e.g. long.wav"):
        transcribed_clips(str(manifest), 1.0, 16000)
    assert len(transcribed_clips(str(manifest), 2.0, 16000)) == 1
