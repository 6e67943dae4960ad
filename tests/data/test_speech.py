"""perceivers.data.speech: words synthesised with espeak-ng (espeakng-loader) in a child process: length, rate,
determinism, the held-out voices, the cache, placement with noise, and the errors (missing extra, unloadable
library, unknown voice)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from perceivers.core.errors import ConfigError, UserError
from perceivers.data import speech
from perceivers.data.speech import (
    WORDS,
    SpeechSettings,
    load_speech,
    place_words,
    prepare_word,
    resample,
    synthesize,
    synthesize_raw,
)

TINY = SpeechSettings(accents=("en-us",), train_variants=("m1",), test_variants=("f2",), renditions=1)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """The words of TINY (20 training words by en-us+m1, 20 test words by en-us+f2), cached in a fresh folder."""
    cache = tmp_path_factory.mktemp("speech-cache")
    return load_speech(TINY, str(cache)), cache


def test_one_word_is_deterministic_non_silent_and_at_the_right_rate():
    word = synthesize("seven", "en-us+f2", rate=175, pitch=50)  # child process 1
    version, (raw,) = synthesize_raw([("seven", "en-us+f2", 175, 50)])  # child process 2: the same samples
    assert version == speech.espeak_version() and raw.dtype == np.int16 and len(raw) > 0.3 * 22_050
    assert np.array_equal(word, prepare_word(raw, 16_000, 16_000))
    assert word.dtype == np.float32 and abs(float(np.abs(word).max()) - 0.9) < 1e-6
    assert 0.25 * 16_000 < len(word) <= 16_000 and float(np.sqrt(np.mean(word ** 2))) > 0.05
    # the same word at 8 kHz lasts as long: half the samples
    assert abs(len(prepare_word(raw, 8_000, 8_000)) * 2 - len(word)) <= 4


def test_resample_keeps_the_frequency():
    t = np.arange(22_050) / 22_050
    out = resample(np.sin(2 * np.pi * 1000 * t), 22_050, 16_000)
    assert out.shape == (16_000,) and out.dtype == np.float32
    assert int(np.argmax(np.abs(np.fft.rfft(out)))) == 1000  # 1 s at 16 kHz: bin k is k Hz
    assert float(np.abs(out).max()) == pytest.approx(1.0, abs=0.01)


def test_held_out_voices_never_train(tiny_split):
    default = SpeechSettings()
    assert not set(default.train_voices()) & set(default.test_voices())
    assert not set(default.train_variants) & set(default.test_variants) and len(default.test_voices()) == 24
    split, _ = tiny_split
    assert set(split.train.voices) == {"en-us+m1"} and set(split.test.voices) == {"en-us+f2"}
    assert split.train.labels.tolist() == list(range(len(WORDS))) == split.test.labels.tolist()
    with pytest.raises(ConfigError, match=r"test_variants=.*not training variants \(m1 are\)"):
        SpeechSettings(train_variants=("m1", "f1"), test_variants=("m1",))
    with pytest.raises(ConfigError, match=r"accents=\(\) is invalid"):
        SpeechSettings(accents=())


def test_split_is_cached_atomically_and_deterministic(tiny_split):
    split, cache = tiny_split
    path = speech.cache_path(TINY, cache)
    assert path.is_file() and path.parent == cache / "speech" and speech.espeak_version() in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    again = speech.read_words_file(path, TINY, split.espeak_version)  # what the next process reads
    assert torch.allclose(again.train.audio, split.train.audio, atol=1e-3, rtol=1e-3)
    assert torch.equal(again.train.lengths, split.train.lengths) and again.test.voices == split.test.voices
    fresh = speech.synthesize_split(TINY)  # a new synthesis gives the same samples
    assert torch.equal(fresh.test.audio, split.test.audio) and torch.equal(fresh.train.audio, split.train.audio)
    path.write_bytes(b"not an npz")  # an unreadable cache file is rebuilt
    load_speech.cache_clear()
    rebuilt = load_speech(TINY, str(cache))
    assert torch.equal(rebuilt.test.lengths, split.test.lengths) and path.stat().st_size > 1000


def test_place_words_offsets_gain_and_noise(tiny_split):
    words = tiny_split[0].train
    index = torch.tensor([3, 3])
    length = int(words.lengths[3])
    clean = place_words(words, index, 16_000, offsets=torch.tensor([100, 10**6]), gains=torch.tensor([1.0, 0.5]),
                        snr_db=torch.tensor([200.0, 200.0]))
    word = words.audio[int(words.starts[3]):int(words.starts[3]) + length]
    assert torch.allclose(clean[0, 100:100 + length], word, atol=1e-6) and float(clean[0, :100].abs().max()) < 1e-6
    assert torch.allclose(clean[1, -length:], 0.5 * word, atol=1e-6)  # the offset is clamped: the word fits
    noisy = place_words(words, index[:1], 16_000, offsets=torch.tensor([0]), gains=torch.tensor([1.0]),
                        snr_db=torch.tensor([10.0]), generator=torch.Generator().manual_seed(0))
    noise_power = float(noisy[0, length:].pow(2).mean())
    word_power = float(word.pow(2).mean())
    assert 10 * np.log10(word_power / noise_power) == pytest.approx(10.0, abs=0.5)


def test_missing_extra_and_unloadable_library_are_user_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import espeakng_loader -> ImportError
    with pytest.raises(UserError, match=r"needs espeakng-loader.*pip install 'perceivers\[speech\]'"):
        synthesize("one")
    monkeypatch.undo()
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak-ng.so")
    speech.espeak_version.cache_clear()
    try:
        with pytest.raises(UserError, match=r"could not load the espeak-ng library /nonexistent"):
            speech.espeak_version()
        with pytest.raises(UserError, match=r"could not load the espeak-ng library /nonexistent.*perceivers\[speech"):
            synthesize("one")  # the child process reports it
    finally:
        speech.espeak_version.cache_clear()


def test_unknown_voice_is_a_config_error():
    with pytest.raises(ConfigError, match=r"voice='xx-nonexistent\+m1' is invalid"):
        synthesize("one", "xx-nonexistent+m1")


def test_unwritable_cache_folder_is_a_warning(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="could not cache the synthesised words"):
        split = load_speech(TINY, str(blocker))
    assert len(split.train) == len(WORDS) and blocker.read_text().startswith("a file")
