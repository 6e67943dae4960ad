"""Process groups and model wrapping for the engine: one process, DDP or FSDP2 (``fully_shard``).

Launch several processes with ``torchrun``; its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) is read here. Backend: NCCL on CUDA, gloo on CPU. Models stay plain
single-device modules: wrapping happens from outside, per block then the root for FSDP2.

Every wait on other processes is bounded by the engine's ``collective_timeout`` (passed to
``init_process_group``); a collective that times out or loses a peer (a process that froze, died or was killed)
ends every other process with one :class:`CollectiveError` line instead of a backend traceback.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from perceivers.core.errors import ConfigError, UserError
from perceivers.core.validation import check_choice, fail

STRATEGIES = ("none", "ddp", "fsdp")


class CollectiveError(UserError, RuntimeError):
    """A collective operation failed because another process froze, died or was killed (or could not be reached
    within ``collective_timeout``): not a bug of this process, so one line (the CLI's exit status 2)."""


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a process-group failure (timeout, lost peer) from gloo / NCCL / the rendezvous store."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and bool(re.search(r"gloo|NCCL|Connection (closed|reset)|Timed out", str(exc))))


def collective_failure(exc: BaseException, rank: int, world_size: int, timeout: float) -> CollectiveError:
    """The one-line :class:`CollectiveError` for a collective failure ``exc`` on ``rank``."""
    text = str(exc)
    if re.search(r"timed out|timeout", text, re.IGNORECASE):
        why = f"no answer from another process within collective_timeout={timeout:g} s (is one frozen or stopped?)"
    elif re.search(r"Connection (closed|reset)|Broken pipe|peer", text):
        why = "the connection to another process was lost (did one die or get killed?)"
    else:
        why = " ".join(re.sub(r"^\[[^\]]*\]\s*", "", text).split())[:200]
    return CollectiveError(f"rank {rank} of {world_size}: a collective operation failed: {why}; see the other "
                           "processes' output; the checkpoints written so far are intact (continue with --resume)")


@dataclass
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, its ``device`` and whether we own the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed and self.world_size > 1:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (in place; a no-op in one process)."""
        if self.distributed and self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def close(self) -> None:
        if self.owns_group and self.distributed:
            dist.destroy_process_group()


def resolve_device(device: str, local_rank: int) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a bare ``cuda`` becomes ``cuda:LOCAL_RANK``. A device string
    torch does not know, or a CUDA device this machine lacks, is a :class:`~perceivers.core.errors.ConfigError`
    naming ``device``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is invalid: expected a torch device such as cpu, cuda, cuda:1, "
                          "or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            fail("device", device, "cpu or auto: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if dev.index >= count:
            where = f" (LOCAL_RANK={local_rank})" if device == "cuda" else ""
            fail("device", str(dev), f"a CUDA device this machine has ({count} of them){where}")
        torch.cuda.set_device(dev)
    return dev


def setup(strategy: str, device: str, timeout: float = 600.0) -> DistContext:
    """Join (or create) the process group that ``strategy`` needs; ``WORLD_SIZE`` > 1 requires ddp or fsdp. A bad
    ``strategy`` or ``device``, or several processes with ``strategy='none'``, is a
    :class:`~perceivers.core.errors.ConfigError`. ``timeout`` (seconds) bounds joining the group and every
    collective of a group created here."""
    check_choice("strategy", strategy, STRATEGIES)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if strategy == "none" and world > 1:
        raise ConfigError(f"strategy='none' is invalid when launched on {world} processes (torchrun): pass "
                          "--strategy ddp or --strategy fsdp")
    dev = resolve_device(device, local_rank)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if strategy == "none" or dist.is_initialized():
        if dist.is_initialized():
            ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
        return ctx
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if "MASTER_ADDR" in os.environ:
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        except RuntimeError as exc:
            if not is_collective_failure(exc):
                raise
            raise collective_failure(exc, rank, world, timeout) from None
    else:  # one process without torchrun: a private group of one
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    ctx.owns_group = True
    return ctx


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost sub-modules whose class name ends in ``Block`` (attention blocks): the units of
    activation checkpointing and FSDP sharding. Weight-shared blocks appear once."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if type(child).__name__.endswith("Block"):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def apply_activation_checkpointing(modules: list[nn.Module]) -> None:
    """Recompute each module's activations in the backward pass (``torch.utils.checkpoint``, non-reentrant).

    The module's ``forward`` is replaced on the instance, so parameter names (and checkpoints) are unchanged.
    """
    from torch.utils.checkpoint import checkpoint

    for module in modules:
        forward = module.forward

        @functools.wraps(forward)
        def run(*args, _forward: Callable = forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        module.forward = run  # type: ignore[method-assign]


def wrap(model: nn.Module, strategy: str, ctx: DistContext, blocks: list[nn.Module], *,
         find_unused_parameters: bool = False) -> nn.Module:
    """DDP around the model, or FSDP2 ``fully_shard`` on every block then the root; ``none`` returns it."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    return model


def no_sync(model: nn.Module, strategy: str, sync: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-steps (``sync=False``)."""
    if sync or strategy == "none":
        if strategy == "fsdp":
            model.set_requires_gradient_sync(True)  # type: ignore[operator]
        return nullcontext()
    if strategy == "ddp":
        return model.no_sync()  # type: ignore[operator]
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    return nullcontext()
