"""The training engine in one process: config validation, LAMB, schedules, exact resume after Ctrl-C, non-finite
losses, checkpoint errors, accumulation, activation checkpointing, bf16, FSDP2 with one rank, records and plots."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from testkit.engine import QUIET, SHORT, TinyTask, assert_same_weights, weights

from perceivers.cli.main import main
from perceivers.training.checkpoint import CheckpointError, latest_checkpoint, step_dirs
from perceivers.training.config import EngineConfig
from perceivers.training.loop import run_task
from perceivers.training.optim import (
    LAMB,
    adamw,
    build_optimizer,
    lr_factor,
    param_groups,
)
from perceivers.training.overrides import apply_overrides
from perceivers.training.recipes import digits, text
from perceivers.training.runtime import NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bad", [{"steps": 0}, {"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("nan")},
                                 {"optimizer": "sgd"}, {"schedule": "step"}, {"warmup_fraction": 1.0},
                                 {"weight_decay": -1.0}, {"grad_accum": 0}, {"steps": 2.5},
                                 {"precision": "fp16"}, {"strategy": "deepspeed"}, {"on_nonfinite": "ignore"},
                                 {"keep_last": 0}, {"betas": (0.9, 1.0)}, {"betas": (0.9,)}, {"compile": "yes"},
                                 {"device": ""}])
def test_engine_config_validation(bad):
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):  # a wrong value, or a wrong type
        EngineConfig(**bad)
    with pytest.raises(ValueError, match="steps=3 and epochs=2 are both set: set one of them"):
        EngineConfig(steps=3, epochs=2)
    assert EngineConfig().num_steps(7) == 7 and EngineConfig(steps=3).num_steps(7) == 3  # neither: one epoch


def test_lamb_matches_the_formula():
    torch.manual_seed(0)
    w0 = torch.randn(4, 3)
    p = torch.nn.Parameter(w0.clone())
    opt = LAMB([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    grads = [torch.randn(4, 3), torch.randn(4, 3)]
    w, m, v = w0.clone(), torch.zeros(4, 3), torch.zeros(4, 3)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        u = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.99 ** t)).sqrt() + 1e-6) + 0.01 * w
        w = w - 0.1 * (w.norm() / u.norm()) * u
        torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-6)
    zero = torch.nn.Parameter(torch.zeros(3))  # ||w|| = 0: trust ratio 1, a plain Adam-like step
    opt = LAMB([zero], lr=0.1)
    zero.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.1, 0.1, 0.0]), rtol=1e-4, atol=1e-6)


def test_adamw_is_fused_where_supported_and_matches_the_default():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, name="adamw", lr=0.01, weight_decay=0.1, betas=(0.9, 0.99), eps=None)
    assert opt.defaults["fused"] is True  # every PyTorch the project supports (>= 2.4) fuses AdamW on CPU
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    plain = torch.optim.AdamW([{"params": reference[0:1], "weight_decay": 0.1},
                               {"params": reference[1:], "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.99))
    for _ in range(3):
        grads = [torch.randn_like(p) for p in reference]
        for p, q, g in zip(model.parameters(), reference, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        plain.step()
    for ours, theirs in zip(model.parameters(), reference):  # same update rule, different rounding at most
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


def test_adamw_falls_back_where_fused_is_unsupported(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(params, fused=None, **options):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **options)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    p = torch.nn.Parameter(torch.ones(2))
    opt = adamw((q for q in [p]), lr=0.5)  # a generator of parameters is read once and still reaches the fallback
    assert not opt.defaults["fused"] and opt.param_groups[0]["params"] == [p]


def test_schedules():
    f = lambda step, s, w=0: lr_factor(step, schedule=s, total_steps=100, warmup_steps=w)
    assert f(0, "cosine", 10) == pytest.approx(0.1) and f(9, "cosine", 10) == pytest.approx(1.0)
    assert f(55, "cosine", 10) == pytest.approx(0.5) and f(100, "cosine", 10) == pytest.approx(0.0)
    assert f(50, "linear") == pytest.approx(0.5) and f(99, "constant") == 1.0 and f(3, "constant", 10) == 0.4
    # official constant_cosine: flat for the first half (no warm-up), then a cosine to 0
    assert f(0, "constant_cosine") == 1.0 and f(49, "constant_cosine") == 1.0
    assert f(75, "constant_cosine") == pytest.approx(0.5) and f(100, "constant_cosine") == pytest.approx(0.0)


def test_no_weight_decay_on_biases_and_norms():
    model = TinyTask().build_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is model.encoder.latents for p in decay["params"])  # latents are decayed (official)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])


def test_run_learns_and_writes_its_records(tmp_path):
    cfg = dataclasses.replace(SHORT, epochs=8, checkpoint_every=5, keep_last=2, log_every=2, eval_every=6)
    result = run_task(TinyTask(), cfg, tmp_path, **QUIET)
    assert result["steps"] == 24 and result["test_accuracy"] > 0.85 and result["skipped_steps"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == result["test_accuracy"]
    assert [p.name for p in step_dirs(tmp_path / "checkpoints")] == ["step-00000020", "step-00000024"]  # keep 2
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,loss,lr,grad_norm,examples_per_s,elapsed_s,skipped,accuracy"
    assert [int(row.split(",")[0]) for row in lines[1:]] == list(range(2, 25, 2))
    assert [row.split(",")[0] for row in (tmp_path / "eval.csv").read_text().splitlines()] == \
        ["step", "6", "12", "18", "24"]
    assert (tmp_path / "on_end.txt").read_text() == "done"

    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seeded_runs_are_identical(tmp_path, reference):
    run_task(TinyTask(dropout=0.1), SHORT, tmp_path, **QUIET)
    assert_same_weights(weights(tmp_path), reference)


def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path, reference):
    result = run_task(TinyTask(dropout=0.1, interrupt_at=8), SHORT, tmp_path, **QUIET)
    assert result == {"interrupted": True, "step": 8, "checkpoint": str(tmp_path / "checkpoints" / "step-00000008")}
    assert not (tmp_path / "model").exists()
    with pytest.raises(ValueError, match="pass --resume"):
        run_task(TinyTask(dropout=0.1), SHORT, tmp_path, **QUIET)
    run_task(TinyTask(dropout=0.1), SHORT, tmp_path, resume=True, **QUIET)
    assert_same_weights(weights(tmp_path), reference)
    steps = [int(r.split(",")[0]) for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 13))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, reference):
    with pytest.raises(NonFiniteLossError, match=r"at step 8 .*step-00000006"):
        run_task(TinyTask(dropout=0.1, nan_at=8), SHORT, tmp_path, **QUIET)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000006"
    run_task(TinyTask(dropout=0.1), SHORT, tmp_path, resume=True, **QUIET)
    assert_same_weights(weights(tmp_path), reference)


def test_nonfinite_loss_skip_mode(tmp_path):
    cfg = dataclasses.replace(SHORT, on_nonfinite="skip")
    result = run_task(TinyTask(nan_at=5), cfg, tmp_path, **QUIET)
    assert result["skipped_steps"] == 1 and math.isfinite(result["test_loss"])
    assert all(torch.isfinite(w).all() for w in weights(tmp_path).values())


def test_missing_and_corrupted_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        run_task(TinyTask(), SHORT, tmp_path, resume=True, **QUIET)
    run_task(TinyTask(interrupt_at=4), SHORT, tmp_path, **QUIET)
    ckpt = tmp_path / "checkpoints" / "step-00000004"
    cases = [("model.safetensors", b"\x00garbage", "model.safetensors is corrupted"),
             ("optimizer.pt", None, "optimizer.pt is missing"),
             ("rng-rank0.pt", b"not a zip", "rng-rank0.pt is corrupted"),
             ("meta.json", b"{", "meta.json is corrupted")]
    for name, content, message in cases:
        original = (ckpt / name).read_bytes()
        if content is None:
            (ckpt / name).unlink()
        else:
            (ckpt / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            run_task(TinyTask(), SHORT, tmp_path, resume=ckpt, **QUIET)
        (ckpt / name).write_bytes(original)
    with pytest.raises(CheckpointError, match="does not exist"):
        run_task(TinyTask(), SHORT, tmp_path, resume=tmp_path / "nope", **QUIET)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # AdamW's eps 1e-5 (not 1e-8): with a tiny eps, gradients near 0 turn summation-order noise into updates ~lr
    cfg = dataclasses.replace(SHORT, checkpoint_every=0, eps=1e-5)
    run_task(TinyTask(noise=0), cfg, tmp_path / "full", **QUIET)
    run_task(TinyTask(noise=0), dataclasses.replace(cfg, grad_accum=4), tmp_path / "accum", **QUIET)
    losses = [[float(r.split(",")[2]) for r in (tmp_path / d / "metrics.csv").read_text().splitlines()[1:]]
              for d in ("full", "accum")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the same 12 global batches, summed in another order
    a, b = weights(tmp_path / "full"), weights(tmp_path / "accum")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_activation_checkpointing_gives_the_same_run(tmp_path, reference):
    run_task(TinyTask(dropout=0.1), dataclasses.replace(SHORT, activation_checkpointing=True), tmp_path, **QUIET)
    assert_same_weights(weights(tmp_path), reference)  # recomputation replays the same dropout masks


def test_bf16_autocast_trains(tmp_path):
    result = run_task(TinyTask(), dataclasses.replace(SHORT, precision="bf16", epochs=8), tmp_path, **QUIET)
    assert result["test_accuracy"] > 0.8
    assert all(w.dtype == torch.float32 for w in weights(tmp_path).values())


def test_fsdp_in_one_process_matches_and_resumes(tmp_path, reference):
    cfg = dataclasses.replace(SHORT, strategy="fsdp")
    assert run_task(TinyTask(dropout=0.1, interrupt_at=5), cfg, tmp_path, **QUIET)["interrupted"]
    assert (tmp_path / "checkpoints" / "step-00000005" / "dcp").is_dir()  # sharded (DCP) checkpoint
    run_task(TinyTask(dropout=0.1), cfg, tmp_path, resume=True, **QUIET)
    assert_same_weights(weights(tmp_path), reference)


def test_lamb_and_constant_cosine_train(tmp_path):
    cfg = dataclasses.replace(SHORT, optimizer="lamb", schedule="constant_cosine", lr=1e-2, weight_decay=0.1, epochs=8)
    assert run_task(TinyTask(), cfg, tmp_path, **QUIET)["test_accuracy"] > 0.8


def test_recipe_overrides():
    r = apply_overrides(digits(), [("lr", "3e-4"), ("max-shift", "0"), ("steps", "5"), ("betas", "0.8,0.9"),
                                   ("activation_checkpointing", "true"), ("label_smoothing", "0.1")])
    assert (r.engine.lr, r.task.max_shift, r.engine.steps, r.engine.betas) == (3e-4, 0, 5, (0.8, 0.9))
    assert r.engine.activation_checkpointing and r.task.label_smoothing == 0.1
    assert digits().task.label_smoothing == 0.0 and digits().engine.epochs == 80  # a fresh recipe each call
    assert apply_overrides(text(), [("epochs", "2")]).engine.steps is None  # epochs replace the default steps
    assert apply_overrides(text(), [("latents", "16"), ("data_root", "none")]).task.num_latents == 16
    assert apply_overrides(text(), [("engine.seed", "3")]).engine.seed == 3
    with pytest.raises(ValueError, match=r"unknown setting 'latent'.*valid keys: .*batch_size.*max_shift"):
        apply_overrides(digits(), [("latent", "3")])
    with pytest.raises(ValueError, match="lr='fast' is invalid: expected a number"):
        apply_overrides(digits(), [("lr", "fast")])
    with pytest.raises(ValueError, match="max_shift=-1"):
        apply_overrides(digits(), [("max_shift", "-1")])


def test_cli_train_errors_and_config(tmp_path, capsys):
    assert main(["train", "digits", "--out", str(tmp_path), "--latents", "3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["train", "text", "--set", "lr=1e-4", "--optimizer", "lamb", "--include-tests", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["engine"]["lr"] == 1e-4 and printed["engine"]["optimizer"] == "lamb" and printed["include_tests"]
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "metrics.csv is missing" in capsys.readouterr().err
