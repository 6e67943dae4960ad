"""Cross-attention maps of Perceiver IO models on request: which inputs each latent reads (the encoder
cross-attention) and which latents each output query reads (the decoder cross-attention).

The model's own forward pass is not changed: it stays on the fused ``scaled_dot_product_attention`` kernel, which
never materialises the ``(B, H, N, M)`` attention probabilities. :func:`attention_maps` runs that forward pass once
with temporary forward hooks on the cross-attention modules that keep their (layer-normalised) inputs for the
requested examples, removes the hooks, and recomputes ``softmax(q k^T / sqrt(D) + mask)`` per head from the
module's own projections (:func:`cross_attention_probabilities`): the probabilities the kernel uses, up to float
rounding (tested: the maps times the values, through the output projection, give the layer's output).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from perceivers.core.errors import ConfigTypeError
from perceivers.core.validation import fail
from perceivers.layers.attention import Attention, check_mask
from perceivers.layers.blocks import CrossAttentionBlock


def cross_attention_probabilities(attention: Attention, x_q: Tensor, x_kv: Tensor,
                                  mask: Tensor | None = None) -> Tensor:
    """The attention probabilities of ``attention`` (an :class:`~perceivers.layers.attention.Attention`) on its
    inputs as it receives them: ``x_q: (B, N, C_q)``, ``x_kv: (B, M, C_kv)`` (after the block's layer norms),
    ``mask: (B, M) | (B, N, M)`` bool, True = attend -> ``(B, H, N, M)`` float32.

    Each row sums to 1 over the keys it may attend; a row whose keys are all masked is all zero (the layer returns
    only its output bias there, see :class:`~perceivers.layers.attention.Attention`). Without dropout: the
    probabilities of evaluation mode."""
    b, n, _ = x_q.shape
    m = x_kv.shape[1]
    check_mask(mask, batch=b, num_queries=n, num_keys=m)
    h = attention.num_heads
    q = attention.q_proj(x_q).float().view(b, n, h, -1).transpose(1, 2)  # (B, H, N, Dqk)
    k = attention.k_proj(x_kv).float().view(b, m, h, -1).transpose(1, 2)  # (B, H, M, Dqk)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, M)
    if mask is None:
        return logits.softmax(dim=-1)
    keep = (mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]).expand_as(logits)  # (B, H, N, M)
    probs = logits.masked_fill(~keep, -math.inf).softmax(dim=-1)
    return torch.nan_to_num(probs, nan=0.0)  # rows with no key to attend: 0/0 -> 0


def cross_attention_blocks(model: nn.Module) -> tuple[list[CrossAttentionBlock], CrossAttentionBlock | None]:
    """The encoder's cross-attention modules and the decoder's (``None`` when the decoder does not cross-attend,
    e.g. the original Perceiver's mean-pooling projection); :class:`~perceivers.core.errors.ConfigTypeError`
    naming ``model`` unless it has a Perceiver IO encoder (``model.encoder.cross_attends``)."""
    crosses = getattr(getattr(model, "encoder", None), "cross_attends", None)
    if not isinstance(crosses, nn.ModuleList) or not crosses or not all(
            isinstance(block, CrossAttentionBlock) for block in crosses):
        raise ConfigTypeError(f"model is a {type(model).__name__}: attention_maps reads the encoder cross-attention "
                              "of a Perceiver IO model (PerceiverIO and its task classes: model.encoder.cross_attends)"
                              ", and this model has none")
    decoder = getattr(getattr(model, "decoder", None), "cross_attend", None)
    return list(crosses), decoder if isinstance(decoder, CrossAttentionBlock) else None


def _examples(examples: int | Sequence[int] | None, batch: int) -> list[int]:
    if examples is None:
        return list(range(batch))
    chosen = [examples] if isinstance(examples, int) and not isinstance(examples, bool) else examples
    if (not isinstance(chosen, Sequence) or not chosen
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < batch for i in chosen)):
        fail("examples", examples, f"an index or a non-empty list of indices in [0, {batch}) (the batch's examples)")
    return list(chosen)


def _batch_size(inputs: Tensor | Mapping[str, Any]) -> int:
    values = [inputs] if isinstance(inputs, Tensor) else list(inputs.values()) if isinstance(inputs, Mapping) else []
    for value in values:
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ConfigTypeError(f"inputs must be a tensor or a mapping of forward's keyword arguments holding a batched "
                          f"tensor, got {type(inputs).__name__}")


def attention_maps(model: nn.Module, inputs: Tensor | Mapping[str, Any], *,
                   examples: int | Sequence[int] | None = None, decoder: bool = True) -> dict[str, Tensor]:
    """Cross-attention probabilities of a Perceiver IO ``model`` on ``inputs`` (a tensor passed as ``model(inputs)``,
    or a mapping passed as ``model(**inputs)``, e.g. ``model.example_inputs()`` or ``{"frames": frames}``).

    Returns float32 maps for the ``examples`` (batch indices; default all, ``E`` of them), heads kept apart:

    - ``"encoder"``: ``(E, H, N, M)``: latent ``n`` of head ``h`` over the ``M`` input tokens (for an image model
      ``M = H_img * W_img``, row-major). The original Perceiver (``layout='interleaved'``) cross-attends once per
      block: ``"encoder.0"``, ``"encoder.1"``, ... in the order they run.
    - ``"decoder"`` (``decoder=True`` and a decoder that cross-attends): ``(E, H, O, N)``: output query ``o`` over
      the latents; a decoder that decodes its queries in chunks (flow) gives them all, in query order.

    Rows sum to 1 (a row whose keys are all masked is zero). The forward pass runs once, in evaluation mode
    (restored afterwards) and without gradients; the hooks are removed even if it fails. Memory: ``E * H * N * M``
    floats per map, so select ``examples`` for large inputs.
    """
    crosses, decoder_block = cross_attention_blocks(model)
    chosen = _examples(examples, _batch_size(inputs))
    targets = {id(block.attention): "encoder" for block in crosses}
    if decoder and decoder_block is not None:
        targets[id(decoder_block.attention)] = "decoder"
    captured: list[tuple[str, Attention, Tensor, Tensor, Tensor | None]] = []

    def keep(module: Attention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if any(kwargs.get(name) is not None for name in ("q_rotary", "k_rotary", "kv_cache")):
            raise ValueError("attention_maps: a cross-attention with rotary angles or a cache is not supported")
        x_q, x_kv = args[0], args[1]
        mask = args[2] if len(args) > 2 else kwargs.get("mask")
        rows = torch.tensor(chosen, device=x_q.device)
        captured.append((targets[id(module)], module, x_q.detach()[rows], x_kv.detach()[rows],
                         None if mask is None else mask[rows]))

    handles = [block.attention.register_forward_pre_hook(keep, with_kwargs=True)
               for block in [*crosses, *([decoder_block] if "decoder" in targets.values() else [])]]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(inputs) if isinstance(inputs, Tensor) else model(**inputs)
            maps: dict[str, list[Tensor]] = {}
            for part, module, x_q, x_kv, mask in captured:
                maps.setdefault(part, []).append(cross_attention_probabilities(module, x_q, x_kv, mask))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out: dict[str, Tensor] = {}
    for part, found in maps.items():
        if part == "decoder":  # chunks of the same queries over the same latents
            out["decoder"] = torch.cat(found, dim=2)
        elif len(found) == 1:
            out["encoder"] = found[0]
        else:
            out.update({f"encoder.{i}": found_map for i, found_map in enumerate(found)})
    return out
