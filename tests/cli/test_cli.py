"""The command line: train digits end to end (1 short epoch), eval the saved model, list models; every command's
help; the error policy (a user's mistake is one line and exit status 2, a bug keeps its traceback)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import perceivers
from perceivers.cli.main import build_parser, main, user_input
from perceivers.core.errors import UserError


def test_train_then_eval_digits(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "digits", "--out", str(out), "--epochs", "1", "--batch-size", "256", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test"] == 360
    assert metrics["split"] == {"test_size": 0.2, "random_state": 0, "stratified": True}
    assert metrics["engine"]["epochs"] == 1
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["steps"] == 6  # ceil(1437 / 256)
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in printed

    # The saved model re-evaluates to the metrics the training run reported, under the same names.
    assert main(["eval", "digits", "--checkpoint", str(out / "model")]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(printed) == {"test_accuracy", "test_loss", "num_test"}
    for key, value in printed.items():
        assert float(value) == pytest.approx(metrics[key], rel=1e-5), key


def test_eval_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "digits", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_rejects_bad_override(tmp_path, capsys):
    assert main(["train", "digits", "--out", str(tmp_path), "--epochs", "0", "--no-progress"]) == 2
    assert "epochs=0" in capsys.readouterr().err


def test_models_lists_registry_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, count in [("perceiver-io-imagenet-learned", "62,255,848"), ("perceiver-io-imagenet-fourier", "48,440,627"),
                        ("perceiver-io-imagenet-conv", "48,646,522"), ("perceiver-imagenet", "44,912,254")]:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert count in line


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(path, parser)`` of every command and sub-command (``convert hf``), read from the parser itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def _squeezed(text: str) -> str:
    return "".join(text.split())  # help is wrapped to the terminal width


def test_command_list_is_complete():
    names = {path for path, _ in COMMANDS}
    assert {("train",), ("plot",), ("eval",), ("models",), ("convert",), ("convert", "hf"), ("convert", "haiku"),
            ("convert", "to-hf"), ("generate",), ("fill-mask",)} <= names


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for path, sub in COMMANDS:
        if len(path) == 1:
            assert path[0] in out


@pytest.mark.parametrize("path, sub", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_has_help(path, sub, capsys):
    """``perceivers COMMAND --help`` exits 0 and shows the description and every argument with its help."""
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: perceivers {' '.join(path)}")
    assert sub.description and _squeezed(sub.description) in _squeezed(out)
    for action in sub._actions:
        if isinstance(action, argparse._SubParsersAction):  # convert: each SOURCE with its one-line help
            for choice in action._choices_actions:
                assert choice.dest in out and _squeezed(choice.help) in _squeezed(out), (path, choice.dest)
            continue
        names = list(action.option_strings) or [action.metavar or action.dest]
        if action.choices is not None and not action.option_strings:
            names = list(action.choices)  # the recipes
        for name in names:
            assert name in out, (path, name)
        assert action.help and _squeezed(action.help) in _squeezed(out), (path, action.dest)


# ------------------------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def ar_checkpoint(tmp_path_factory):
    from perceivers.models import create_model

    return create_model("perceiver-ar-debug").save_pretrained(tmp_path_factory.mktemp("ckpt") / "ar")


@pytest.fixture(scope="module")
def bad_config_checkpoint(ar_checkpoint, tmp_path_factory):
    """The AR checkpoint with ``num_latents: 0`` in its config.json."""
    out = tmp_path_factory.mktemp("ckpt") / "bad"
    out.mkdir()
    data = json.loads((ar_checkpoint / "config.json").read_text())
    data["config"]["num_latents"] = 0
    (out / "config.json").write_text(json.dumps(data))
    (out / "model.safetensors").write_bytes((ar_checkpoint / "model.safetensors").read_bytes())
    return out


@pytest.fixture(scope="module")
def grid_checkpoint(tmp_path_factory):
    """A Perceiver AR with a (2, 2, 3) position grid: room for 12 tokens after SOS."""
    from perceivers.models import create_model

    model = create_model("perceiver-ar-debug", position_encoding="absolute", position_grid=(2, 2, 3),
                         max_context_length=12, num_latents=4)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "grid")


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory):
    from perceivers.models import create_model

    return create_model("perceiver-io-language-debug").save_pretrained(tmp_path_factory.mktemp("ckpt") / "mlm")


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory) -> dict[str, Path]:
    """Run folders a user may point at: plottable, a malformed CSV, an unfinished run, a corrupted checkpoint, and
    a file where a folder belongs."""
    root = tmp_path_factory.mktemp("runs")
    for name, csv in [("plottable", "step,loss\n1,0.5\n2,0.25\n"), ("bad_csv", "step,loss\n1,fast\n")]:
        (root / name).mkdir()
        (root / name / "metrics.csv").write_text(csv)
    unfinished = root / "unfinished" / "checkpoints" / "step-00000001"
    unfinished.mkdir(parents=True)
    (unfinished / "meta.json").write_text(json.dumps({"format_version": 1, "step": 1, "final": False, "world_size": 1,
                                                        "strategy": "none"}))
    corrupt = root / "corrupt" / "step-00000001"
    corrupt.mkdir(parents=True)
    (corrupt / "meta.json").write_text("{")
    (root / "a_file").write_text("not a folder")
    return {"plottable": root / "plottable", "bad_csv": root / "bad_csv", "unfinished": root / "unfinished",
            "corrupt": corrupt, "file": root / "a_file"}


USER_ERRORS = [
    (["generate", "--threads", "0"], "--threads=0 is invalid: expected an int >= 1"),
    (["generate", "--max-new-tokens", "-1"], "--max-new-tokens=-1 is invalid: expected an int >= 0"),
    (["generate", "--top-k", "0"], "top_k=0 is invalid"),
    (["generate", "--device", "nowhere"], "--device='nowhere' is invalid: expected a torch device"),
    (["generate", "--prompt", "x" * 40], "--prompt is 41 tokens"),  # context 32
    (["generate", "--checkpoint", "{missing}"], "--checkpoint: checkpoint folder"),
    (["generate", "--checkpoint", "{bad_config}"], "--checkpoint: num_latents=0 is invalid"),
    (["generate", "--temperature", "0"], "temperature=0.0 is invalid"),
    (["generate", "--top-p", "1.5"], "top_p=1.5 is invalid"),
    (["generate", "--checkpoint", "{grid}", "--max-new-tokens", "12"], "past the position grid (2, 2, 3)"),
    (["fill-mask", "--text", "a[MASK]"], "masked language model"),  # an AR checkpoint
    (["fill-mask", "--checkpoint", "{mlm}", "--text", "no mask"], "the text contains no '[MASK]'"),
    (["fill-mask", "--checkpoint", "{mlm}", "--text", "a[MASK]", "--mask-token", ""], "mask_token='' is invalid"),
    (["fill-mask", "--checkpoint", "{mlm}", "--text", "x" * 64 + "[MASK]"], "this model reads at most 64"),
    (["eval", "digits", "--checkpoint", "{missing}"], "does not exist"),
    (["eval", "digits", "--checkpoint", "{mlm}"], ("this checkpoint is a Perceiver IO masked language model; eval "
                                                   "digits needs a Perceiver IO classifier of 1x8x8 images")),
    (["train", "digits", "--set", "lr"], "--set 'lr' is invalid: expected KEY=VALUE"),
    (["train", "digits", "--lr", "fast"], "lr='fast' is invalid: expected a number"),
    (["train", "digits", "--lr"], "--lr needs a value"),
    (["train", "digits", "--epochs", "0"], "epochs=0 is invalid"),
    (["train", "digits", "--no-such-setting", "1"], "unknown setting 'no-such-setting'"),
    # the engine's set-up (training/dist.py, training/loop.py)
    (["train", "digits", "--device", "nowhere"], "device='nowhere' is invalid"),
    (["train", "digits", "--device", "cuda:99"], "device='cuda:99' is invalid"),  # with or without CUDA
    (["train", "digits", "--batch-size", "1", "--grad-accum", "2"], "batch_size=1 cannot be split"),
    (["train", "digits", "--out", "{unfinished}"], "holds an unfinished run"),
    (["train", "digits", "--out", "{file}"], "must be a folder"),
    (["train", "digits", "--resume"], "--resume: no checkpoint under"),
    (["train", "digits", "--resume", "{missing}"], "--resume: checkpoint folder"),
    (["train", "digits", "--resume", "{corrupt}"], "meta.json is corrupted"),  # a CheckpointError
    # the task's model and its context lengths (training/tasks.py, training/hip_mae.py)
    (["train", "digits", "--model", "nope"], "model='nope' is invalid: expected a registered Perceiver IO"),
    (["train", "digits", "--model", "perceiver-ar-debug"], "model='perceiver-ar-debug' is invalid"),
    (["train", "text", "--model", "perceiver-io-digits"], "expected a registered Perceiver AR model"),
    (["train", "text", "--context", "4"], "num_latents=128 is invalid: expected <= max_context_length=4"),
    (["train", "text", "--eval-context", "512"], "eval_context=512 is invalid"),
    (["train", "copy", "--length", "8", "--latents", "8"], "num_latents=8 is invalid"),
    (["train", "copy", "--latents", "1"], "num_latents=1 is invalid"),
    (["train", "hip-mae", "--model", "hip-debug"], "model='hip-debug' is invalid"),
    (["train", "hip-mae-finetune", "--pretrained", "{missing}"], "pretrained="),
    (["train", "hip-mae-finetune", "--pretrained", "{ar}"], "expected the folder of a saved HiP"),
    (["train", "hip-mae-finetune", "--positions", "fourier", "--fourier-bands", "100"], "fourier_bands=100 is"),
    (["plot", "{missing}"], "metrics.csv is missing"),
    (["plot", "{bad_csv}"], "fast' is not a number"),
    (["plot", "{plottable}", "--out", "{missing}/curves.png"], "does not exist"),
    (["plot", "{plottable}", "--out", "{out}.nope"], "cannot tell the image format"),
    (["convert", "haiku", "{missing}", "{out}"], "does not exist"),
    (["convert", "hf", "{missing}", "{out}"], "does not exist"),
    (["convert", "to-hf", "{missing}", "{out}"], "does not exist"),
    (["convert", "to-hf", "{ar}", "{out}"], "only Perceiver IO models"),
    (["convert", "to-hf", "{mlm}", "{out}"], "cannot express this model as an HF transformers Perceiver"),
]


@pytest.mark.parametrize("argv, message", USER_ERRORS, ids=[" ".join(a)[:70] for a, _ in USER_ERRORS])
def test_user_errors_are_one_line_exit_2(argv, message, ar_checkpoint, bad_config_checkpoint, grid_checkpoint,
                                         mlm_checkpoint, run_folders, tmp_path, capsys):
    names = {"missing": tmp_path / "missing", "bad_config": bad_config_checkpoint, "out": tmp_path / "out",
             "ar": ar_checkpoint, "grid": grid_checkpoint, "mlm": mlm_checkpoint, **run_folders}
    argv = [a.format(**names) for a in argv]
    if argv[0] in ("generate", "fill-mask") and "--checkpoint" not in argv:
        argv += ["--checkpoint", str(ar_checkpoint)]
    if argv[0] == "train":  # one step at most, should a case not fail
        argv = [*argv[:2], "--no-progress", *([] if "--epochs" in argv else ["--steps", "1"]), *argv[2:],
                *([] if "--out" in argv else ["--out", str(tmp_path / "run")])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"perceivers {argv[0]}: error: ") and err.count("\n") == 1, err
    assert message in err


def test_user_input_marks_only_value_and_file_errors():
    with pytest.raises(UserError, match="^--checkpoint: bad value$") as exc, user_input("--checkpoint"):
        raise ValueError("bad value")
    assert isinstance(exc.value.__cause__, ValueError)
    with pytest.raises(UserError, match="^no such file$"), user_input():
        raise FileNotFoundError("no such file")
    with pytest.raises(TypeError, match="a bug"), user_input("--checkpoint"):  # a bug unless the toolkit raised it
        raise TypeError("a bug")


def test_internal_errors_propagate(monkeypatch, ar_checkpoint):
    """A ValueError or TypeError from inside the library is not reported as a user error."""
    import perceivers.models
    import perceivers.models.hub

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(perceivers.models, "get_entry", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["models", "debug"])

    def type_bug(*args, **kwargs):
        raise TypeError("an internal bug while loading")

    # inside the --checkpoint reading block: only ValueError / OSError / UserError mean a bad folder
    monkeypatch.setattr(perceivers.models.hub, "load_state_dict_strict", type_bug)
    with pytest.raises(TypeError, match="while loading"):
        main(["generate", "--checkpoint", str(ar_checkpoint)])


def test_torchrun_without_a_strategy_is_one_line(monkeypatch, tmp_path, capsys):
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["train", "digits", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strategy='none' is invalid when launched on 2 processes" in err, err


def _bug(*args, **kwargs):
    raise ValueError("a bug inside a computation")


@pytest.mark.parametrize("where", ["fill-mask forward pass", "generate decoding", "train loss", "plot drawing"])
def test_errors_inside_computations_keep_their_traceback(where, monkeypatch, ar_checkpoint, mlm_checkpoint,
                                                         run_folders, tmp_path):
    """The library's own checks come before these computations; a ValueError raised inside one is a bug."""
    from perceivers.generation.decoder import CachedDecoder
    from perceivers.models.perceiver_io import PerceiverIOLanguage
    from perceivers.training import plot
    from perceivers.training.tasks import DigitsTask

    patch, argv = {
        "fill-mask forward pass": ((PerceiverIOLanguage, "forward"),
                                   ["fill-mask", "--checkpoint", str(mlm_checkpoint), "--text", "a[MASK]"]),
        "generate decoding": ((CachedDecoder, "full_pass"), ["generate", "--checkpoint", str(ar_checkpoint)]),
        "train loss": ((DigitsTask, "training_loss"),
                       ["train", "digits", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run")]),
        "plot drawing": ((plot, "_is_curve"), ["plot", str(run_folders["plottable"]), "--out", str(tmp_path / "c.png")]),
    }[where]
    monkeypatch.setattr(*patch, _bug)
    with pytest.raises(ValueError, match="a bug inside a computation") as exc:
        main(argv)
    assert not isinstance(exc.value, UserError)


def test_internal_error_shows_traceback_and_exit_1():
    script = ("import perceivers.models\n"
              "def bug(*args, **kwargs):\n"
              "    raise TypeError('an internal bug')\n"
              "perceivers.models.create_model = bug\n"
              "from perceivers.cli.main import main\n"
              "raise SystemExit(main(['models', 'debug']))\n")
    root = str(Path(perceivers.__file__).parents[1])  # this checkout, not another installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert run.returncode == 1, run.stderr
    assert "Traceback (most recent call last)" in run.stderr
    assert run.stderr.rstrip().endswith("TypeError: an internal bug")
