"""``generate(model, prompt, ...)``: Perceiver AR generation with a fixed-size KV cache (official ``sample_utils.py``).

Checks the prompt and the arguments once (where the data enters: the cached decode steps then run without
device syncs), runs the prompt pass, then greedy or sampled decoding (:mod:`perceivers.generation.sampling`)
or beam search (:mod:`perceivers.generation.beam`) on a :class:`~perceivers.generation.decoder.CachedDecoder`,
whose module doc gives the cache schedule and what each step's logits equal. On CPU the decode loop runs in
the weight layout of :mod:`perceivers.generation.layout`.

A *prompt* longer than ``max_context_length`` is an error (``ValueError`` naming ``prompt``), never
silently truncated: slice it yourself. Every check of a caller's argument raises
:class:`~perceivers.core.errors.ConfigError` / :class:`~perceivers.core.errors.ConfigTypeError` (``ValueError`` /
``TypeError`` subclasses) naming the argument; a plain ``ValueError`` from the decoding itself is a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.core.validation import (
    check_bool,
    check_float,
    check_int,
    check_optional_int,
    fail,
)
from perceivers.generation.beam import beam_search
from perceivers.generation.decoder import CachedDecoder, GenerationOutput
from perceivers.generation.layout import column_major_linears
from perceivers.generation.sampling import check_sampling_args, sample_next

#: Upper bound on ``max_new_tokens``: the output ``(B, L + max_new_tokens)`` is allocated before the first step, so
#: an absurd value is refused at once rather than by the allocator (16,777,216 tokens: 128 MiB of ids per row).
MAX_NEW_TOKENS = 1 << 24


def _prompt_tensor(prompt: Any, prompt_lengths: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """A right-padded ``(B, L)`` long tensor and its lengths ``(B,)`` from a tensor or lists of ids."""
    if isinstance(prompt, Tensor):
        if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
            raise ConfigTypeError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
        ids = prompt[None] if prompt.dim() == 1 else prompt
        if ids.dim() != 2:
            raise ConfigError(f"prompt must have shape (B, L) or (L,), got {tuple(prompt.shape)}")
        ids = ids.to(device=device, dtype=torch.long)
        if prompt_lengths is None:
            lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=device)
        else:
            lengths = torch.as_tensor(prompt_lengths, device=device)
            if lengths.dtype == torch.bool or lengths.dtype.is_floating_point or lengths.dtype.is_complex:
                raise ConfigTypeError(f"prompt_lengths must hold integers, got dtype {lengths.dtype}")
            if tuple(lengths.shape) != (ids.shape[0],):
                raise ConfigError(f"prompt_lengths must be {ids.shape[0]} integers, got {prompt_lengths!r}")
            if lengths.numel() and int(lengths.max()) > ids.shape[1]:
                raise ConfigError(f"prompt_lengths exceed the prompt width {ids.shape[1]}: {lengths.tolist()}")
        return ids, lengths.long()
    if prompt_lengths is not None:
        raise ConfigError("prompt_lengths is only for a padded tensor prompt; lists carry their own lengths")
    if not isinstance(prompt, Sequence) or isinstance(prompt, str) or not prompt:
        raise ConfigTypeError(f"prompt must be a tensor of token ids or a non-empty list of lists of ints, "
                              f"got {prompt!r}")
    rows = [list(p) if isinstance(p, Sequence) and not isinstance(p, str) else None for p in prompt]
    if any(r is None or any(isinstance(t, bool) or not isinstance(t, int) for t in r) for r in rows):
        raise ConfigTypeError("prompt must be a list of lists of int token ids")
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), max(width, 1), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return ids.to(device), torch.tensor([len(r) for r in rows], device=device)


def _check_prompt(ids: Tensor, lengths: Tensor, config: Any) -> None:
    if ids.numel() == 0 or int(lengths.min()) < 1:
        raise ConfigError(f"prompt is empty (lengths {lengths.tolist()}): every prompt needs at least one token, "
                          "e.g. the SOS id")
    valid = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
    bad = valid & ((ids < 0) | (ids >= config.vocab_size))
    if bool(bad.any()):
        raise ConfigError(f"prompt holds ids outside the vocabulary [0, {config.vocab_size}): "
                          f"{sorted(set(ids[bad].tolist()))[:8]}")
    if int(lengths.max()) > config.max_context_length:
        raise ConfigError(f"prompt has {int(lengths.max())} tokens, more than max_context_length="
                          f"{config.max_context_length}; keep its last {config.max_context_length} tokens")


def _check_args(model: Any, *, max_new_tokens: Any, num_beams: Any, do_sample: Any, eos_token_id: Any,
                pad_token_id: Any, cache_latents: Any, generator: Any, longest: int, length_penalty: Any) -> int:
    """Validate; returns the latent cache size ``S``."""
    c = model.config
    if model.training:
        raise ConfigError("generate needs an evaluation-mode model: call model.eval() first")
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    if max_new_tokens > MAX_NEW_TOKENS:
        fail("max_new_tokens", max_new_tokens, f"at most {MAX_NEW_TOKENS:,} (the output is allocated up front)")
    if c.num_positions is not None and c.position_grid is None and longest + max_new_tokens > c.num_positions:
        raise ConfigError(f"max_new_tokens={max_new_tokens} would run past the model's {c.num_positions} absolute "
                          f"positions: a prompt of {longest} tokens leaves room for at most "
                          f"{max(0, c.num_positions - longest)} new tokens")
    check_int("num_beams", num_beams)
    check_float("length_penalty", length_penalty)  # finite: NaN or infinity would make every beam score NaN or 0
    check_bool("do_sample", do_sample)
    if do_sample and num_beams > 1:
        raise ConfigError("do_sample=True with num_beams > 1 is not supported: choose sampling or beam search")
    check_optional_int("eos_token_id", eos_token_id, minimum=0)
    check_int("pad_token_id", pad_token_id, minimum=0)
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None and value >= c.vocab_size:
            raise ConfigError(f"{name}={value} is outside the vocabulary [0, {c.vocab_size})")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    s = cache_latents if cache_latents is not None else max(2, c.num_latents - c.num_latents % 2)
    check_int("cache_latents", s, minimum=2)
    if s % 2 or s > c.max_context_length:
        raise ConfigError(f"cache_latents={s} is invalid: expected an even int in [2, max_context_length="
                          f"{c.max_context_length}]")
    if c.position_grid is not None and longest + max_new_tokens > min(c.max_context_length, c.num_positions):
        raise ConfigError(f"max_new_tokens={max_new_tokens} would run past the position grid {c.position_grid}: "
                          f"a prompt of {longest} tokens leaves room for at most "
                          f"{max(0, min(c.max_context_length, c.num_positions) - longest)} new tokens "
                          f"(max_context_length={c.max_context_length})")
    return s


@torch.no_grad()
def generate(model: Any, prompt: Tensor | Sequence[Sequence[int]], prompt_lengths: Tensor | Sequence[int] | None = None,
             *, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             eos_token_id: int | None = None, pad_token_id: int = 0, cache_latents: int | None = None,
             generator: torch.Generator | None = None, output_logits: bool = False,
             streamer: Callable[[Tensor], None] | None = None, column_major_decode: bool = True) -> GenerationOutput:
    """Continue each prompt by up to ``max_new_tokens`` tokens with cached decoding.

    ``prompt``: ``(B, L)`` ids right-padded with ``prompt_lengths`` (default all ``L``), ``(L,)``, or a
    list of id lists of different lengths. Greedy by default; ``do_sample`` samples with
    ``temperature``, ``top_k``, ``top_p`` (:mod:`perceivers.generation.sampling`) from ``generator``
    (seed it for reproducible output); ``num_beams > 1`` runs beam search (scores divided by
    ``generated_length ** length_penalty``, a finite float). ``max_new_tokens`` is at most
    :data:`MAX_NEW_TOKENS` and, with absolute positions, what the position table leaves after the prompt. An example stops after emitting ``eos_token_id``;
    ``cache_latents``: latent cache size ``S`` (even, default ``num_latents``). ``streamer`` (not with
    beam search) is called with each step's tokens ``(B,)`` as soon as they are chosen
    (``pad_token_id`` for examples that already ended). ``column_major_decode``: on CPU, store the
    linear weights column-major while decoding (:mod:`perceivers.generation.layout`; ~1.7x faster
    one-token steps, restored afterwards; logits change only by float summation order); ``False`` keeps
    the weights as they are.
    """
    check_sampling_args(temperature=temperature, top_k=top_k, top_p=top_p)
    device = next(model.parameters()).device
    ids, lengths = _prompt_tensor(prompt, prompt_lengths, device)
    _check_prompt(ids, lengths, model.config)
    s = _check_args(model, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id, cache_latents=cache_latents,
                    generator=generator, longest=int(lengths.max()), length_penalty=length_penalty)
    if streamer is not None and not callable(streamer):
        raise ConfigTypeError(f"streamer must be callable, got {type(streamer).__name__}")
    if num_beams > 1:
        if streamer is not None:
            raise ConfigError("streamer is not supported with beam search (num_beams > 1): beams change until the end")
        with column_major_linears(model, enabled=column_major_decode):
            return beam_search(model, ids, lengths, num_beams=num_beams, max_new_tokens=max_new_tokens,
                               length_penalty=length_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                               cache_latents=s)
    decoder = CachedDecoder(model, ids, lengths, max_new_tokens=max_new_tokens, cache_latents=s)
    b = ids.shape[0]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    generated = torch.zeros(b, dtype=torch.long, device=device)
    steps: list[Tensor] = []
    logits = decoder.full_pass() if max_new_tokens > 0 else None
    with column_major_linears(model, enabled=column_major_decode and max_new_tokens > 1):
        for step in range(max_new_tokens):
            assert logits is not None
            if output_logits:
                steps.append(logits.float())
            token = sample_next(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                generator=generator)
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
            generated += (~finished).long()
            if streamer is not None:
                streamer(token)
            if eos_token_id is not None:
                finished = finished | (token == eos_token_id)
            if step == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
                rows = torch.arange(b, device=device)
                decoder.tokens[rows, decoder.lengths] = token  # the last token needs no forward pass
                break
            logits = decoder.append(token)
    total = lengths + generated
    width = int(total.max())
    sequences = decoder.tokens[:, :width].clone()
    sequences[torch.arange(width, device=device) >= total[:, None]] = pad_token_id
    return GenerationOutput(sequences=sequences, lengths=total, num_generated=generated,
                            logits=torch.stack(steps, dim=1) if output_logits and steps else None)
