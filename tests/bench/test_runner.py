"""The bench runner's settings, case order and choice among rounds (no process is started here)."""

from __future__ import annotations

import json
import sys

import pytest

from perceivers.bench import runner
from perceivers.bench.runner import (
    MALLOC_ENVS,
    QUICK_MS,
    BenchSettings,
    best_round,
    cases,
    higher_peaks,
    run_worker,
    worker_argv,
)
from perceivers.core.errors import ConfigError


def test_quick_settings_and_case_order():
    quick = BenchSettings.quick(impls=("ours", "krasserm"), modes=("infer",))
    assert (quick.ms, quick.repeats, quick.peak_n) == (QUICK_MS, 2, 1024)
    fp32 = {"mode": "infer", "precision": "fp32", "malloc": "default"}
    assert cases(quick) == [{"m": 1024, **fp32, "impl": "ours"}, {"m": 1024, **fp32, "impl": "krasserm"},
                            {"m": 4096, **fp32, "impl": "ours"}, {"m": 4096, **fp32, "impl": "krasserm"}]
    argv = worker_argv(quick, cases(quick)[0])
    assert argv[argv.index("--batch") + 1] == "32" and argv[argv.index("--threads") + 1] == "0"
    assert argv[argv.index("--precision") + 1] == "fp32"


def test_every_case_runs_in_every_precision():
    both = BenchSettings(ms=(1024,), impls=("ours", "krasserm"), modes=("train",), precisions=("fp32", "bf16"))
    assert [(c["precision"], c["impl"]) for c in cases(both)] == [("fp32", "ours"), ("fp32", "krasserm"),
                                                                  ("bf16", "ours"), ("bf16", "krasserm")]
    argv = worker_argv(both, cases(both)[2])
    assert argv[argv.index("--precision") + 1] == "bf16"


def test_every_case_runs_under_every_malloc_with_its_environment(monkeypatch):
    both = BenchSettings(ms=(1024,), impls=("ours", "krasserm"), modes=("infer",), mallocs=("default", "kept"))
    assert [(c["malloc"], c["impl"]) for c in cases(both)] == [("default", "ours"), ("default", "krasserm"),
                                                               ("kept", "ours"), ("kept", "krasserm")]
    seen = []
    monkeypatch.setattr(runner, "measure_peaks", lambda s: {"n": 8, "fp32": 1.0, "bf16": 2.0, "fast_bf16": True})
    timed = {"median_s": 1.0, "peak_rss_mib": 9.0}
    monkeypatch.setattr(runner, "run_worker", lambda argv, timeout, env=None: seen.append(env) or timed)
    out = runner.run_bench(both)
    assert seen == [{}, {}, MALLOC_ENVS["kept"], MALLOC_ENVS["kept"]]
    assert [c["malloc"] for c in out["cases"]] == ["default", "default", "kept", "kept"]
    assert MALLOC_ENVS["kept"]["MALLOC_MMAP_MAX_"] == "0"  # glibc: no mmap per large buffer


def test_a_worker_gets_the_malloc_environment():
    probe = "import json, os; print(json.dumps({'mmap_max': os.environ.get('MALLOC_MMAP_MAX_')}))"
    assert run_worker([sys.executable, "-c", probe], 60, MALLOC_ENVS["kept"]) == {"mmap_max": "0"}
    assert json.dumps(run_worker([sys.executable, "-c", "import sys; sys.exit(3)"], 60)).startswith('{"error": "exit')


def test_each_case_keeps_its_fastest_round():
    tries = [{"median_s": 2.0, "round": 0}, {"error": "killed"}, {"median_s": 1.5, "round": 2}]
    best = best_round(tries)
    assert best["round"] == 2 and best["round_medians_s"] == [2.0, 1.5]
    assert best_round([{"error": "a"}, {"error": "b"}]) == {"error": "a"}
    assert best_round([{"median_s": 3.0}]) == {"median_s": 3.0}


@pytest.mark.parametrize("field, value", [("impls", ()), ("impls", ("nope",)), ("ms", (0,)), ("rounds", 0),
                                          ("precisions", ("fp16",)), ("precisions", ()), ("warmup", -1),
                                          ("mallocs", ()), ("mallocs", ("tcmalloc",))])
def test_bad_settings_are_config_errors(field, value):
    with pytest.raises(ConfigError):
        BenchSettings(**{field: value})


def test_peaks_are_the_higher_of_start_and_end():
    peaks = higher_peaks({"n": 64, "fp32": 100.0, "bf16": 120.0}, {"n": 64, "fp32": 80.0, "bf16": 200.0})
    assert (peaks["fp32"], peaks["bf16"], peaks["fast_bf16"]) == (100.0, 200.0, True)
    assert peaks["start"] == {"fp32": 100.0, "bf16": 120.0} and peaks["end"]["fp32"] == 80.0
    assert not higher_peaks({"n": 64, "fp32": 100.0, "bf16": 149.0}, {"n": 64, "fp32": 1.0, "bf16": 1.0})["fast_bf16"]
