"""Helpers shared by the command modules: the user-input policy, loading a model folder, CPU threads.

See :mod:`perceivers.cli.main` for the error policy these helpers implement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from perceivers.core.errors import UserError
from perceivers.core.validation import check_optional_int, fail


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
    """The model folder ``--checkpoint`` on ``--device``; a missing, unreadable or mismatched folder is a user error."""
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
    with user_input("--checkpoint"):
        return from_pretrained(checkpoint, device=device)


def set_threads(threads: int | None) -> None:
    import torch

    check_optional_int("--threads", threads)
    if threads is not None:
        torch.set_num_threads(threads)
