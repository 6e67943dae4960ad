"""Faults a user can cause around a training run, each one line (``UserError``, exit status 2 on the command line)
or a clear stop: two runs in one folder, resuming with changed settings, a full or read-only disk, Ctrl-C during
the final evaluation and save, both ``--steps`` and ``--epochs``, a run that skips most of its steps."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal

import pytest
from testkit.engine import QUIET, SHORT, TinyTask, assert_same_weights, weights

import perceivers.training.checkpoint as ckpt
from perceivers.cli.main import main
from perceivers.core.errors import ConfigError, UserError
from perceivers.core.files import FileSystemError, FolderLock, FolderLockedError
from perceivers.training import loop
from perceivers.training.checkpoint import latest_checkpoint
from perceivers.training.loop import run_task
from perceivers.training.overrides import apply_overrides
from perceivers.training.recipes import RECIPES, Recipe, digits
from perceivers.training.runtime import NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_recipe(monkeypatch):
    """``perceivers train tiny``: TinyTask with SHORT on the command line."""
    monkeypatch.setitem(RECIPES, "tiny", lambda: Recipe(task=TinyTask(dropout=0.1), engine=SHORT))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ----------------------------------------------------------------------------------------------- the run folder
def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys, tiny_recipe):
    other_run = FolderLock(tmp_path).acquire()  # what a running `perceivers train --out tmp_path` holds
    with pytest.raises(FolderLockedError, match=rf"{tmp_path} is in use by another run \(process {os.getpid()}"):
        run_task(TinyTask(), SHORT, tmp_path, **QUIET)
    assert main(["train", "tiny", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "is in use by another run" in one_line_error(capsys)
    assert not (tmp_path / "metrics.csv").exists()
    other_run.release()
    assert run_task(TinyTask(), SHORT, tmp_path, **QUIET)["steps"] == 12
    # the lock file stays behind with the last holder's PID, but only a live flock counts: no stale lock
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    FolderLock(tmp_path).acquire().release()


@pytest.mark.parametrize("where, message", [("file", "is a file: the run folder (--out) must be a folder"),
                                            ("file/run", "cannot create the run folder .*file/run: Not a directory")])
def test_out_on_a_file(tmp_path, capsys, tiny_recipe, where, message):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_task(TinyTask(), SHORT, tmp_path / where, **QUIET)
    assert main(["train", "tiny", "--out", str(tmp_path / where), "--no-progress"]) == 2
    assert one_line_error(capsys).startswith("perceivers train: error: ")


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)  # tests run as root: chmod would not stop a write
    with pytest.raises(FileSystemError, match=f"cannot create the run folder {tmp_path / 'run'}: Read-only file"):
        run_task(TinyTask(), SHORT, tmp_path / "run", **QUIET)


def test_disk_full_during_a_save_keeps_the_last_checkpoint(tmp_path, monkeypatch, reference):
    original, saves = ckpt.atomic_write, []

    def full_disk(path, writer):
        if path.name == "optimizer.pt":
            saves.append(path)
            if len(saves) == 2:  # the checkpoint of step 6
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(path, writer)

    monkeypatch.setattr(ckpt, "atomic_write", full_disk)
    with pytest.raises(FileSystemError) as info:
        run_task(TinyTask(dropout=0.1), SHORT, tmp_path, **QUIET)
    assert str(info.value) == f"cannot write {saves[1]}: No space left on device"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(root).name == "step-00000003" and not list(root.glob(".tmp-*"))  # space freed
    monkeypatch.setattr(ckpt, "atomic_write", original)
    run_task(TinyTask(dropout=0.1), SHORT, tmp_path, resume=True, **QUIET)
    assert_same_weights(weights(tmp_path), reference)


# ----------------------------------------------------------------------------------------------- resume settings
@pytest.fixture
def interrupted(tmp_path):
    """A run of SHORT interrupted (and checkpointed) at step 4."""
    assert run_task(TinyTask(dropout=0.1, interrupt_at=4), SHORT, tmp_path, **QUIET)["interrupted"]
    return tmp_path


@pytest.mark.parametrize("engine, task, listed", [
    ({"lr": 1e-3}, {}, "lr 0.003 -> 0.001"),
    ({"batch_size": 16}, {}, "batch_size 32 -> 16"),
    ({"epochs": 6, "seed": 1}, {}, "epochs 4 -> 6, seed 0 -> 1"),
    ({"precision": "bf16", "grad_accum": 2}, {}, "grad_accum 1 -> 2, precision 'fp32' -> 'bf16'"),
    ({"steps": 12, "epochs": None}, {}, "epochs 4 -> None, steps None -> 12"),
    ({}, {"noise": 0.2, "n_train": 128}, "n_train 96 -> 128, noise 0.1 -> 0.2"),
])
def test_resume_with_changed_settings_is_refused(interrupted, engine, task, listed):
    with pytest.raises(ConfigError, match=rf"meta.json: the run was started with other settings: {listed}; "):
        run_task(TinyTask(dropout=0.1, **task), dataclasses.replace(SHORT, **engine), interrupted, resume=True,
                 **QUIET)


def test_changes_allowed_explicitly(interrupted, capsys, tiny_recipe):
    logged: list[str] = []
    longer = dataclasses.replace(SHORT, epochs=6, lr=1e-3)
    with pytest.raises(ConfigError, match=r"lr 0.003 -> 0.001; .*--allow-change lr$"):  # epochs allowed, lr not
        run_task(TinyTask(dropout=0.1), longer, interrupted, resume=True, allow_change=["epochs"], **QUIET)
    assert main(["train", "tiny", "--out", str(interrupted), "--resume", "--epochs", "6", "--no-progress"]) == 2
    assert one_line_error(capsys).endswith("--allow-change epochs")
    result = run_task(TinyTask(dropout=0.1), longer, interrupted, resume=True, allow_change="epochs,lr",
                      progress=False, log=logged.append)
    assert result["steps"] == 18
    assert "resuming with changed settings (allowed): epochs 4 -> 6, lr 0.003 -> 0.001" in logged
    # the command line's flag (the recipe's lr is SHORT's 3e-3 again; the final checkpoint recorded 1e-3)
    args = ["train", "tiny", "--out", str(interrupted), "--resume", "--epochs", "6", "--no-progress"]
    assert main(args) == 2 and one_line_error(capsys).endswith("--allow-change lr")
    assert main([*args, "--allow-change", "lr"]) == 0


def test_the_optimizer_never_changes_on_resume(interrupted):
    lamb = dataclasses.replace(SHORT, optimizer="lamb")
    with pytest.raises(ConfigError, match=r"optimizer 'adamw' -> 'lamb'; .*the optimizer cannot change"):
        run_task(TinyTask(dropout=0.1), lamb, interrupted, resume=True, **QUIET)
    with pytest.raises(ConfigError, match="allow_change cannot include optimizer"):
        run_task(TinyTask(dropout=0.1), lamb, interrupted, resume=True, allow_change=["optimizer"], **QUIET)
    with pytest.raises(ConfigError, match=r"allow_change=\['nope'\] is invalid: expected settings of this run: "):
        run_task(TinyTask(dropout=0.1), SHORT, interrupted, resume=True, allow_change=["nope"], **QUIET)


def test_an_older_checkpoint_without_settings_still_resumes(interrupted, reference):
    meta_file = interrupted / "checkpoints" / "step-00000004" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["config"], meta["task"]  # as written before the settings were recorded
    meta_file.write_text(json.dumps(meta))
    logged: list[str] = []
    run_task(TinyTask(dropout=0.1), SHORT, interrupted, resume=True, progress=False, log=logged.append)
    assert any(line.startswith(f"warning: {meta_file} records no settings") for line in logged)
    assert_same_weights(weights(interrupted), reference)


# ----------------------------------------------------------------------------------------------- Ctrl-C at the end
@dataclasses.dataclass
class CtrlCInFinalEval(TinyTask):
    """Ctrl-C (a real SIGINT, or KeyboardInterrupt raised) in the final evaluation, the only one of SHORT."""

    signal_it: bool = True

    def evaluate(self, model):
        if self.signal_it:
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise KeyboardInterrupt
        return super().evaluate(model)


@pytest.mark.parametrize("signal_it", [True, False])
def test_ctrl_c_in_the_final_evaluation_stops_as_interrupted(tmp_path, reference, signal_it):
    result = run_task(CtrlCInFinalEval(dropout=0.1, signal_it=signal_it), SHORT, tmp_path, **QUIET)
    final = tmp_path / "checkpoints" / "step-00000012"
    assert result == {"interrupted": True, "step": 12, "checkpoint": str(final)}
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics.json").exists()
    run_task(TinyTask(dropout=0.1), SHORT, tmp_path, resume=True, **QUIET)  # finishes from the final checkpoint
    assert_same_weights(weights(tmp_path), reference)


def test_ctrl_c_in_the_final_save(tmp_path, monkeypatch, reference, capsys, tiny_recipe):
    original = loop.save_checkpoint

    def interrupted_save(root, step, **kwargs):
        if kwargs["meta"]["final"]:
            raise KeyboardInterrupt
        return original(root, step, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", interrupted_save)
    assert main(["train", "tiny", "--out", str(tmp_path), "--no-progress"]) == 130
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000009"
    assert not (tmp_path / "model").exists() and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(loop, "save_checkpoint", original)
    run_task(TinyTask(dropout=0.1), SHORT, tmp_path, resume=True, **QUIET)
    assert_same_weights(weights(tmp_path), reference)


# ----------------------------------------------------------------------------------------------- run length, skips
def test_steps_and_epochs_together_are_refused(capsys):
    with pytest.raises(ConfigError, match="steps=5 and epochs=2 are both given: pass one of them"):
        apply_overrides(digits(), [("steps", "5"), ("epochs", "2")])
    assert apply_overrides(digits(), [("steps", "5")]).engine.epochs is None  # one replaces the recipe's other
    assert main(["train", "digits", "--steps", "5", "--epochs", "2"]) == 2
    assert "are both given" in one_line_error(capsys)


def test_a_run_that_skips_most_steps_is_not_a_success(tmp_path, capsys, monkeypatch):
    skip = dataclasses.replace(SHORT, on_nonfinite="skip")  # 12 steps, max_skip_fraction 0.1: at most 1 skip
    with pytest.raises(NonFiniteLossError, match=r"^2 of the first 4 steps .* max_skip_fraction=0.1 of the run's 12 "
                                                  r"steps: stopped, not a trained model; last good checkpoint: .*"
                                                  r"step-00000003"):
        run_task(TinyTask(nan_from=3), skip, tmp_path / "a", **QUIET)
    monkeypatch.setitem(RECIPES, "tiny", lambda: Recipe(task=TinyTask(nan_from=3), engine=skip))
    assert main(["train", "tiny", "--out", str(tmp_path / "b"), "--no-progress"]) == 3
    assert "were skipped" in one_line_error(capsys)
    logged: list[str] = []  # one skip of 12 is within the fraction: a finished run that says so
    result = run_task(TinyTask(nan_at=5), skip, tmp_path / "c", progress=False, log=logged.append)
    assert result["skipped_steps"] == json.loads((tmp_path / "c" / "metrics.json").read_text())["skipped_steps"] == 1
    assert "skipped 1 of 12 steps (non-finite loss or gradient norm)" in logged
    everything = dataclasses.replace(skip, max_skip_fraction=1.0)
    assert run_task(TinyTask(nan_from=3), everything, tmp_path / "d", **QUIET)["skipped_steps"] == 10
