"""Tampered or foreign checkpoint files on ``--resume``: every case is one ``CheckpointError`` line naming the file,
never a traceback from deep inside torch, and never torch's advice to load with ``weights_only=False``."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from testkit.engine import QUIET, SHORT, TinyTask

from perceivers.cli.main import main
from perceivers.core.files import safe_torch_load
from perceivers.training.checkpoint import CheckpointError
from perceivers.training.loop import run_task
from perceivers.training.optim import LAMB, param_groups
from perceivers.training.recipes import RECIPES, Recipe

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _rng(path: Path, **changes) -> None:
    state = torch.load(path, weights_only=True)
    for key, value in changes.items():
        part, _, sub = key.partition(".")
        if sub:
            state[part][sub] = value
        elif value is None:
            del state[part]
        else:
            state[part] = value
    torch.save(state, path)


def _optim(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    torch.save(edit(state), path)


def _meta(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _lamb_state(path: Path) -> None:
    """LAMB's state for the same model and groups (AdamW's is expected)."""
    torch.save(LAMB(param_groups(TinyTask().build_model(), 0.0)).state_dict(), path)


def _deep(n: int) -> dict:
    value: dict = {}
    for _ in range(n):
        value = {"a": value}
    return value


TAMPERINGS = {  # name: (file, how, what the message says after the file name)
    "rng garbage": ("rng-rank0.pt", lambda p: p.write_bytes(b"not a zip"), "is corrupted or unreadable"),
    "rng empty": ("rng-rank0.pt", lambda p: p.write_bytes(b""), "is corrupted or unreadable"),
    "rng a tensor": ("rng-rank0.pt", lambda p: torch.save(torch.zeros(3), p), "does not hold this engine's RNG"),
    "rng a list": ("rng-rank0.pt", lambda p: torch.save([1, 2], p), "does not hold this engine's RNG"),
    "rng no numpy": ("rng-rank0.pt", lambda p: _rng(p, numpy=None), "expected a dict with 'torch', 'numpy'"),
    "rng torch state cut": ("rng-rank0.pt", lambda p: _rng(p, torch=torch.zeros(10, dtype=torch.uint8)),
                            "'torch' is not a torch generator state"),
    "rng numpy keys float": ("rng-rank0.pt", lambda p: _rng(p, **{"numpy.keys": torch.zeros(624)}),
                             "'numpy' is not a numpy MT19937 state"),
    "rng python state short": ("rng-rank0.pt", lambda p: _rng(p, **{"python.state": torch.zeros(3, dtype=torch.long)}),
                               "'python' is not a Python random state"),
    "rng runs code": ("rng-rank0.pt", lambda p: p.write_bytes(pickle.dumps({"torch": RunsCode()}, protocol=2)),
                      "holds Python objects other than tensors .*never unpickled"),
    "rng missing": ("rng-rank0.pt", lambda p: p.unlink(), "is missing"),
    "optimizer a tensor": ("optimizer.pt", lambda p: torch.save(torch.ones(2), p), "expected an optimizer state dict"),
    "optimizer no state": ("optimizer.pt", lambda p: _optim(p, lambda s: {"param_groups": s["param_groups"]}),
                           "expected an optimizer state dict"),
    "optimizer of LAMB": ("optimizer.pt", _lamb_state, "written by another optimizer"),
    "optimizer wrong shape": ("optimizer.pt", lambda p: _optim(p, lambda s: s | {"state": {
        k: v | {"exp_avg": torch.zeros(2, 2)} for k, v in s["state"].items()}}), "state 'exp_avg' of parameter 0 has"),
    "optimizer one group": ("optimizer.pt", lambda p: _optim(p, lambda s: s | {"param_groups": s["param_groups"][:1]}),
                            "1 parameter groups, expected 2"),
    "optimizer runs code": ("optimizer.pt", lambda p: p.write_bytes(pickle.dumps(RunsCode())), "never unpickled"),
    "meta negative step": ("meta.json", lambda p: _meta(p, step=-3), "'step' is -3, expected an integer >= 0"),
    "meta step a string": ("meta.json", lambda p: _meta(p, step="4"), "is not an engine checkpoint"),
    "meta step true": ("meta.json", lambda p: _meta(p, step=True), "'step' is True, expected an integer"),
    "meta seconds a string": ("meta.json", lambda p: _meta(p, train_seconds="x"), "'train_seconds' is 'x'"),
    "meta skipped negative": ("meta.json", lambda p: _meta(p, skipped=-1), "'skipped' is -1"),
    "meta world size": ("meta.json", lambda p: _meta(p, world_size="2"), "'world_size' is '2'"),
    "meta config a list": ("meta.json", lambda p: _meta(p, config=[1]), "'config' is \\[1\\], expected an object"),
    "meta deep": ("meta.json", lambda p: _meta(p, config=_deep(200)), "nested too deeply"),
    "meta a list": ("meta.json", lambda p: p.write_text("[1, 2]"), "must hold a JSON object"),
    "weights garbage": ("model.safetensors", lambda p: p.write_bytes(b"\x00garbage"), "is corrupted or unreadable"),
    "weights of another shape": ("model.safetensors", lambda p: save_file({"x": torch.zeros(2)}, p),
                                 "does not match the model"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interrupted")
    run_task(TinyTask(interrupt_at=4), SHORT, out, **QUIET)
    return out / "checkpoints" / "step-00000004"


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_checkpoint_file_is_one_line_naming_it(tmp_path, checkpoint, name):
    file, tamper, message = TAMPERINGS[name]
    copy = tmp_path / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, copy)
    tamper(copy / file)
    with pytest.raises(CheckpointError) as info:
        run_task(TinyTask(), SHORT, tmp_path, resume=True, **QUIET)
    text = str(info.value)
    assert "\n" not in text and "weights_only=False" not in text and "weights_only" not in text, text
    assert text.startswith(str(copy / file)), text
    assert re.search(message, text), text


def test_the_command_line_prints_one_line_and_exits_2(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setitem(RECIPES, "tiny", lambda: Recipe(task=TinyTask(), engine=SHORT))
    shutil.copytree(checkpoint, tmp_path / "checkpoints" / checkpoint.name)
    (tmp_path / "checkpoints" / checkpoint.name / "rng-rank0.pt").write_bytes(pickle.dumps(RunsCode(), protocol=2))
    assert main(["train", "tiny", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rng-rank0.pt is corrupted or unreadable" in err[0] and "weights_only" not in err[0]


def test_safe_torch_load_never_suggests_weights_only_false(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps({"x": RunsCode()}))
    with pytest.raises(ValueError, match=r"^\S*bad.pt is corrupted or unreadable: it holds Python objects other than "
                                         r"tensors and plain containers, which are never unpickled") as info:
        safe_torch_load(bad)
    assert "weights_only" not in str(info.value) and info.value.__cause__ is None
    assert info.value.__context__ is None  # torch's message is not chained either
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    assert torch.equal(safe_torch_load(tmp_path / "good.pt")["w"], torch.ones(2))
