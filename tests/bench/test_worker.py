"""One worker process per case, at the tiny size: ours and transformers return sane JSON."""

from __future__ import annotations

import pytest

from perceivers.bench.runner import BenchSettings, run_worker, worker_argv
from perceivers.bench.spec import BenchSpec, matmul_flops

TINY = BenchSettings(ms=(12,), size="tiny", repeats=1, warmup=0, batch_train=2, batch_infer=3, threads=1)


@pytest.mark.parametrize("impl, mode", [("ours", "train"), ("transformers", "infer")])
def test_worker_returns_sane_json(impl, mode):
    if impl == "transformers":
        pytest.importorskip("transformers")
    result = run_worker(worker_argv(TINY, {"impl": impl, "mode": mode, "m": 12}), timeout_s=120)
    assert "error" not in result and "unavailable" not in result, result
    batch = 2 if mode == "train" else 3
    assert (result["impl"], result["mode"], result["m"], result["batch"]) == (impl, mode, 12, batch)
    assert result["params"] == 7173
    assert result["flops"] == matmul_flops(BenchSpec.tiny(), 12, batch, training=mode == "train")
    assert len(result["times_s"]) == 1 and result["median_s"] == result["times_s"][0] > 0
    assert result["peak_rss_mib"] >= result["base_rss_mib"] > 0
    assert result["threads"] == 1


def test_ours_gelu_is_ours_with_the_exact_gelu():
    import torch

    from perceivers.bench.peers import build

    spec = BenchSpec.tiny()
    (tanh, f_tanh, _, notes_tanh), (exact, f_exact, _, notes_exact) = build("ours", spec), build("ours-gelu", spec)
    assert sum(p.numel() for p in exact.parameters()) == sum(p.numel() for p in tanh.parameters()) == 7173
    assert (tanh.config.activation, exact.config.activation) == ("gelu_tanh", "gelu")
    assert "exact GELU" in notes_exact[0] and "tanh GELU" in notes_tanh[0]
    x = torch.randn(2, 12, spec.input_channels)
    with torch.no_grad():  # the same weights (seed 0), so only the activation tells the outputs apart
        assert not torch.equal(f_tanh(x), f_exact(x))
        torch.testing.assert_close(f_tanh(x), f_exact(x), rtol=0.05, atol=0.05)
    settings = BenchSettings(impls=("ours", "ours-gelu"))
    assert settings.impls == ("ours", "ours-gelu")


def test_bf16_weights_worker_runs_inference_in_bf16_and_refuses_training():
    case = {"impl": "ours", "mode": "infer", "m": 12, "precision": "bf16-weights"}
    result = run_worker(worker_argv(TINY, case), timeout_s=120)
    assert "error" not in result and result["precision"] == "bf16-weights" and result["median_s"] > 0, result
    refused = run_worker(worker_argv(TINY, {**case, "mode": "train"}), timeout_s=120)
    assert "inference only" in refused["unavailable"]


def test_a_crashing_worker_is_one_error_line():
    result = run_worker(worker_argv(TINY, {"impl": "ours", "mode": "train", "m": 12})[:3] + ["--impl", "nope"],
                        timeout_s=60)
    assert result["error"].startswith("exit status 2: ") and "invalid choice: 'nope'" in result["error"]


def test_ar_worker_returns_sane_json():
    import sys

    from perceivers.bench.ar import AR_SPECS

    argv = [sys.executable, "-m", "perceivers.bench.ar", "--impl", "ours", "--size", "tiny", "--threads", "1"]
    result = run_worker(argv, timeout_s=120)
    assert "error" not in result and "unavailable" not in result, result
    spec = AR_SPECS["tiny"]
    assert result["impl"] == "ours" and result["prompt_len"] == spec.prompt_len
    assert result["timed_tokens"] == spec.new_tokens and result["decode_tokens"] == spec.new_tokens - 1
    assert result["tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0 and result["prefill_s"] > 0
    assert result["params"] > 0 and result["end_over_start"] > 0
    assert 0 < result["ops_per_token"] < 200  # one layer: ~110 dispatched operator calls per token
