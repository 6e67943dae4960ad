"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Order of operations (official ``sample_utils.process_logits``, plus top-k): the filters act on the
*untempered* logits, top-k first, then top-p; the kept logits are then divided by the temperature.
Removed tokens get ``-inf``. Both filters keep ties at their boundary, so they may keep more than
``k`` tokens, or more mass than ``top_p``, when logits are equal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from perceivers.core.validation import check_float, check_optional_int


def check_sampling_args(*, temperature: Any = 1.0, top_k: Any = None, top_p: Any = None) -> None:
    """:class:`~perceivers.core.errors.ConfigError` (a ``ValueError``) or
    :class:`~perceivers.core.errors.ConfigTypeError` (a ``TypeError``) naming the argument unless
    ``temperature > 0``, ``top_k >= 1`` or ``None``, ``top_p`` in ``(0, 1]`` or ``None``."""
    check_float("temperature", temperature, minimum=0.0, min_inclusive=False)
    check_optional_int("top_k", top_k)
    if top_p is not None:
        check_float("top_p", top_p, minimum=0.0, maximum=1.0, min_inclusive=False)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits per row (and ties with the k-th); ``(..., V) -> (..., V)``."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (and ties with its
    least likely member); ``(..., V) -> (..., V)``."""
    if p >= 1.0:
        return logits
    sorted_logits, _ = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
    # Token r is needed while the mass of the tokens before it is still short of p; the first is always kept.
    needed = (mass_before < p).sum(dim=-1, keepdim=True).clamp(min=1)  # (..., 1)
    threshold = sorted_logits.gather(-1, needed - 1)  # logit of the least likely kept token
    return logits.masked_fill(logits < threshold, -math.inf)


def process_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """Filters then temperature: ``(..., V)`` logits -> processed logits (``-inf`` where removed)."""
    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = logits.float()
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits / temperature


def sample_next(logits: Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Next token ids ``(B,)`` from ``logits: (B, V)``: argmax unless ``do_sample``; sampling draws from
    the processed distribution with ``generator`` (reproducible for a seeded generator)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
