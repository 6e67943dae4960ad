"""Smoke runs of the Perceiver AR benchmark scripts at toy sizes (their figures come from full runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_long_context_benchmark_shares_wavelengths_and_trains_one_model_on_request(tmp_path):
    out = tmp_path / "lc.json"
    _run("ar_long_context.py", "--context", "64", "--latents", "16", "--steps", "8", "--eval-windows", "2",
         "--batch-size", "2", "--only", "baseline", "--baseline-wavelength", "shared", "--no-progress",
         "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert [r["context"] for r in results] == [16]  # the baseline only
    baseline = results[0]
    assert baseline["max_wavelength"] == 64  # the Perceiver AR's range, not its own 16
    assert baseline["steps"] > 8  # equal compute: the cheaper model gets more steps
    assert baseline["validation_bits_per_byte"] > 0


def test_generation_speed_benchmark_reports_memory_traffic(tmp_path):
    out = tmp_path / "speed.json"
    stdout = _run("ar_generation_speed.py", "--prompt-len", "32", "--new-tokens", "6", "--latents", "8",
                  "--layers", "1", "--channels", "16", "--heads", "2", "--rounds", "1", "--window", "2",
                  "--skip", "krasserm", "lucidrains", "--json", str(out))
    ours = json.loads(out.read_text())["results"][0]
    # 1 latent layer, width 16: every parameter but the token embedding, plus K and V (2 x 4 bytes x 16
    # channels) of 32 + 3 inputs on average and 1 layer x (8 + 3) latents.
    from perceivers.models.perceiver_ar.model import PerceiverAR, PerceiverARConfig

    model = PerceiverAR(PerceiverARConfig(vocab_size=259, max_context_length=38, num_latents=8, num_channels=16,
                                          num_latent_channels=16, num_self_attend_layers=1,
                                          num_cross_attend_heads=2, num_self_attend_heads=2))
    weights = 4 * (model.num_parameters() - model.token_embedding.weight.numel())
    assert ours["bytes_per_token"] == weights + 2 * 4 * 16 * (35 + 11)
    assert "GB/s" in stdout and ours["read_bandwidth"] > 0
