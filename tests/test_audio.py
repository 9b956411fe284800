"""Sound (issue 26): reading any audio file into clips, the log-mel front end against a reference
computed here, the batched views, the spoken-words set and a training run through the trainer."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from selfsup.audio.data import load_audio
from selfsup.audio.frontend import LogMel, dct_matrix, mel_corners, mel_filterbank, mfcc
from selfsup.audio.io import UnreadableAudio, read_clip, resample, soundfile_module, to_int16, wav_bytes
from selfsup.audio.views import (AudioInputs, WaveformInputs, mel_statistics, mix_power, resampled_crop, shift_pitch,
                                 spec_masks, stretch_time)
from selfsup.backbones import build_backbone
from selfsup.build import build_method
from selfsup.config import AudioConfig, load_config
from selfsup.data.holdout import PARTS
from selfsup.errors import ConfigError, DataError
from selfsup.run import load_run

from small_data import write_tones

soundfile = pytest.importorskip("soundfile")
RATE = 16000


def tone(frequency, seconds, rate, amplitude=0.5, phase=0.0):
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t + phase)


# ---------------------------------------------------------------- reading files

@pytest.mark.parametrize("rate", [8000, 22050, 44100, 96000])
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_any_rate_and_sample_format_reads_as_the_same_tone_at_16_khz(tmp_path, rate, subtype):
    path = tmp_path / "tone.wav"
    soundfile.write(path, tone(440, 0.5, rate), rate, subtype=subtype)
    clip = read_clip(path, RATE, seconds=1.0)
    assert clip.shape == (RATE,) and clip.dtype == torch.float32
    expected = torch.from_numpy(tone(440, 0.5, RATE)).float()
    inner = slice(400, 7600)                      # away from the ends, where a periodic resampling wraps
    tolerance = 0.02 if subtype == "PCM_U8" else 2e-3
    assert torch.allclose(clip[inner], expected[inner], atol=tolerance)
    assert clip[8100:].abs().max() == 0           # padded with silence after the half second


@pytest.mark.parametrize("channels", [2, 6])
def test_several_channels_are_averaged_to_mono(tmp_path, channels):
    frames = np.stack([tone(300, 0.3, RATE) * (c + 1) / channels for c in range(channels)], axis=1)
    soundfile.write(tmp_path / "many.wav", frames, RATE)
    clip = read_clip(tmp_path / "many.wav", RATE, seconds=0.3)
    assert torch.allclose(clip, torch.from_numpy(frames.mean(1)).float(), atol=1e-4)


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_compressed_formats_read(tmp_path, suffix):
    soundfile.write(tmp_path / f"a{suffix}", tone(500, 0.4, RATE), RATE)
    clip = read_clip(tmp_path / f"a{suffix}", RATE, seconds=0.4)
    assert torch.corrcoef(torch.stack([clip, torch.from_numpy(tone(500, 0.4, RATE)).float()]))[0, 1] > 0.99


def test_a_long_file_is_read_only_as_far_as_the_clip_needs(tmp_path, monkeypatch):
    soundfile.write(tmp_path / "long.wav", tone(200, 60.0, 8000), 8000)      # a minute; the clip wants 1 s
    asked = []
    real_read = soundfile.read

    def spy(path, frames=-1, **kwargs):
        asked.append(frames)
        return real_read(path, frames=frames, **kwargs)
    monkeypatch.setattr(soundfile, "read", spy)
    clip = read_clip(tmp_path / "long.wav", RATE, seconds=1.0)
    assert asked == [8000] and clip.shape == (RATE,)


def test_cut_every_reads_a_clip_from_every_interval_of_each_whole_file(tmp_path, monkeypatch):
    rate = 8000
    steps = np.concatenate([tone(200 * (k + 1), 1.0, rate) for k in range(4)])[:round(3.5 * rate)]  # 3.5 s
    (tmp_path / "talk").mkdir()
    soundfile.write(tmp_path / "talk" / "long.wav", steps, rate)
    soundfile.write(tmp_path / "talk" / "short.wav", tone(300, 0.3, rate), rate)
    starts = []
    real_read = soundfile.read

    def spy(path, start=0, frames=-1, **kwargs):
        starts.append((start, frames))
        return real_read(path, start=start, frames=frames, **kwargs)
    monkeypatch.setattr(soundfile, "read", spy)
    data = load_audio(tmp_path, RATE, 1.0, cut_every=1.0)
    assert data.paths == ["talk/long.wav", "talk/long.wav@1s", "talk/long.wav@2s", "talk/long.wav@3s", "talk/short.wav"]
    assert sorted(starts) == [(0, 2400), (0, 8000), (8000, 8000), (16000, 8000), (24000, 4000)]   # never the whole file
    clips = data.clips.float() / 32767
    for k in range(4):                       # each piece holds its own second's tone
        expected = torch.from_numpy(tone(200 * (k + 1), 0.5, RATE)).float()
        assert torch.corrcoef(torch.stack([clips[k, :RATE // 2], expected]))[0, 1] > 0.99
    assert clips[3, RATE // 2 + 10:].abs().max() == 0          # the last piece is half a second, padded
    assert len(set(data.parts[:4])) == 1                        # one recording, one part
    assert len(load_audio(tmp_path, RATE, 1.0, cut_every=0.5)) == 7 + 1
    assert load_audio(tmp_path, RATE, 1.0).paths == ["talk/long.wav", "talk/short.wav"]


def test_resampling_keeps_what_fits_below_the_new_nyquist_frequency_and_drops_the_rest():
    high = torch.from_numpy(tone(9000, 1.0, 22050))       # above 8 kHz: 16 kHz cannot hold it
    low = torch.from_numpy(tone(1000, 1.0, 22050))
    assert resample(high, 22050, RATE).abs().max() < 1e-6
    assert torch.allclose(resample(low, 22050, RATE), torch.from_numpy(tone(1000, 1.0, RATE)), atol=1e-6)


def write_bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    soundfile.write(folder / "whole.wav", tone(300, 0.5, RATE), RATE)
    data = (folder / "whole.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[:30])                     # the header cut short
    (folder / "text.wav").write_text("this is not sound")
    soundfile.write(folder / "tick.wav", tone(300, 0.001, RATE), RATE)     # 1 ms
    soundfile.write(folder / "silent.wav", np.zeros(RATE // 2), RATE)


@pytest.mark.parametrize("name, why", [("empty.wav", "not readable"), ("truncated.wav", "not readable"),
                                       ("text.wav", "not readable"), ("tick.wav", "shorter than"),
                                       ("silent.wav", "silent")])
def test_unreadable_short_and_silent_files_say_why(tmp_path, name, why):
    write_bad_files(tmp_path)
    with pytest.raises(UnreadableAudio, match=why):
        read_clip(tmp_path / name, RATE, seconds=1.0)


def test_a_folder_skips_bad_files_with_one_warning_and_strict_makes_them_an_error(tmp_path, capsys):
    for label in ("low", "high"):
        write_bad_files(tmp_path / label)
    data = load_audio(tmp_path, RATE, 0.5, labels=True)
    assert len(data) == 2 and data.classes == ["high", "low"] and data.clips.dtype == torch.int16
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipped 10 unreadable audio file(s) of 12" in err
    with pytest.raises(DataError, match="cannot read audio file .*--strict"):
        load_audio(tmp_path, RATE, 0.5, labels=True, strict=True)


def test_a_manifest_gives_labels_speakers_and_parts_and_bad_lines_are_named(tmp_path):
    for i in range(4):
        soundfile.write(tmp_path / f"{i}.wav", tone(200 + 100 * i, 0.3, RATE), RATE)
    lines = [{"path": f"{i}.wav", "label": "ab"[i % 2], "speaker": f"s{i // 2}", "part": ["train", "test"][i // 2]}
             for i in range(4)]
    (tmp_path / "clips.jsonl").write_text("\n".join(map(json.dumps, lines)))
    data = load_audio(tmp_path / "clips.jsonl", RATE, 0.3, labels=True)
    assert data.parts == ["train", "train", "test", "test"] and data.speakers == ["s0", "s0", "s1", "s1"]
    assert data.labels.tolist() == [0, 1, 0, 1]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"file": "0.wav"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 1: each line needs a \"path\""):
        load_audio(tmp_path / "bad.jsonl", RATE, 0.3)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"path": "0.wav", "part": "dev"}) + "\n")
    with pytest.raises(DataError, match="part 'dev' is not one of"):
        load_audio(tmp_path / "bad.jsonl", RATE, 0.3)


def test_without_parts_a_speaker_never_falls_on_two_sides(tmp_path):
    lines = []
    for speaker in range(30):
        for k in range(3):
            soundfile.write(tmp_path / f"{speaker}-{k}.wav", tone(200 + 10 * k, 0.1, RATE), RATE)
            lines.append({"path": f"{speaker}-{k}.wav", "label": "abc"[k], "speaker": f"s{speaker}"})
    (tmp_path / "clips.jsonl").write_text("\n".join(map(json.dumps, lines)))
    data = load_audio(tmp_path, RATE, 0.1, labels=True)
    part_of_speaker = {}
    for speaker, part in zip(data.speakers, data.parts):
        assert part_of_speaker.setdefault(speaker, part) == part
    assert {"train", "test"} <= set(data.parts)


# ---------------------------------------------------------------- sets larger than memory (data.stream)

def same_sets(a, b):
    for part in PARTS:
        x, y = a.part(part), b.part(part)
        assert torch.equal(x.clips, y.clips) and x.paths == y.paths and torch.equal(x.labels, y.labels)


def test_a_streamed_set_is_the_in_memory_one_mapped_from_a_file_decoded_once(tmp_path, monkeypatch):
    data, cache = write_tones(tmp_path / "tones"), tmp_path / "cache"
    in_memory = load_audio(data, RATE, 0.5, labels=True)
    streamed = load_audio(data, RATE, 0.5, labels=True, stream="on", cache_dir=cache)
    assert not in_memory.on_disk and streamed.on_disk and len(streamed) == len(in_memory) == 72
    same_sets(in_memory, streamed)
    # Each part is one stretch of the file: a view of the mapped clips, not a copy in memory.
    train = streamed.part("train")
    assert train.on_disk and train.clips.untyped_storage().data_ptr() == streamed.clips.untyped_storage().data_ptr()
    assert not streamed.select([0, 2]).on_disk
    (cache_file,) = cache.glob("*.int16")
    assert cache_file.stat().st_size == 72 * RATE // 2 * 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr("selfsup.audio.data.read_clip", no_decoding)
    same_sets(in_memory, load_audio(data, RATE, 0.5, labels=True, stream="on", cache_dir=cache))
    soundfile.write(data / "rising" / "0.wav", tone(440, 0.5, RATE), RATE)        # a file changed: decoded anew
    with pytest.raises(AssertionError, match="decoded again"):
        load_audio(data, RATE, 0.5, labels=True, stream="on", cache_dir=cache)
    monkeypatch.undo()
    same_sets(load_audio(data, RATE, 0.5, labels=True), load_audio(data, RATE, 0.5, labels=True, stream="on",
                                                                  cache_dir=cache))


def test_an_interrupted_decoding_leaves_nothing_that_a_later_load_trusts(tmp_path, monkeypatch):
    data, cache = write_tones(tmp_path / "tones", per_class=8), tmp_path / "cache"
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return read_clip(*args, **kwargs)
    monkeypatch.setattr("selfsup.audio.data.read_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_audio(data, RATE, 0.5, stream="on", cache_dir=cache)
    assert not list(cache.glob("*.json")) and not list(cache.glob("*.partial")) and not list(cache.glob("*.int16"))
    monkeypatch.undo()
    assert torch.equal(load_audio(data, RATE, 0.5, stream="on", cache_dir=cache).part("train").clips,
                       load_audio(data, RATE, 0.5).part("train").clips)


def test_a_streamed_set_skips_bad_files_like_one_in_memory_also_when_read_from_the_file(tmp_path, capsys):
    for label in ("low", "high"):
        write_bad_files(tmp_path / "clips" / label)
    for _ in range(2):                             # decoded, then read from the file
        data = load_audio(tmp_path / "clips", RATE, 0.5, labels=True, stream="on", cache_dir=tmp_path / "cache")
        assert len(data) == 2 and data.on_disk and data.classes == ["high", "low"]
        with pytest.raises(DataError, match="cannot read audio file .*--strict"):
            load_audio(tmp_path / "clips", RATE, 0.5, labels=True, strict=True, stream="on",
                       cache_dir=tmp_path / "cache")
    assert "skipped 10 unreadable audio file(s) of 12" in capsys.readouterr().err


def test_auto_streams_a_set_that_would_fill_a_quarter_of_the_memory(tmp_path, monkeypatch, capsys):
    data = write_tones(tmp_path / "tones", per_class=4)
    assert not load_audio(data, RATE, 0.5, stream="auto", cache_dir=tmp_path / "cache").on_disk
    monkeypatch.setattr("selfsup.data.stream.memory_bytes", lambda: 2 * 12 * RATE)    # 12 clips of 16 KB: half of it
    assert load_audio(data, RATE, 0.5, stream="auto", cache_dir=tmp_path / "cache").on_disk
    assert "would take 0.0 GiB decoded" in capsys.readouterr().err


def test_pretraining_on_a_streamed_set_trains_exactly_as_in_memory_and_evaluates(tmp_path, monkeypatch):
    from selfsup.cli import main
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "data-root"))
    data, runs = write_tones(tmp_path / "tones", per_class=12), tmp_path / "runs"
    for name, stream in (("memory", "off"), ("disk", "on")):
        assert main(["pretrain", "--method", "simclr", "--data", str(data), "--runs-dir", str(runs), "--name", name,
                     "--quiet", "data.modality=audio", "audio.seconds=0.5", "audio.crop_seconds=0.4", "train.steps=3",
                     f"data.stream={stream}",
                     "eval.after_pretrain=[knn]", *FAST]) == 0
    assert list((tmp_path / "data-root" / "audio-cache").glob("*.int16"))
    weights = [load_run(runs / name).method.state_dict() for name in ("memory", "disk")]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
    knn = [json.loads((runs / name / "eval" / "knn.json").read_text())["knn_top1"] for name in ("memory", "disk")]
    assert knn[0] == knn[1]


# ---------------------------------------------------------------- the front end

def reference_log_mel(wave, rate, n_fft, hop, n_mels, f_min, f_max):
    """The textbook computation, one frame at a time, in float64 numpy."""
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)        # periodic Hann
    frames = [padded[i * hop:i * hop + n_fft] * window for i in range(1 + len(wave) // hop)]
    power = np.abs(np.fft.rfft(np.array(frames), axis=1)) ** 2                 # (frames, bins)
    mel = lambda f: 2595 * np.log10(1 + f / 700)                              # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)                               # noqa: E731
    corners = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    bank = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = corners[m:m + 3]
        for j, f in enumerate(freqs):
            if lo < f <= mid:
                bank[m, j] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                bank[m, j] = (hi - f) / (hi - mid)
    return np.log(bank @ power.T + 1e-6)


def test_log_mel_equals_the_textbook_computation():
    rng = np.random.default_rng(0)
    wave = tone(440, 0.25, RATE) + 0.1 * rng.standard_normal(RATE // 4)
    ours = LogMel(RATE, 400, 160, 40, 60.0, 7800.0)(torch.from_numpy(wave).float()[None])[0]
    expected = reference_log_mel(wave, RATE, 400, 160, 40, 60.0, 7800.0)
    assert ours.shape == expected.shape == (40, 26)
    assert np.allclose(ours.numpy(), expected, atol=1e-3)


def test_a_tone_lights_the_mel_filter_around_its_frequency():
    bank = mel_filterbank(201, 64, RATE, 60.0, 7800.0)
    spectrogram = LogMel(RATE, 400, 160, 64, 60.0, 7800.0)(torch.from_numpy(tone(1000, 0.5, RATE)).float()[None])
    loudest = int(spectrogram[0].mean(1).argmax())
    assert int(bank[1000 * 400 // RATE].argmax()) == loudest


def test_mfcc_is_the_orthonormal_dct_of_the_log_mel():
    basis = dct_matrix(64, 64)
    assert torch.allclose(basis.T @ basis, torch.eye(64), atol=1e-5)
    log_mel = torch.randn(2, 64, 7)
    n = np.arange(64)
    direct = np.array([[np.sqrt((1 if k else 0.5) * 2 / 64) * np.sum(log_mel[b, :, t].numpy()
                        * np.cos(np.pi / 64 * (n + 0.5) * k)) for t in range(7)] for b in range(2) for k in range(13)])
    assert np.allclose(mfcc(log_mel, 13).numpy().reshape(-1, 7), direct.reshape(-1, 7), atol=1e-4)


# ---------------------------------------------------------------- views

def clips(n=8, seconds=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    waves = torch.stack([torch.from_numpy(tone(200 + 50 * i, seconds, RATE)).float() for i in range(n)])
    return to_int16(waves + 0.05 * torch.randn(waves.shape, generator=gen))


def test_views_are_a_function_of_the_generator_and_have_the_crop_shape():
    cfg = AudioConfig()
    inputs = AudioInputs(cfg)
    a = inputs.views(clips(), torch.Generator().manual_seed(3), 2)
    b = inputs.views(clips(), torch.Generator().manual_seed(3), 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    assert a[0].shape == (8, 1, 64, 1 + round(0.8 * RATE) // 160)
    assert inputs.eval(clips()).shape == (8, 1, 64, 101)


def test_a_view_with_every_augmentation_off_is_the_evaluation_view():
    data = clips()
    mean, std = mel_statistics(data, AudioConfig())
    cfg = AudioConfig(crop_seconds=1.0, gain_db=0.0, noise_p=0.0, mix_p=0.0, crop_scale=[1.0, 1.0], freq_masks=0,
                      time_masks=0, mel_mean=mean, mel_std=std)
    inputs = AudioInputs(cfg)
    view = inputs.views(data, torch.Generator().manual_seed(0), 1)[0]
    assert torch.allclose(view, inputs.eval(data), atol=1e-5)
    whole = inputs.eval(data)
    assert abs(float(whole.mean())) < 1e-3 and abs(float(whole.std()) - 1) < 0.05     # normalised per bin


def test_resampling_a_crop_reads_every_rate_th_sample_and_moves_a_tone_by_the_rate():
    waves = torch.arange(100.0).repeat(2, 1)
    assert torch.equal(resampled_crop(waves, 10, torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])),
                       torch.stack([torch.arange(0.0, 20.0, 2.0), torch.arange(90.0, 100.0)]))
    assert torch.allclose(resampled_crop(waves[:1], 3, torch.zeros(1), torch.tensor([0.5])),
                          torch.tensor([[0.0, 0.5, 1.0]]))                      # between samples: interpolated
    tone_hz, rate = 500.0, 1.1
    wave = torch.from_numpy(tone(tone_hz, 1.0, RATE)).float()[None]
    faster = resampled_crop(wave, RATE // 2, torch.zeros(1), torch.tensor([rate]))
    peak_hz = torch.fft.rfft(faster[0]).abs().argmax().item() * RATE / faster.shape[1]
    assert abs(peak_hz - rate * tone_hz) <= 2.0                                  # pitch up by the rate


@pytest.mark.parametrize("inputs_class, setting", [(AudioInputs, "speed"), (WaveformInputs, "speed"),
                                                    (AudioInputs, "time_stretch"), (AudioInputs, "pitch_shift")])
def test_speed_stretch_and_pitch_change_views_only_when_asked_and_stay_seeded(inputs_class, setting):
    data = clips()

    def views(**values):
        return inputs_class(AudioConfig(**values)).views(data, torch.Generator().manual_seed(1), 2)
    plain, also_plain = views(), views(**{setting: 0.0})
    changed, again = views(**{setting: 0.1}), views(**{setting: 0.1})
    assert all(torch.equal(a, b) for a, b in zip(plain, also_plain))      # off: the same draws as before
    assert all(torch.equal(a, b) for a, b in zip(changed, again))
    assert changed[0].shape == plain[0].shape and not torch.allclose(changed[0], plain[0])


def test_speed_stretch_and_pitch_settings_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="audio.speed and audio.time_stretch must be in"):
        load_config(overrides=["audio.speed=1.5"])
    with pytest.raises(ConfigError, match="audio.pitch_shift must be in"):
        load_config(overrides=["audio.pitch_shift=13"])
    with pytest.raises(ConfigError, match="audio.cut_every must be >= 0"):
        load_config(overrides=["audio.cut_every=-1"])


def test_time_stretch_moves_an_onset_by_the_rate_and_pitch_shift_moves_a_tone_by_the_factor():
    onset = torch.zeros(2, 3, 100)
    onset[..., 40:] = 1.0                                             # a sound that starts at frame 40
    stretched = stretch_time(onset, torch.tensor([2.0, 0.5]), fill=-5.0)
    assert stretched[0, 0, :20].eq(0).all() and stretched[0, 0, 20:50].eq(1).all()   # twice as fast: at 20
    assert stretched[0, 0, 50:].eq(-5).all()                                            # past the end: silence
    assert stretched[1, 0, :79].eq(0).all() and stretched[1, 0, 80:].eq(1).all()     # half as fast: at 80
    assert stretched[1, 0, 79] == 0.5                                                   # (39.5: between frames)
    assert torch.equal(stretch_time(onset, torch.ones(2), fill=-5.0), onset)
    cfg = AudioConfig()
    centres = mel_corners(cfg.n_mels, cfg.f_min, cfg.f_max)[1:-1].float()
    log_mel = LogMel(RATE, cfg.n_fft, cfg.hop, cfg.n_mels, cfg.f_min, cfg.f_max)(
        torch.from_numpy(tone(500.0, 0.5, RATE)).float()[None])
    octave_up = shift_pitch(log_mel, torch.tensor([2.0]), centres, fill=-14.0)
    peak = centres[octave_up[0].mean(1).argmax()].item()
    assert abs(peak - 1000.0) < (centres[1:] - centres[:-1]).max()    # within a bin of the octave
    assert torch.allclose(shift_pitch(log_mel, torch.ones(1), centres, fill=-14.0), log_mel, atol=1e-5)
    below = centres < 2 * centres[0]                                  # an octave up, these read below the first bin
    assert octave_up.shape == log_mel.shape and below.sum() > 0
    assert (octave_up[0, below] == -14.0).all() and (octave_up[0, ~below] > -14.0).all()


def test_mixing_adds_a_share_of_another_clips_power():
    power = torch.rand(3, 4, 5)
    mixed = mix_power(power, torch.tensor([0.0, 0.25, 0.4]), torch.tensor([2, 0, 1]))
    assert torch.equal(mixed[0], power[0])
    assert torch.allclose(mixed[1], 0.75 * power[1] + 0.25 * power[0])
    assert torch.allclose(mixed[2], 0.6 * power[2] + 0.4 * power[1])


@pytest.mark.parametrize("dim", [2, 3])
def test_spec_masks_zero_whole_bands_no_wider_than_the_setting(dim):
    x = torch.ones(64, 1, 20, 30)
    u = torch.rand(64, 2, generator=torch.Generator().manual_seed(1))
    masked = spec_masks(x, 1, 6, u, dim)
    zero_rows = (masked == 0).all(dim=5 - dim)[:, 0]          # (B, size): rows (or columns) zeroed whole
    assert torch.equal((masked == 0).any(dim=5 - dim)[:, 0], zero_rows)
    widths = zero_rows.sum(1)
    assert widths.max() <= 6 and widths.min() == 0 and len(set(widths.tolist())) > 3
    runs = (zero_rows[:, 1:] & ~zero_rows[:, :-1]).sum(1) + zero_rows[:, 0]
    assert runs.max() <= 1                                    # one contiguous band


# ---------------------------------------------------------------- config and methods

def test_joint_embedding_methods_train_on_sound_and_others_say_which_do():
    cfg = load_config(overrides=["method.name=simclr", "data.modality=audio", "data.source=x"])
    assert cfg.modality == "audio"
    assert load_config(overrides=["method.name=simclr", "data.source=spoken-words"]).modality == "audio"
    assert load_config(overrides=["method.name=simclr"]).modality == "image"
    with pytest.raises(ConfigError, match="for audio choose one of: .*byola.*simclr"):
        load_config(overrides=["method.name=mae", "data.modality=audio"])
    with pytest.raises(ConfigError, match="audio.crop_seconds must be in"):
        load_config(overrides=["method.name=simclr", "data.modality=audio", "audio.crop_seconds=2"])


def test_sound_trains_byola_as_encoder_unless_a_backbone_is_named():
    cfg = load_config(overrides=["method.name=simclr", "data.modality=audio", "data.source=x"])
    assert (cfg.backbone.name, cfg.backbone.dim, cfg.backbone.dropout) == ("audio_cnn", 2048, 0.3)
    cfg = load_config(overrides=["method.name=simclr", "data.modality=audio", "data.source=x", "backbone.dim=512"])
    assert (cfg.backbone.name, cfg.backbone.dim) == ("audio_cnn", 512)
    cfg = load_config(overrides=["method.name=simclr", "data.modality=audio", "data.source=x",
                                 "backbone.name=resnet18", "backbone.stem=imagenet"])
    assert (cfg.backbone.name, cfg.backbone.dim, cfg.backbone.dropout) == ("resnet18", 128, 0.1)
    image = load_config(overrides=["method.name=simclr"]).backbone
    assert (image.name, image.dim) == ("resnet18", 128)


def test_the_audio_encoder_has_the_papers_layers_and_pools_only_over_time():
    torch.manual_seed(0)
    net = build_backbone("audio_cnn", image_size=64, dim=32, dropout=0.0, width=0.25).eval()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 16, (3, 3)), (16, 16, (3, 3)),
                                                                               (16, 16, (3, 3))]
    assert net.frames[0].in_features == 16 * 64 // 8 and net.feature_dim == 32
    x = torch.randn(3, 1, 64, 101)
    with torch.no_grad():
        frames = net.frame_features(x)
        assert frames.shape == (3, 101 // 8, 32)
        torch.testing.assert_close(net(x), frames.amax(1) + frames.mean(1))
        # Only time is pooled: the same sound moved up in frequency is another input, moved in time the same.
        low = torch.zeros(1, 1, 64, 96)
        low[..., 8:16, 40:56] = 3.0
        high, later = low.roll(32, dims=2), low.roll(16, dims=3)
        low_f, high_f, later_f = (net(v) for v in (low, high, later))
    torch.testing.assert_close(later_f, low_f)
    assert float((high_f - low_f).norm()) > 0.05 * float(low_f.norm())
    with pytest.raises(ValueError, match="at least 8 mel bins"):
        build_backbone("audio_cnn", image_size=4)


def test_byola_takes_its_papers_recipe_and_both_views_from_one_segment():
    cfg = load_config(overrides=["method.name=byola", "data.source=x"])
    assert cfg.modality == "audio"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 3e-4, 0.0)
    assert (cfg.backbone.name, cfg.backbone.dim, cfg.backbone.dropout) == ("audio_cnn", 2048, 0.3)   # the paper's encoder
    assert (cfg.audio.crop_seconds, cfg.audio.mix_ratio, cfg.audio.freq_masks, cfg.audio.time_masks) == (0.0, 0.4, 0, 0)
    method = build_method(cfg)
    assert isinstance(method.inputs, AudioInputs)
    views = method.views(clips(), torch.Generator().manual_seed(0))
    assert len(views) == 2 and views[0].shape == (8, 1, 64, 101)
    loss, _ = method.loss(views)
    assert math.isfinite(float(loss.detach()))


# ---------------------------------------------------------------- spoken-words

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@needs_espeak
def test_spoken_words_holds_voices_out_and_has_one_second_words_and_digit_strings(tmp_path, monkeypatch):
    from selfsup.audio import spoken_words
    monkeypatch.setattr(spoken_words, "ACCENTS", ("en-us", "en-gb"))
    monkeypatch.setattr(spoken_words, "VARIANTS", ("m1", "f2", "klatt", "m3", "f4"))
    recipe = spoken_words.SpokenWordsRecipe(renditions=1, strings_per_voice=3)
    count = spoken_words.build_spoken_words(tmp_path, recipe, log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "clips.jsonl").read_text().splitlines()]
    assert count == len(records) == 10 * 20
    parts = {}
    for record in records:
        assert parts.setdefault(record["speaker"], record["part"]) == record["part"]
    assert sorted(parts.values()) == ["test"] * 2 + ["train"] * 7 + ["val"]
    info = soundfile.info(tmp_path / records[0]["path"])
    assert (info.samplerate, info.frames, info.channels) == (RATE, RATE, 1)
    data = load_audio(tmp_path, RATE, 1.0, labels=True)
    assert len(data.classes) == 20 and len(data) == 200
    # Digit strings: the same voices on the same sides, 2-6 digits in five seconds.
    strings = load_audio(tmp_path / spoken_words.DIGIT_STRINGS, RATE, 5.0)
    assert len(strings) == 30 and strings.clips.shape[1] == 5 * RATE
    for transcript, speaker, part in zip(strings.transcripts, strings.speakers, strings.parts):
        said = transcript.split()
        assert 2 <= len(said) <= 6 and set(said) <= set(spoken_words.DIGITS) and parts[speaker] == part
    assert len(set(strings.transcripts)) > 20


# ---------------------------------------------------------------- through the commands

FAST = ["train.threads=1", "train.log_every=5", "eval.online_every=0", "eval.report=false", "backbone.width=0.125",
        "train.batch_size=16"]


def test_a_clip_becomes_a_wav_file_that_reads_back_as_the_same_samples(tmp_path):
    clip = clips(n=1)[0]
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(clip, RATE))
    samples, rate = soundfile_module().read(str(path), dtype="int16")          # libsndfile reads it back
    assert rate == RATE and torch.equal(torch.from_numpy(samples), clip)


def test_audio_run_end_to_end(tmp_path, capsys):
    from selfsup.cli import main
    data = write_tones(tmp_path / "tones")
    runs = tmp_path / "runs"
    assert main(["pretrain", "--method", "byola", "--data", str(data), "--runs-dir", str(runs), "--name", "a",
                 "--quiet", "audio.seconds=0.5", "train.steps=6", "eval.after_pretrain=[knn]", *FAST]) == 0
    out = capsys.readouterr().out
    run = runs / "a"
    cfg = load_config(run / "config.yaml")
    assert cfg.modality == "audio" and len(cfg.audio.mel_mean) == 64 and cfg.audio.crop_seconds == 0
    knn = json.loads((run / "eval" / "knn.json").read_text())
    assert knn["raw_features"] == "MFCC statistics" and "MFCC statistics" in out
    for protocol in ("linear", "raw", "finetune"):
        extra = ["--steps", "4", "--batch-size", "8"] if protocol == "finetune" else []
        assert main(["evaluate", protocol, str(run), "--labels", "50%", "--quiet", *extra]) == 0
    rows = [json.loads(line) for line in (run / "eval" / "results.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["protocol"] != "knn"]         # the kNN table after pretraining
    assert [r["protocol"] for r in rows] == ["linear", "raw", "finetune"]
    assert rows[1]["mean"] > 0.6           # MFCC statistics tell a rising chirp from a falling one
    assert main(["report", str(run), "--quiet"]) == 0
    page = (run / "report.html").read_text()
    assert page.count('<audio controls preload="none" src="data:audio/wav;base64,') == 2 * 3    # 3 classes
    assert "Listen" in page and (run / "report" / "spectrograms.png").is_file()
    assert main(["embed", str(run), "--data", str(data), "--out", str(tmp_path / "emb.npy")]) == 0
    assert np.load(tmp_path / "emb.npy").shape[0] == 72
    assert main(["pretrain", "--resume", str(run), "--quiet", "train.steps=8"]) == 0


@pytest.mark.parametrize("method", ["simclr", "byol", "moco3", "barlow", "vicreg", "simsiam"])
def test_joint_embedding_methods_read_log_mel_views_of_sound(method):
    cfg = load_config(overrides=[f"method.name={method}", "data.modality=audio", "data.source=x", "backbone.width=0.125"])
    built = build_method(cfg)
    assert isinstance(built.inputs, AudioInputs)
    views = built.views(clips(), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(8, 1, 64, 81)] * 2
    loss, _ = built.loss(views)
    assert torch.isfinite(loss.detach())
    assert built.embed(clips()).shape == (8, built.backbone.feature_dim)
