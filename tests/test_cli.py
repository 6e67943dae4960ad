"""The command line: train digits end to end (1 short epoch), eval the saved model, list models."""

from __future__ import annotations

import json

import pytest

from perceivers.cli.main import main


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

    # The saved model re-evaluates to exactly the accuracy and loss the training run reported.
    assert main(["eval", "digits", "--checkpoint", str(out / "model")]) == 0
    printed = capsys.readouterr().out
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in printed
    assert f"test loss {metrics['test_loss']:.4f}" in printed


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


@pytest.mark.parametrize("command", ["train", "eval", "models", "generate", "convert"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200
