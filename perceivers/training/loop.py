"""The training engine behind ``perceivers train RECIPE``: one loop for every task, on one process or many.

A :class:`~perceivers.training.task.Task` knows its model, data and loss; an
:class:`~perceivers.training.config.EngineConfig` says how to optimise and distribute; :func:`run_task` trains,
checkpoints, logs, evaluates and saves. Under ``torchrun`` with ``strategy='ddp'`` or ``'fsdp'`` every process runs
the same call; the global batch is split over ranks and accumulation steps.

Determinism: the model is built after seeding with ``seed``; the data order is a seeded permutation per epoch
(:class:`~perceivers.training.runtime.DataOrder`); each rank's RNG streams (dropout, augmentation) are seeded from
``seed`` and its rank, and saved in every checkpoint. Resuming on CPU therefore ends bit-identical to an
uninterrupted run.

Faults: rank 0 holds a lock on the run folder for the whole run (a second run into it is refused); a resumed run
must keep the checkpoint's settings unless ``allow_change`` names them; an ``OSError`` while writing is one line
naming the file; a collective that fails (a peer froze past ``collective_timeout``, died or was killed) is one
line; Ctrl-C during the final evaluation and save stops the run as interrupted.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from perceivers.core.errors import ConfigError, UserError
from perceivers.core.files import FolderLock, reported_os_errors, write_json
from perceivers.training import dist as D
from perceivers.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from perceivers.training.config import (
    EngineConfig,
    check_resume_settings,
    settings_record,
)
from perceivers.training.optim import build_optimizer, lr_factor
from perceivers.training.records import RunRecords
from perceivers.training.runtime import (
    DataOrder,
    NonFiniteLossError,
    StopRequest,
    isolated_rng,
    seed_all,
    to_device,
)
from perceivers.training.task import Task


def run_task(task: Task, config: EngineConfig, out_dir: str | Path, *, resume: bool | str | Path = False,
             allow_change: Iterable[str] = (), progress: bool = True, log=print) -> dict[str, Any]:
    """Train ``task`` with ``config``; write ``out_dir/{checkpoints/, metrics.csv, eval.csv, model/, metrics.json}``.

    ``resume=True`` continues from the latest checkpoint under ``out_dir/checkpoints`` (a path: that checkpoint);
    settings that differ from the checkpoint's are refused unless ``allow_change`` names them
    (:func:`~perceivers.training.config.check_resume_settings`). Returns the final metrics on rank 0 (``{}`` on
    other ranks), or ``{"interrupted": True, ...}`` after Ctrl-C / SIGTERM (every rank), also during the final
    evaluation and save. Rank 0 logs the task's one-line summary at the end."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a perceivers.training.task.Task, got {type(task).__name__}")
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
    allow = (allow_change,) if isinstance(allow_change, str) else tuple(allow_change)
    allow = tuple(k.strip() for item in allow for k in str(item).split(",") if k.strip())
    ctx = D.setup(config.strategy, config.device, config.collective_timeout)
    try:
        return _Run(task, config, Path(out_dir), ctx, log if ctx.is_main else (lambda *a, **k: None)).run(
            resume=resume, progress=progress, allow_change=allow)
    except RuntimeError as exc:
        if ctx.world_size > 1 and not isinstance(exc, UserError) and D.is_collective_failure(exc):
            raise D.collective_failure(exc, ctx.rank, ctx.world_size, config.collective_timeout) from None
        raise
    finally:
        ctx.close()


