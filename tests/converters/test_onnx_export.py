"""``perceivers export onnx``: onnxruntime gives PyTorch's outputs (within 1e-4) at another batch size and, for the
MLM, another byte length than the export traced; unsupported models are one-line errors; the file is atomic."""

from __future__ import annotations

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from testkit.cli import cli_error

from perceivers import get_config
from perceivers.cli.main import main
from perceivers.converters.onnx import (
    OPSET,
    export_onnx,
    flatten_inputs,
    flatten_outputs,
)
from perceivers.models import from_pretrained
from perceivers.models.registry import get_entry

TOL = 1e-4


def _model(variant: str):
    model = get_entry(variant).model_cls(get_config(variant).debug_size()).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # every weight non-trivial (zero-initialised heads would hide a wrong graph)
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _inputs(model, variant: str) -> dict:
    kwargs = model.example_inputs(3, generator=torch.Generator().manual_seed(5))  # exported at batch 2
    if "input_ids" in kwargs:  # exported at max_seq_len = 32 bytes; run 20, the last 7 of row 0 padding
        kwargs = {k: v[:, :20].clone() for k, v in kwargs.items()}
        kwargs["input_mask"][0, 13:] = False
    if "mask" in kwargs:  # exported with every other position masked: other masks at run time
        gen = torch.Generator().manual_seed(7)
        kwargs["mask"] = {m: torch.rand(x.shape, generator=gen) < 0.5 for m, x in kwargs["mask"].items()}
    return kwargs


def _max_diff(model, path, kwargs) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in flatten_inputs(kwargs).items()})
    with torch.no_grad():
        ref = flatten_outputs(model(**kwargs))
    assert [o.name for o in session.get_outputs()] == list(ref)
    assert all(g.shape == tuple(r.shape) for g, r in zip(got, ref.values()))
    assert max(r.abs().max().item() for r in ref.values() if r.numel()) > 0.05
    return max(float(abs(g - r.numpy()).max()) for g, r in zip(got, ref.values()) if r.numel())


@pytest.mark.parametrize(("variant", "dynamic"), [
    ("perceiver-io-language-debug", {"input_ids": ["batch", "length"], "input_mask": ["batch", "length"]}),
    ("perceiver-io-multimodal-debug", {"inputs.audio": ["batch", 64], "inputs.image": ["batch", 2, 8, 8, 3],
                                       "inputs.label": ["batch", 5], "mask.audio": ["batch", 16],
                                       "mask.image": ["batch", 8], "mask.label": ["batch", 1]}),
    ("perceiver-io-flow-debug", {"frames": ["batch", 2, 3, 8, 8]}),
    ("hip-debug", {"inputs.image": ["batch", 30, 3], "inputs.label": ["batch", 5, 2]}),
])
def test_onnxruntime_matches_pytorch(variant, dynamic, tmp_path):
    model = _model(variant)
    path = export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == OPSET
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims == dynamic
    diff = _max_diff(model, path, _inputs(model, variant))
    print(f"{variant}: onnxruntime vs PyTorch max |diff| {diff:.2e}")
    assert diff <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


@pytest.mark.parametrize(("variant", "message"), [("perceiver-ar-debug", "cannot export a PerceiverAR to ONNX")])
def test_unsupported_models_are_one_line_errors(variant, message, tmp_path, capsys):
    get_entry(variant).model_cls(get_config(variant).debug_size()).save_pretrained(tmp_path / "m")
    assert message in cli_error(capsys, ["export", "onnx", str(tmp_path / "m"), str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()
    assert "MODEL_DIR" in cli_error(capsys, ["export", "onnx", str(tmp_path / "none"), str(tmp_path / "m.onnx")])


def test_cli_export_and_atomic_file(tmp_path, capsys, monkeypatch):
    _model("perceiver-io-digits").save_pretrained(tmp_path / "m")
    out = tmp_path / "m.onnx"
    assert "opset=30 is invalid" in cli_error(capsys, ["export", "onnx", str(tmp_path / "m"), str(out),
                                                        "--opset", "30"])
    assert main(["export", "onnx", str(tmp_path / "m"), str(out)]) == 0
    model = from_pretrained(tmp_path / "m")
    assert _max_diff(model, out, _inputs(model, "perceiver-io-digits")) <= TOL
    before = out.read_bytes()

    def broken_export(module, args, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half an onnx file")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_onnx(model, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.onnx"]


def test_random_outputs_are_refused(tmp_path):
    model = _model("perceiver-io-digits")
    forward = model.forward
    model.forward = lambda inputs: forward(inputs) + torch.rand(())  # e.g. random masking without a mask
    with pytest.raises(ValueError, match="depend on random masking"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
