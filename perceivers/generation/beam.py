"""Beam search over the cached Perceiver AR decoder.

Each prompt is expanded to ``num_beams`` rows of one :class:`CachedDecoder`; at every step the
``2 * num_beams`` best continuations (by summed log-probability) are examined in order: those ending
in ``eos_token_id`` within the top ``num_beams`` become finished hypotheses, the others fill the next
beams, whose rows (tokens, lengths and caches) are then gathered. A prompt stops once it has
``num_beams`` finished hypotheses (early stopping). Hypotheses are ranked by
``log_prob / generated_length ** length_penalty``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from perceivers.generation.decoder import CachedDecoder, GenerationOutput


def _select(top_scores: list[float], top_index: list[int], *, vocab: int, num_beams: int, eos: int | None,
            step: int, length_penalty: float, generated: list[Tensor], hyps: list[tuple[float, list[int]]]
            ) -> list[tuple[float, int, int]]:
    """Next ``(score, token, beam)`` of one prompt; finished hypotheses are appended to ``hyps``."""
    chosen: list[tuple[float, int, int]] = []
    for rank, (score, index) in enumerate(zip(top_scores, top_index)):
        beam, token = divmod(index, vocab)
        if eos is not None and token == eos:
            if rank < num_beams and score > -math.inf:
                hyps.append((score / (step + 1) ** length_penalty, generated[beam].tolist() + [token]))
            continue
        chosen.append((score, token, beam))
        if len(chosen) == num_beams:
            break
    return chosen + [(-math.inf, eos or 0, 0)] * (num_beams - len(chosen))


def beam_search(model: Any, ids: Tensor, lengths: Tensor, *, num_beams: int, max_new_tokens: int,
                length_penalty: float, eos_token_id: int | None, pad_token_id: int, cache_latents: int
                ) -> GenerationOutput:
    """Beam search for right-padded prompts ``ids: (B, L)`` with ``lengths: (B,)`` (validated by ``generate``)."""
    b, k, device = ids.shape[0], num_beams, ids.device
    rows = torch.arange(b, device=device).repeat_interleave(k)
    decoder = CachedDecoder(model, ids[rows], lengths[rows], max_new_tokens=max_new_tokens, cache_latents=cache_latents)
    scores = torch.full((b, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    generated = torch.zeros(b * k, 0, dtype=torch.long, device=device)
    hyps: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    logits = decoder.full_pass() if max_new_tokens > 0 else None
    for step in range(max_new_tokens):
        assert logits is not None
        logp = torch.log_softmax(logits.float(), dim=-1)
        vocab = logp.shape[-1]
        candidates = (scores[..., None] + logp.view(b, k, vocab)).view(b, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)
        picks = []
        for i in range(b):
            if done[i]:
                picks.append([(-math.inf, pad_token_id, 0)] * k)
                continue
            picks.append(_select(top_scores[i].tolist(), top_index[i].tolist(), vocab=vocab, num_beams=k,
                                 eos=eos_token_id, step=step, length_penalty=length_penalty,
                                 generated=list(generated[i * k:(i + 1) * k]), hyps=hyps[i]))
            done[i] = len(hyps[i]) >= k
        scores = torch.tensor([[p[0] for p in row] for row in picks], device=device)
        tokens = torch.tensor([p[1] for row in picks for p in row], device=device)
        source = torch.tensor([i * k + p[2] for i, row in enumerate(picks) for p in row], device=device)
        generated = torch.cat([generated[source], tokens[:, None]], dim=1)
        if all(done) or step == max_new_tokens - 1:
            break
        decoder.reorder(source)
        logits = decoder.append(tokens)
    return _finalize(ids, lengths, hyps, done, scores, generated, num_beams=k, length_penalty=length_penalty,
                     pad_token_id=pad_token_id)


def _finalize(ids: Tensor, lengths: Tensor, hyps: list[list[tuple[float, list[int]]]], done: list[bool],
              scores: Tensor, generated: Tensor, *, num_beams: int, length_penalty: float, pad_token_id: int
              ) -> GenerationOutput:
    """Best hypothesis per prompt (open beams count as hypotheses) -> right-padded sequences."""
    b, k = ids.shape[0], num_beams
    best: list[tuple[float, list[int]]] = []
    for i in range(b):
        pool = list(hyps[i])
        if not done[i] and generated.shape[1] > 0:
            for j in range(k):
                score = float(scores[i, j])
                if score > -math.inf:
                    pool.append((score / generated.shape[1] ** length_penalty, generated[i * k + j].tolist()))
        best.append(max(pool, key=lambda h: h[0]) if pool else (0.0, []))
    num_generated = torch.tensor([len(h[1]) for h in best], device=ids.device)
    total = lengths + num_generated
    sequences = torch.full((b, int(total.max())), pad_token_id, dtype=torch.long, device=ids.device)
    for i, (_, tokens) in enumerate(best):
        n = int(lengths[i])
        sequences[i, :n] = ids[i, :n]
        sequences[i, n:n + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return GenerationOutput(sequences=sequences, lengths=total, num_generated=num_generated,
                            scores=torch.tensor([h[0] for h in best], device=ids.device))
