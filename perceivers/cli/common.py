"""Helpers shared by the command modules: the user-input policy, loading a model folder, CPU threads.

See :mod:`perceivers.cli.main` for the error policy these helpers implement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from perceivers.core.errors import ConfigError, UserError
from perceivers.core.validation import check_finite, check_optional_int, fail


@contextlib.contextmanager
def user_input(argument: str | None = None) -> Iterator[None]:
    """Treat a ``ValueError`` or ``OSError`` raised in the block as bad user input: re-raise it as a one-line
    :class:`UserError`, prefixed with ``argument`` (the flag that named the input). Wrap only calls that read input
    (see the module docstring), never a computation."""
    try:
        yield
    except (UserError, ValueError, OSError) as exc:
        raise UserError(f"{argument}: {exc}" if argument else str(exc)) from exc


def load_model(checkpoint: str, device: str):
    """The model folder ``--checkpoint`` on ``--device``, in float32; a missing, unreadable or mismatched folder, integer
    weights and NaN or infinite weights are a user error. ``--device`` is checked first."""
    import torch

    from perceivers.models import from_pretrained

    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None:
        fail("--device", device, "a torch device such as cpu, cuda or cuda:1")
    elif dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        fail("--device", device, f"a device this machine has ({torch.cuda.device_count()} CUDA devices)")
    check_weight_dtypes(checkpoint)
    with user_input("--checkpoint"):
        model = from_pretrained(checkpoint, device=device)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()  # float16 / bfloat16 / float64 weights: the command line computes in float32
    for name, tensor in model.state_dict().items():
        with user_input(f"--checkpoint {checkpoint}: model.safetensors"):
            check_finite(name, tensor)
    return model


def check_weight_dtypes(checkpoint: str) -> None:
    """``ConfigError`` naming the first tensor of ``checkpoint/model.safetensors`` that is not floating point (integer
    weights cannot be trained or evaluated); a missing or unreadable file is left to ``from_pretrained``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(checkpoint) / "model.safetensors"), framework="pt") as f:
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError):
        return
    for key, dtype in dtypes.items():
        if not dtype.startswith(("F", "BF")):
            raise ConfigError(f"--checkpoint {checkpoint}: model.safetensors holds {key!r} as {dtype}: expected "
                              "floating-point weights (F16, BF16, F32 or F64)")


def set_threads(threads: int | None) -> None:
    import torch

    check_optional_int("--threads", threads)
    if threads is not None:
        torch.set_num_threads(threads)