class _Run:
    """One training run of a task on this process (every rank builds one)."""

    def __init__(self, task: Task, config: EngineConfig, out: Path, ctx: D.DistContext, log) -> None:
        self.task, self.cfg, self.out, self.ctx, self.log = task, config, out, ctx, log
        self.ckpt_root = out / "checkpoints"

    # ----------------------------------------------------------------------------------------------- set-up
    def _build(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        seed_all(cfg.seed)
        self.raw = self.task.build_model().to(ctx.device)
        self.num_parameters = sum(p.numel() for p in self.raw.parameters())
        self.dataset = self.task.train_dataset(cfg.seed)
        self.order = DataOrder(len(self.dataset), cfg.batch_size, seed=cfg.seed, drop_last=cfg.drop_last)
        self.total = cfg.num_steps(self.order.steps_per_epoch)
        self.chunks = ctx.world_size * cfg.grad_accum
        last = len(self.dataset) % cfg.batch_size
        smallest = last if (last and not cfg.drop_last) else cfg.batch_size
        if smallest < self.chunks:
            raise ConfigError(f"batch_size={cfg.batch_size} cannot be split over {ctx.world_size} process(es) x "
                              f"grad_accum={cfg.grad_accum} (the smallest batch has {smallest} items): use a larger "
                              f"batch_size, or drop_last=True")
        blocks = self.task.blocks(self.raw)
        if cfg.activation_checkpointing:
            D.apply_activation_checkpointing(blocks)
        self.model = D.wrap(self.raw, cfg.strategy, ctx, blocks, find_unused_parameters=cfg.find_unused_parameters)
        self.plain = self.model.module if cfg.strategy == "ddp" else self.raw  # unwrapped (FSDP: sharded in place)
        self.optimizer = build_optimizer(self.raw, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         betas=cfg.betas, eps=cfg.eps, fused=cfg.fused_optimizer)
        self.forward_model = torch.compile(self.model) if cfg.compile else self.model
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_fraction * self.total)
        seed_all(cfg.seed * 1_000_003 + 7_919 * (ctx.rank + 1))  # per-rank training streams

    def _start(self, resume: bool | str | Path, allow_change: tuple[str, ...]) -> dict[str, Any]:
        """Fresh start (clearing a finished run's records) or restore from a checkpoint; returns progress state."""
        ctx = self.ctx
        state = {"step": 0, "train_seconds": 0.0, "skipped": 0, "examples": 0}
        if resume:
            path = latest_checkpoint(self.ckpt_root) if resume is True else Path(resume)
            if path is None:
                raise CheckpointError(f"--resume: no checkpoint under {self.ckpt_root} (a complete one holds "
                                      "meta.json); run without --resume to start")
            if not path.is_dir():
                raise CheckpointError(f"--resume: checkpoint folder {str(path)!r} does not exist")
            check_resume_settings(read_meta(path), self._settings(), path / "meta.json", allow_change, self.log)
            meta = load_checkpoint(path, model=self.plain, optimizer=self.optimizer, strategy=self.cfg.strategy,
                                   ctx=ctx)
            state.update({k: meta[k] for k in state if k in meta})
            if meta["step"] > self.total:
                raise CheckpointError(f"{path / 'meta.json'}: step {meta['step']} is beyond this run's {self.total} "
                                      "steps: resume with at least as many steps (--steps / --epochs)")
            if ctx.is_main:
                self.records.truncate_after(meta["step"])
            self.log(f"resumed from {path} at step {meta['step']}/{self.total}")
            return state
        latest = latest_checkpoint(self.ckpt_root)
        if latest is not None and not read_meta(latest).get("final", False):
            raise ConfigError(f"{self.out} holds an unfinished run (checkpoint {latest}): pass --resume to continue "
                              "it, or choose another --out (or delete the folder) to start afresh")
        ctx.barrier()
        if ctx.is_main:
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            self.records.reset()
        ctx.barrier()
        return state

    def _settings(self) -> dict[str, Any]:
        return settings_record(self.cfg, self.task.name, self.task.settings())

    def _on_main(self, action: Callable[[], Any]) -> Any:
        """``action()`` on rank 0; if it raises there, every rank raises (none is left waiting at a barrier)."""
        error, result = None, None
        if self.ctx.is_main:
            try:
                result = action()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = exc
        failed = self.ctx.all_reduce_sum(torch.tensor([float(error is not None)], device=self.ctx.device))
        if error is not None:
            raise error
        if float(failed[0]) > 0:
            raise ConfigError(f"rank 0 could not prepare the run folder {self.out} (see its error)")
        return result

    # ----------------------------------------------------------------------------------------------- steps
    def _micro_batches(self, step: int) -> tuple[list[torch.Tensor], int]:
        idx = self.order.batch(step)
        parts = torch.tensor_split(idx, self.chunks)
        mine = [parts[m * self.ctx.world_size + self.ctx.rank] for m in range(self.cfg.grad_accum)]
        return mine, len(idx)

    def _step(self, step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        """Forward/backward of all micro-batches of ``step``; returns the summed stats (all ranks) and batch size."""
        cfg, ctx = self.cfg, self.ctx
        mine, n_global = self._micro_batches(step)
        loss_sum = torch.zeros((), dtype=torch.float64)
        metric_sums: dict[str, float] = {}
        autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        for m, chunk in enumerate(mine):
            batch = to_device(default_collate([self.dataset[i] for i in chunk.tolist()]), ctx.device)
            with D.no_sync(self.model, cfg.strategy, sync=m == len(mine) - 1):
                with autocast:
                    loss, metrics = self.task.training_loss(self.forward_model, batch)
                (loss * (len(chunk) * ctx.world_size / n_global)).backward()
            loss_sum += loss.detach().double().cpu() * len(chunk)
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * len(chunk)
        keys = sorted(metric_sums)
        stats = torch.tensor([float(loss_sum), float(not math.isfinite(float(loss_sum))), float(self.stop.requested),
                              *[metric_sums[k] for k in keys]], dtype=torch.float64)
        stats = self.ctx.all_reduce_sum(stats.to(ctx.device)).cpu()
        return stats, {k: float(stats[3 + i]) / n_global for i, k in enumerate(keys)}, n_global

    def _update(self, step: int) -> tuple[float, bool]:
        """Clip, check and apply the gradients of ``step``; returns (grad norm, whether the update was applied)."""
        cfg = self.cfg
        norm = nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # FSDP: a sharded norm
        ok = math.isfinite(norm) and not self._nonfinite_loss
        if ok:
            factor = lr_factor(step, schedule=cfg.schedule, total_steps=self.total, warmup_steps=self.warmup,
                               constant_fraction=cfg.constant_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, ok

    def _save(self, step: int, state: dict[str, Any], *, final: bool = False) -> Path:
        meta = {**state, "step": step, "final": final, "total_steps": self.total, **self._settings()}
        return save_checkpoint(self.ckpt_root, step, model=self.plain, optimizer=self.optimizer,
                               strategy=self.cfg.strategy, ctx=self.ctx, meta=meta, keep_last=self.cfg.keep_last)

    # ----------------------------------------------------------------------------------------------- evaluation
    def _plain_copy(self) -> nn.Module | None:
        """The trained model as a plain module on rank 0 (FSDP: gathered into a fresh model); None elsewhere."""
        if self.cfg.strategy != "fsdp":
            return self.plain if self.ctx.is_main else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        full = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.ctx.is_main:
            return None
        with isolated_rng(self.ctx.device):
            fresh = self.task.build_model()
        fresh.load_state_dict(full)
        return fresh.to(self.ctx.device)

    def _evaluate(self, step: int) -> dict[str, float]:
        model = self._plain_copy()
        result: dict[str, float] = {}
        if model is not None:
            was_training = model.training
            with isolated_rng(self.ctx.device):
                result = dict(self.task.evaluate(model))
            model.train(was_training)
            self.records.log_eval({"step": step, **result})
        self.ctx.barrier()
        return result

    # ----------------------------------------------------------------------------------------------- main
    def run(self, *, resume: bool | str | Path, progress: bool, allow_change: tuple[str, ...]) -> dict[str, Any]:
        ctx = self.ctx
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"{self.out} is a file: the run folder (--out) must be a folder")
        self._build()
        lock = self._on_main(self._open_folder)
        self.records = None
        try:
            if ctx.is_main:
                with reported_os_errors("write", self.out):
                    self.records = RunRecords(self.out)
            self.stop = StopRequest(ctx.world_size)
            with self.stop:
                return self._train(self._start(resume, allow_change), progress)
        finally:
            if self.records is not None:
                self.records.close()
            if lock is not None:
                lock.release()

    def _open_folder(self) -> FolderLock:
        """Create the run folder and lock it for this run (rank 0); a second run into it is refused."""
        with reported_os_errors("create the run folder", self.out):
            self.out.mkdir(parents=True, exist_ok=True)
        return FolderLock(self.out).acquire()

    def _train(self, state: dict[str, Any], progress: bool) -> dict[str, Any]:
        cfg, ctx, spe = self.cfg, self.ctx, self.order.steps_per_epoch
        self.log(f"{self.task.name}: {self.num_parameters:,} parameters, {len(self.dataset):,} training items, "
                 f"{self.total} steps x batch {cfg.batch_size} ({spe} steps per epoch), {ctx.world_size} process(es), "
                 f"strategy {cfg.strategy}, device {ctx.device}")
        self.model.train()
        bar = tqdm(total=self.total, initial=state["step"], desc="train", unit="step", dynamic_ncols=True,
                   disable=not (progress and ctx.is_main))
        window: list[float] = []  # losses (and task metrics) since the last logged row
        window_metrics: dict[str, float] = {}
        t_log, ex_log, last_norm, start = time.perf_counter(), 0, 0.0, time.perf_counter() - state["train_seconds"]
        step = state["step"]
        while step < self.total:
            stats, metrics, n = self._step(step)
            loss = float(stats[0]) / n
            self._nonfinite_loss = stats[1] > 0
            norm, applied = self._update(step)
            if not applied:
                where = f"step {step + 1} (epoch {step // spe + 1})"
                if cfg.on_nonfinite == "stop":
                    bar.close()
                    last = latest_checkpoint(self.ckpt_root)
                    raise NonFiniteLossError(
                        f"non-finite loss {loss} / gradient norm {norm} at {where}: stopped before updating the "
                        f"weights; last good checkpoint: {last or 'none written yet'}. Lower the learning rate or "
                        "enable --on-nonfinite skip")
                state["skipped"] += 1
                self.log(f"skipped {where}: non-finite loss {loss} / gradient norm {norm}")
                if state["skipped"] > cfg.max_skip_fraction * self.total:
                    bar.close()
                    raise NonFiniteLossError(
                        f"{state['skipped']} of the first {step + 1} steps had a non-finite loss or gradient norm and "
                        f"were skipped, more than max_skip_fraction={cfg.max_skip_fraction:g} of the run's "
                        f"{self.total} steps: stopped, not a trained model; last good checkpoint: "
                        f"{latest_checkpoint(self.ckpt_root) or 'none written yet'}. Lower the learning rate")
            step += 1
            state["step"], state["examples"] = step, state["examples"] + n
            ex_log += n
            window.append(loss)
            for k, v in metrics.items():
                window_metrics[k] = window_metrics.get(k, 0.0) + v
            last_norm = norm
            bar.update(1)
            if ctx.is_main and (step % cfg.log_every == 0 or step == self.total):
                now = time.perf_counter()
                good = [v for v in window if math.isfinite(v)]
                row = {"step": step, "epoch": step / spe, "loss": sum(good) / max(1, len(good)),
                       "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": last_norm,
                       "examples_per_s": ex_log / max(now - t_log, 1e-9), "elapsed_s": now - start,
                       "skipped": state["skipped"], **{k: v / len(window) for k, v in window_metrics.items()}}
                self.records.log_train(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", ex_s=f"{row['examples_per_s']:.0f}",
                                **({"skipped": state["skipped"]} if state["skipped"] else {}))
                window, window_metrics, t_log, ex_log = [], {}, now, 0
                state["train_loss"] = row["loss"]
            state["train_seconds"] = time.perf_counter() - start
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total:
                self._evaluate(step)
            if stats[2] > 0:  # Ctrl-C / SIGTERM on some rank: save and leave
                bar.close()
                path = self._save(step, state)
                self.log(f"interrupted at step {step}/{self.total}: saved {path}; continue with --resume")
                return {"interrupted": True, "step": step, "checkpoint": str(path)}
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total:
                self._save(step, state)
        bar.close()
        return self._finish(state)

    def _finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Final checkpoint, evaluation, model and metrics. Ctrl-C here stops at once in one process (a flag between
        the stages under torchrun): nothing is half-written (atomic writes) and the run reports itself interrupted;
        ``--resume`` then finishes it from the final checkpoint."""
        self.stop.immediate = True
        try:
            path = self._save(self.total, state, final=True)
            if self._stop_requested():
                return self._interrupted_at_end()
            result = self._final_outputs(state, path)
        except KeyboardInterrupt:
            return self._interrupted_at_end()
        self.ctx.barrier()
        return result

    def _stop_requested(self) -> bool:
        flag = torch.tensor([float(self.stop.requested)], dtype=torch.float64, device=self.ctx.device)
        return float(self.ctx.all_reduce_sum(flag)[0]) > 0

    def _interrupted_at_end(self) -> dict[str, Any]:
        last = latest_checkpoint(self.ckpt_root)
        self.log(f"interrupted during the final evaluation and save: no model written; {last or 'no checkpoint'} "
                 "is kept; finish with --resume")
        return {"interrupted": True, "step": self.total, "checkpoint": str(last) if last else None}

    def _final_outputs(self, state: dict[str, Any], path: Path) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        model = self._plain_copy()
        if model is None:
            return {}
        model.eval()
        with isolated_rng(ctx.device):
            evaluation = dict(self.task.evaluate(model))
        self.records.log_eval({"step": self.total, **evaluation})
        with reported_os_errors("write", self.out / "model"):
            model.to("cpu").save_pretrained(self.out / "model")  # type: ignore[operator]
        result = {"task": self.task.name, "num_parameters": self.num_parameters, "steps": self.total,
                  "epochs": self.total / self.order.steps_per_epoch, "train_loss": state.get("train_loss"),
                  "train_seconds": state["train_seconds"], "skipped_steps": state["skipped"],
                  "examples_per_s": state["examples"] / max(state["train_seconds"], 1e-9),
                  "world_size": ctx.world_size, **evaluation,
                  **self.task.describe(), "engine": cfg.to_dict(),
                  "checkpoint": str(path)}
        with reported_os_errors("write", self.out / "metrics.json"):
            write_json(self.out / "metrics.json", result)
        with isolated_rng(ctx.device), reported_os_errors("write", self.out):
            self.task.on_end(model, self.out)
        model.to(ctx.device)
        summary = self.task.summary(result)
        if summary:
            self.log(summary)
        if state["skipped"]:
            self.log(f"skipped {state['skipped']} of {self.total} steps (non-finite loss or gradient norm)")
        self.log(f"saved model to {self.out / 'model'} and metrics to {self.out / 'metrics.json'}")
        return result
