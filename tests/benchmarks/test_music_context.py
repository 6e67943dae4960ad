"""`benchmarks/ar_long_context.py --task music`: the long-context benchmark on the chorales, here on a cache of three
real chorales at toy sizes, against a short-context Perceiver AR (its figures come from full runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perceivers.data import music

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ar_long_context.py"


def test_music_benchmark_trains_a_short_perceiver_ar_at_equal_flops(tmp_path):
    pytest.importorskip("music21")
    paths = music.chorale_paths()
    chosen = ([p for p in paths if not music.is_validation_piece(p.stem)][:2]
              + [p for p in paths if music.is_validation_piece(p.stem)][:1])
    music.save_pieces(music.cache_path(tmp_path / "cache"), music.encode_files(chosen))
    out = tmp_path / "mc.json"
    root = str(SCRIPT.parents[1])  # the checkout under test, installed or not
    env = {**os.environ, "PERCEIVERS_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--task", "music", "--context", "64", "--latents", "8",
                           "--baseline-context", "32", "--steps", "10", "--batch-size", "2", "--eval-windows", "2",
                           "--only", "baseline", "--no-progress", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"].startswith("Perceiver AR (M=32, N=8") and (row["context"], row["latents"]) == (32, 8)
    assert row["steps"] > 10  # equal compute: the shorter context gets more steps
    assert row["validation_nats_per_event"] > 0 and row["validation_targets"] == 2 * 8 - 1  # less the final EOS
    assert "validation nats/event" in proc.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), "--task", "music", "--context", "64", "--latents", "8",
                          "--baseline-context", "4"], check=False, capture_output=True, text=True, timeout=120,
                         env=env)
    assert bad.returncode == 2 and "--baseline-context 4" in bad.stderr
