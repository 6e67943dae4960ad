"""The bench table on fixed numbers: ratios to ours, % of the matmul peak, failed and missing peers."""

from __future__ import annotations

import json

from perceivers.bench.report import (
    ar_table_rows,
    format_ar_table,
    format_table,
    malloc_rows,
    percent_of_peak,
    ratio,
    table_rows,
    write_outputs,
)


def _case(impl, seconds, rss, params=1000, mode="train", m=1024, flops=50_000_000_000, precision="fp32"):
    return {"impl": impl, "mode": mode, "m": m, "params": params, "median_s": seconds, "peak_rss_mib": rss,
            "flops": flops, "precision": precision}


def results(cases, precisions=("fp32",)):
    return {"settings": {"precisions": list(precisions), "batch_train": 8, "batch_infer": 32, "repeats": 3, "warmup": 1},
            "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.x", "device": "cpu"},
            "peaks": {"n": 2048, "fp32": 200.0, "bf16": 250.0, "fast_bf16": False}, "cases": cases,
            "date": "2026-01-01 00:00 UTC"}


CASES = [_case("ours", 0.5, 1000.0), _case("transformers", 1.0, 2500.0), _case("lucidrains", 0.25, 500.0, 1500),
         {"impl": "krasserm", "mode": "train", "m": 1024, "unavailable": "not installed"},
         _case("ours", 2.0, 800.0, mode="infer"), {"impl": "transformers", "mode": "infer", "m": 1024,
                                                   "error": "exit status -9: Killed"}]


def test_ratio_and_percent_of_peak():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, None) is None and ratio(1.0, 0.0) is None
    assert percent_of_peak(100_000_000_000, 0.5, 400.0) == 50.0


def test_rows_give_ratios_to_ours_and_percent_of_peak():
    rows = table_rows(results(CASES))
    assert rows[0] == ["1,024", "train", "fp32", "ours", "1,000", "0.500", "1.00x", "100", "50 %", "1,000", "1.00x",
                       "1.00x"]
    assert rows[1] == ["1,024", "train", "fp32", "transformers", "1,000", "1.000", "2.00x", "50", "25 %", "2,500",
                       "2.50x", "0.50x"]
    assert rows[2][4] == "1,500 (+500)"  # a different parameter count is shown with its difference
    assert rows[2][6:] == ["0.50x", "200", "100 %", "500", "0.50x", "2.00x"]
    assert rows[3][4] == "not installed" and rows[3][5:] == ["—"] * 7
    assert rows[5][4] == "failed: exit status -9: Killed"


def test_bf16_rows_compare_with_ours_at_bf16_and_with_our_fp32():
    cases = [_case("ours", 1.0, 900.0), _case("krasserm", 1.2, 950.0),
             _case("ours", 0.25, 800.0, precision="bf16"), _case("krasserm", 0.5, 850.0, precision="bf16")]
    rows = table_rows(results(cases, ("fp32", "bf16")))
    # ratio against ours in bf16; % of the bf16 peak (250 GFLOP/s); speed-up over our fp32 (1.0 s)
    assert rows[2][2:] == ["bf16", "ours", "1,000", "0.250", "1.00x", "200", "80 %", "800", "1.00x", "4.00x"]
    assert rows[3][6] == "2.00x" and rows[3][-1] == "2.00x"
    assert "Precision fp32, bf16 (bf16: autocast" in format_table(results(cases, ("fp32", "bf16")))


def test_kept_malloc_cases_compare_with_ours_under_kept_and_report_the_slowdown():
    cases = [_case("ours", 1.1, 900.0), _case("krasserm", 1.5, 950.0),
             {**_case("ours", 1.0, 900.0), "malloc": "kept"}, {**_case("krasserm", 1.2, 950.0), "malloc": "kept"}]
    res = results(cases)
    rows = table_rows(res)
    assert rows[1][6] == f"{1.5 / 1.1:.2f}x" and rows[3][2] == "fp32, kept malloc" and rows[3][6] == "1.20x"
    assert malloc_rows(res) == [["1,024", "train", "fp32", "ours", "1.100", "1.000", "1.10x"],
                                ["1,024", "train", "fp32", "krasserm", "1.500", "1.200", "1.25x"]]
    assert "| default / kept |" in format_table(res) and "default / kept" not in format_table(results(cases[:2]))


def test_results_of_the_one_precision_format_still_read():
    old = results([{k: v for k, v in _case("ours", 0.5, 1000.0).items() if k != "precision"}])
    old["settings"] = {k: v for k, v in old["settings"].items() if k != "precisions"} | {"precision": "bf16"}
    assert table_rows(old)[0][2] == "bf16" and table_rows(old)[0][8] == "40 %"  # bf16 peak 250


def test_table_says_when_bf16_is_not_fast(tmp_path):
    text = format_table(results(CASES))
    assert "no fast bf16 on this CPU" in text
    assert "| M | mode | precision | impl |" in text and text.count("\n| 1,024 |") == 6
    fast = results(CASES)
    fast["peaks"]["fast_bf16"] = True
    assert "no fast bf16" not in format_table(fast)
    written = write_outputs(results(CASES), tmp_path / "out")
    assert json.loads(written["json"].read_text())["cases"][0]["impl"] == "ours"
    assert written["markdown"].read_text() == text


def test_ar_rows_give_our_tokens_per_second_over_theirs():
    def ar(impl, total, decode, start=10.0, end=12.0):
        return {"impl": impl, "params": 100, "prefill_s": 0.5, "tokens_per_s": total, "decode_tokens_per_s": decode,
                "ms_per_token_start": start, "ms_per_token_end": end, "end_over_start": end / start}

    results = {"settings": {"new_tokens": 8, "prompt_len": 64, "latents": 8, "channels": 16, "layers": 1, "heads": 2,
                            "rounds": 1, "lucidrains_tokens": 3, "window": 2},
               "machine": {"cpu": "Test CPU", "threads": 1, "torch": "2.x"},
               "cases": [ar("ours", 90.0, 100.0), ar("krasserm", 30.0, 50.0, 20.0, 20.0),
                         {"impl": "lucidrains", "unavailable": "not installed"}]}
    rows = ar_table_rows(results)
    assert rows[0] == ["ours", "100", "0.50", "90.0", "1.00x", "100.0", "1.00x", "10.0", "12.0", "1.20"]
    assert rows[1][3:7] == ["30.0", "3.00x", "50.0", "2.00x"] and rows[1][-1] == "1.00"
    assert rows[2] == ["lucidrains", "not installed"] + ["—"] * 8
    assert "| impl | params | prompt pass (s) |" in format_ar_table(results)
