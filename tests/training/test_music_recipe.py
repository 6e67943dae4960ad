"""`perceivers train music`: a tiny end-to-end run on three real chorales (train, metrics.json, eval), then
`perceivers generate --midi --piano-roll` on the result, and the errors of the music flags."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from perceivers.cli.main import main
from perceivers.core.errors import ConfigError
from perceivers.data import music
from perceivers.data.music import (
    ONSET,
    chorale_paths,
    encode_files,
    is_validation_piece,
)
from perceivers.training import EngineConfig, run_task
from perceivers.training.recipes import RECIPES
from perceivers.training.tasks_music import MusicTask

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda *a, **k: None}
TINY = {"context": 64, "num_latents": 8, "channels": 16, "num_layers": 1, "num_heads": 2, "eval_windows": 4}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A chorale cache of three real pieces (two training, one validation) in its own folder."""
    pytest.importorskip("music21")
    paths = chorale_paths()
    train = [p for p in paths if not is_validation_piece(p.stem)][:2]
    val = [p for p in paths if is_validation_piece(p.stem)][:1]
    folder = tmp_path_factory.mktemp("music-cache")
    pieces = encode_files(train + val)
    assert len(pieces) == 3
    music.save_pieces(music.cache_path(folder), pieces)
    return folder, pieces


def test_recipe_and_settings():
    recipe = RECIPES["music"]()
    assert isinstance(recipe.task, MusicTask) and recipe.task.model == "perceiver-ar-music"
    with pytest.raises(ConfigError, match="max_transpose=30"):
        MusicTask(max_transpose=30)
    with pytest.raises(ConfigError, match="eval_context=32.*context=64"):
        MusicTask(context=64, eval_context=32)
    with pytest.raises(ConfigError, match="model='perceiver-ar-copy'.*perceiver-ar-music"):
        MusicTask(model="perceiver-ar-copy").build_model()


def test_tiny_run_eval_and_generate(tmp_path, cache, capsys, monkeypatch):
    folder, pieces = cache
    task = MusicTask(cache_dir=str(folder), **TINY)
    engine = EngineConfig(steps=2, epochs=None, batch_size=4, lr=1e-3, log_every=1, eval_every=0)
    result = run_task(task, engine, tmp_path / "run", **QUIET)
    assert result["recipe"] == "music" and result["split"]["validation_pieces"] == 1
    # the last N = 8 targets of 4 windows, less the EOS that ends the last one (not an event)
    assert result["num_validation_events"] == 4 * 8 - 1
    nats = result["validation_nats_per_event"]
    assert 0 < nats < 10 and result["validation_bits_per_event"] == pytest.approx(nats / np.log(2))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["validation_nats_per_event"] == nats
    capsys.readouterr()
    model = str(tmp_path / "run" / "model")
    assert main(["eval", "music", "--checkpoint", model, "--cache-dir", str(folder), "--eval-windows", "4"]) == 0
    assert f"validation_nats_per_event: {nats}" in capsys.readouterr().out

    m21 = pytest.importorskip("music21")
    monkeypatch.setenv("PERCEIVERS_CACHE", str(folder))  # --prompt-piece reads the default cache
    name = min(pieces)
    mid, png = tmp_path / "out.mid", tmp_path / "roll.png"
    assert main(["generate", "--checkpoint", model, "--midi", str(mid), "--piano-roll", str(png), "--prompt-piece",
                 name, "--prompt-steps", "4", "--max-new-tokens", "32"]) == 0
    out = capsys.readouterr().out
    steps = int(re.match(f"wrote {re.escape(str(mid))}: (\\d+) 16th-note steps", out).group(1))
    assert 4 <= steps <= 12  # the prompt's 4 steps, then up to 32 events (an untrained model may end it early)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parsed = m21.converter.parse(str(mid))
    soprano = pieces[name][0::4]  # the prompt's first soprano note opens the MIDI file's first part
    first = next(iter(parsed.parts[0].flatten().notes))
    assert first.pitch.midi == int(soprano[soprano >= ONSET][0]) - ONSET
    notes = sum(len(p.flatten().notes) for p in parsed.parts)
    assert f", {notes} notes" in out
    assert main(["generate", "--checkpoint", model, "--midi", str(tmp_path / "x.mid"), "--prompt-piece", "bwv0"]) == 2
    assert "--prompt-piece='bwv0' is invalid: expected a chorale of the corpus" in capsys.readouterr().err


def test_music_flags_errors(tmp_path, capsys):
    text_model = tmp_path / "text"
    from perceivers.models import create_model

    create_model("perceiver-ar-debug").save_pretrained(text_model)
    cases = [(["--piano-roll", str(tmp_path / "a.png")], "--piano-roll and --prompt-piece need --midi"),
             (["--midi", str(tmp_path / "a.txt")], "--midi=.*a.txt.*a .mid file name"),
             (["--midi", str(tmp_path / "no" / "a.mid")], "a file in an existing folder"),
             (["--midi", str(tmp_path / "a.mid"), "--prompt", "x"], "--prompt is text"),
             (["--midi", str(tmp_path / "a.mid")], "is not a Perceiver AR over the chorale events")]
    for flags, message in cases:
        assert main(["generate", "--checkpoint", str(text_model), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("perceivers generate: error: ") and len(err.strip().splitlines()) == 1
        assert re.search(message, err), err
    assert not (tmp_path / "a.mid").exists()


def test_training_windows_are_transposed_by_up_to_max_transpose(cache, monkeypatch):
    import torch
    from torch.utils.data import default_collate

    from perceivers.training import tasks

    folder, _ = cache
    task = MusicTask(cache_dir=str(folder), **TINY)
    batch = default_collate([task.train_dataset(0)[i] for i in range(0, 400, 50)])
    seen = []
    monkeypatch.setattr(tasks, "lm_loss", lambda model, windows, lengths, n: seen.append(windows) or 0.0)
    torch.manual_seed(0)
    task.training_loss(None, batch)
    MusicTask(cache_dir=str(folder), max_transpose=0, **TINY).training_loss(None, batch)
    moved, plain = seen
    assert torch.equal(plain, batch[0])
    onset = batch[0] >= ONSET
    shift = moved - batch[0]  # (B, W): one shift per row, on its onsets only
    per_row = shift.sum(1) // onset.sum(1)
    assert torch.equal(moved[~onset], batch[0][~onset]) and per_row.abs().max() <= 5 and per_row.abs().sum() > 0
    assert torch.equal(shift, per_row[:, None] * onset)


def test_piano_roll_without_matplotlib_names_the_flag_and_the_extra(monkeypatch, tmp_path):
    import sys

    from perceivers.cli.music import draw_piano_roll
    from perceivers.core.errors import UserError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(UserError, match=r"^--piano-roll needs matplotlib: pip install 'perceivers\[plot\]'$"):
        draw_piano_roll([[(0, 4, 60)], [], [], []], 16, str(tmp_path / "r.png"))
    assert not (tmp_path / "r.png").exists()
