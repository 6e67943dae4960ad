"""Folders saved before the consolidation (tests/fixtures/legacy_v1) still load, and give the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import perceivers

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v1"


def _unflatten(flat: dict[str, torch.Tensor], prefix: str) -> dict:
    """``{"a.b": t}`` -> ``{"a": {"b": t}}`` for the keys under ``prefix``."""
    out: dict = {}
    for key, value in flat.items():
        if key == prefix:
            return value
        if key.startswith(prefix + "."):
            node = out
            *parents, leaf = key[len(prefix) + 1:].split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return out


CALLS = {
    "perceiver_io": lambda m, io: m(io["inputs"]),
    "perceiver_io_language": lambda m, io: m(io["input_ids"], io["input_mask"]),
    "perceiver_io_flow": lambda m, io: m(io["frames"]),
    "perceiver_io_audio": lambda m, io: m(io["waveform"]),
    "perceiver_io_multimodal": lambda m, io: m(io["inputs"], mask_probs={k: 0.0 for k in ("audio", "image", "label")}),
    "perceiver_ar": lambda m, io: m(io["input_ids"]),
    "hip": lambda m, io: m(io["inputs"]),
    "hip_classifier": lambda m, io: m(io["inputs"]),
}


def _assert_same(actual, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    else:
        # Written on one CPU; another BLAS path may differ in the last bits only.
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=where)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_legacy_folder_loads_with_identical_outputs(name):
    folder = LEGACY / name
    model = perceivers.from_pretrained(folder)
    flat = load_file(str(folder / "io.safetensors"))
    io = {k: _unflatten(flat, k) for k in {key.split(".")[0] for key in flat} if k != "output"}
    with torch.no_grad():
        out = CALLS[name](model, io)
    _assert_same(out, _unflatten(flat, "output"), name)
