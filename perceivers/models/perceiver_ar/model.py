"""Perceiver AR (Hawthorne et al. 2022) with the official ``perceiver_ar_model.py`` semantics.

A sequence of ``M`` token ids (right-padded, per-example valid length ``L``) is embedded; ``N``
latents sit on the last ``N`` valid positions ``s_i = L - N + i``; their queries are
``query_proj(embedding[s_i])``. One causally masked cross-attention from the ``N`` queries to all
``M`` inputs (latent ``i`` sees inputs ``j <= s_i``, never padding; query residual on) is followed
by ``L`` causally masked self-attention layers over the latents, a final LayerNorm and zero-initialised
logits: ``logits[:, i]`` predicts token ``s_i + 1``, so ``logits[:, -1]`` predicts the next token.

Positions are the 1-based data indices (0 = padding), as ``use_positions_from_data`` in every
released configuration: rotary angles in every attention layer (queries at the latent positions,
keys at the input positions) or summed absolute tables added to the token embeddings. A latent with
``s_i < 0`` (sequence shorter than ``N``) is *invalid*: its logits are undefined (finite here; the
official code averages over every key instead) and no other latent attends to it.

Generation lives in :mod:`perceivers.generation`; the model only accepts a ``cache``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_float,
    check_int,
    check_prob,
    check_scale,
    fail,
    normalize_int_tuple,
)
from perceivers.layers.attention import KVCacheLayer
from perceivers.layers.blocks import (
    ACTIVATIONS,
    LAYER_NORM_EPS,
    CrossAttentionBlock,
    SelfAttentionBlock,
)
from perceivers.layers.init import init_linear_fan_in, init_trunc_normal, init_zeros
from perceivers.layers.rotary import RotaryEmbedding, rotary_channels
from perceivers.models.base import PerceiverModel
from perceivers.models.perceiver_ar.decode import DecodeStep


@dataclass(frozen=True, kw_only=True)
class PerceiverARConfig(ConfigBase):
    """Perceiver AR. Defaults follow the released ``experiment.py`` configuration (16 heads, widening 4,
    rotary on half of each head's channels) with every dropout off.

    ``max_context_length``: the longest input ``M``. ``num_latents``: default ``N`` (overridable per
    call). ``max_wavelength``: rotary wavelength range, ``None`` = ``max_context_length``.
    ``position_encoding='absolute'`` adds one table per position axis (summed): one axis of
    ``position_table_size`` rows (``None`` = ``max_context_length + 1``; the official size is the dataset's
    ``event_idx_size``: ``+ 1`` for the copy task, ``+ 2`` for text, which reserves a row for SOS), or with ``position_grid`` (e.g. ``(64, 64, 3)`` for ImageNet 64) one
    table of ``g + 2`` rows per axis (0 = padding, 1 = the SOS token, pixels from 2, raster order).
    ``position_init``: ``'sinusoidal'`` (sin half, cos half) or ``'random'`` (truncated normal, std 1);
    tables are frozen (``requires_grad=False``, still counted and saved) unless
    ``learnable_position_embeddings``. Context reduction, active only in training:
    ``train_input_positions`` (keep a random subset of ``K`` inputs as keys; 0 = off),
    ``encoder_dropout_prob`` (drop input keys) and ``latent_dropout_prob`` (drop latents as keys).
    """

    vocab_size: int = 259
    max_context_length: int = 8192
    num_latents: int = 1024
    num_channels: int = 1024
    num_latent_channels: int = 1024
    num_self_attend_layers: int = 12
    num_cross_attend_heads: int = 16
    num_self_attend_heads: int = 16
    cross_attend_widening_factor: int = 4
    self_attend_widening_factor: int = 4
    activation: str = "sq_relu"
    dropout_prob: float = 0.0
    position_encoding: str = "rotary"
    rotary_fraction: float = 0.5
    max_wavelength: int | None = None
    position_init: str = "sinusoidal"
    learnable_position_embeddings: bool = False
    position_grid: tuple[int, ...] | None = None
    position_table_size: int | None = None
    embedding_init_scale: float = 1.0
    train_input_positions: int = 0
    encoder_dropout_prob: float = 0.0
    latent_dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_context_length", "num_latents", "num_channels", "num_latent_channels",
                     "num_self_attend_layers", "num_cross_attend_heads", "num_self_attend_heads",
                     "cross_attend_widening_factor", "self_attend_widening_factor"):
            check_int(name, getattr(self, name))
        check_int("train_input_positions", self.train_input_positions, minimum=0)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("position_encoding", self.position_encoding, ("rotary", "absolute"))
        check_choice("position_init", self.position_init, ("sinusoidal", "random"))
        for name in ("dropout_prob", "encoder_dropout_prob", "latent_dropout_prob"):
            check_prob(name, getattr(self, name))
        check_scale("embedding_init_scale", self.embedding_init_scale)
        check_bools(self, "learnable_position_embeddings")
        normalize_int_tuple(self, "position_grid", self.position_grid, allow_none=True)
        self._check_table_size()
        if self.num_latents > self.max_context_length:
            fail("num_latents", self.num_latents, f"<= max_context_length={self.max_context_length}")
        if self.train_input_positions >= self.max_context_length:
            fail("train_input_positions", self.train_input_positions,
                  f"0 (off) or < max_context_length={self.max_context_length}")
        for what, channels, heads in (("num_channels", self.num_channels, "num_cross_attend_heads"),
                                      ("num_latent_channels", self.num_latent_channels, "num_self_attend_heads")):
            if channels % getattr(self, heads):
                fail(what, channels, f"divisible by {heads}={getattr(self, heads)}")
        if self.position_encoding == "rotary":
            self._check_rotary()
        elif self.position_init == "sinusoidal" and (self.num_channels % 2 or self.num_channels < 4):
            fail("num_channels", self.num_channels, "an even number >= 4 for sinusoidal position tables")

    def _check_table_size(self) -> None:
        size = self.position_table_size
        if size is None:
            return
        if self.position_encoding != "absolute" or self.position_grid is not None:
            fail("position_table_size", size, "None unless position_encoding='absolute' without a position_grid "
                 "(rotary positions have no table; a grid sizes its own tables)")
        check_int("position_table_size", size)
        if size < self.max_context_length + 1:
            fail("position_table_size", size, f">= max_context_length + 1 = {self.max_context_length + 1} (row 0 is "
                 "padding, data positions are 1-based)")

    def _check_rotary(self) -> None:
        if self.position_grid is not None:
            fail("position_grid", self.position_grid, "None with rotary positions (rotary needs 1-D positions)")
        f = self.rotary_fraction
        check_float("rotary_fraction", f, minimum=0.0, maximum=1.0, min_inclusive=False)
        for heads, head_dim in self.head_dims().items():
            if rotary_channels(head_dim, f) < 2:
                fail("rotary_fraction", f, f"at least one rotated pair of the {head_dim}-channel {heads} heads")
        if self.max_wavelength is not None:
            check_int("max_wavelength", self.max_wavelength)
            if self.max_wavelength < self.max_context_length:
                fail("max_wavelength", self.max_wavelength, f">= max_context_length={self.max_context_length}")

    def head_dims(self) -> dict[str, int]:
        """Channels per head of the cross-attention (qk = v = ``num_channels``) and the self-attention."""
        return {"cross-attention": self.num_channels // self.num_cross_attend_heads,
                "self-attention": self.num_latent_channels // self.num_self_attend_heads}

    @property
    def wavelength(self) -> int:
        return self.max_context_length if self.max_wavelength is None else self.max_wavelength

    @property
    def position_table_sizes(self) -> tuple[int, ...]:
        """Rows of each absolute position table."""
        if self.position_grid is None:
            return (self.max_context_length + 1 if self.position_table_size is None else self.position_table_size,)
        return tuple(g + 2 for g in self.position_grid)

    @property
    def num_positions(self) -> int | None:
        """Tokens the absolute position tables cover (cached tokens included): the table's rows less the padding
        row 0 (``max_context_length`` by default), or ``prod(position_grid) + 1`` (SOS and pixels); ``None`` for
        rotary positions (no limit)."""
        if self.position_encoding == "rotary":
            return None
        if self.position_grid is None:
            return self.position_table_sizes[0] - 1
        return math.prod(self.position_grid) + 1

    def debug_size(self) -> PerceiverARConfig:
        """The same structure (position encoding, grid axes, activation, dropouts, context reduction) at test
        size: at most 2 heads of 8 channels (more when ``rotary_fraction`` needs them for one rotated pair),
        2 self-attention layers, widening 2, a context of at most 32 tokens (the grid cut to 2 per axis)
        and at most 8 latents."""
        heads_x, heads_z = min(2, self.num_cross_attend_heads), min(2, self.num_self_attend_heads)
        head_dim = 8
        while self.position_encoding == "rotary" and rotary_channels(head_dim, self.rotary_fraction) < 2:
            head_dim += 2
        grid = None if self.position_grid is None else tuple(min(g, 2) for g in self.position_grid)
        context = min(self.max_context_length, 32 if grid is None else math.prod(grid) + 1)
        return self.replace(
            max_context_length=context, num_latents=min(self.num_latents, 8, context),
            num_channels=heads_x * head_dim, num_latent_channels=heads_z * head_dim,
            num_self_attend_layers=min(self.num_self_attend_layers, 2), num_cross_attend_heads=heads_x,
            num_self_attend_heads=heads_z, cross_attend_widening_factor=min(self.cross_attend_widening_factor, 2),
            self_attend_widening_factor=min(self.self_attend_widening_factor, 2), position_grid=grid,
            max_wavelength=None if self.max_wavelength is None else
            context * self.max_wavelength // self.max_context_length,
            position_table_size=None if self.position_table_size is None else
            context + self.position_table_size - self.max_context_length,
            train_input_positions=min(self.train_input_positions, context // 2))


class ARCache(Protocol):
    """What :meth:`PerceiverAR.forward` needs from a cache (see ``perceivers.generation.kv_cache``)."""

    cross: KVCacheLayer
    latents: Sequence[KVCacheLayer]
    num_tokens: Tensor  # (B,) real tokens stored so far per example
    max_num_tokens: int  # num_tokens.max() kept on the host (0 = empty): read without a device sync

    def advance(self, lengths: Tensor, longest: int) -> None:
        """Count ``lengths: (B,)`` more real tokens per example, ``longest`` = ``max(lengths)``."""


def latent_steps(lengths: Tensor, num_latents: int) -> Tensor:
    """Last input index seen by each latent: ``s_i = L - N + i``, ``-1`` when invalid. ``(B,) -> (B, N)``."""
    steps = lengths[:, None] - num_latents + torch.arange(num_latents, device=lengths.device)
    return steps.clamp(min=-1)


def sinusoid_table(size: int, channels: int) -> Tensor:
    """Official absolute table ``(size, C)``: sin in the first half, cos in the second, frequencies
    ``exp(-c * ln(1e4) / (C/2 - 1))``."""
    half = channels // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (math.log(1e4) / (half - 1)))
    angles = torch.arange(size, dtype=torch.float32)[:, None] * freqs  # (size, C/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def host_ranges(*tensors: Tensor) -> list[int]:
    """``[min, max]`` of each integer tensor, read to the host together (one device sync)."""
    return torch.stack([v.long() for t in tensors for v in torch.aminmax(t)]).tolist()


def _take(x: Tensor, index: Tensor) -> Tensor:
    """``x: (B, M, ...)``, ``index: (B, N)`` -> ``(B, N, ...)``."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


class PerceiverAR(PerceiverModel, model_type="perceiver_ar"):
    """Token ids ``(B, M)`` -> logits ``(B, N, vocab_size)`` at the latent positions (see the module doc)."""

    config_class = PerceiverARConfig

    def __init__(self, config: PerceiverARConfig) -> None:
        super().__init__(config)
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.num_channels)
        self.position_embeddings: nn.Parameter | None = None
        if c.position_encoding == "absolute":
            sizes = c.position_table_sizes
            self.position_embeddings = nn.Parameter(torch.empty(sum(sizes), c.num_channels),
                                                    requires_grad=c.learnable_position_embeddings)
            self.cross_rotary = self.self_rotary = None
        else:
            dims = c.head_dims()
            self.cross_rotary = RotaryEmbedding(head_dim=dims["cross-attention"], max_wavelength=c.wavelength,
                                                fraction=c.rotary_fraction)
            self.self_rotary = RotaryEmbedding(head_dim=dims["self-attention"], max_wavelength=c.wavelength,
                                               fraction=c.rotary_fraction)
        self.query_proj = nn.Linear(c.num_channels, c.num_latent_channels)
        self.cross_attend = CrossAttentionBlock(
            q_channels=c.num_latent_channels, kv_channels=c.num_channels, num_heads=c.num_cross_attend_heads,
            widening_factor=c.cross_attend_widening_factor, use_query_residual=True, dropout_prob=c.dropout_prob,
            activation=c.activation)
        self.self_attends = nn.ModuleList(
            SelfAttentionBlock(channels=c.num_latent_channels, num_heads=c.num_self_attend_heads,
                               widening_factor=c.self_attend_widening_factor, dropout_prob=c.dropout_prob,
                               activation=c.activation)
            for _ in range(c.num_self_attend_layers))
        self.final_norm = nn.LayerNorm(c.num_latent_channels, eps=LAYER_NORM_EPS)
        self.logits = nn.Linear(c.num_latent_channels, c.vocab_size)
        self._decode_steps: dict[torch.device, DecodeStep] = {}  # per device, built on the first decode step
        self.init_weights_unless_meta()

    def init_weights(self) -> None:
        """Official initialisation: embeddings truncated normal (std ``embedding_init_scale``), position
        tables sinusoidal or truncated normal (std 1), fan-in linears, zero logits."""
        c = self.config
        init_trunc_normal(self.token_embedding.weight, c.embedding_init_scale)
        table = self.position_embeddings
        if table is not None and not table.is_meta:
            with torch.no_grad():
                if c.position_init == "random":
                    init_trunc_normal(table, 1.0)
                else:
                    table.copy_(torch.cat([sinusoid_table(n, c.num_channels) for n in c.position_table_sizes]))
        init_linear_fan_in(self.query_proj)
        self.cross_attend.init_weights()
        for layer in self.self_attends:
            layer.init_weights()
        self.final_norm.reset_parameters()
        init_zeros(self.logits)

    # ------------------------------------------------------------------------------------------ inputs

    def _check_inputs(self, input_ids: Any, lengths: Any, num_latents: Any, cache: ARCache | None
                      ) -> tuple[Tensor, int, int, bool]:
        """Validate; returns ``(lengths (B,), N, longest, decoding)``: ``longest`` is ``max(lengths)`` on the
        host, ``decoding`` whether a non-empty cache is given.

        Values (id range, lengths, positions) are checked where the data enters: an uncached or cache-filling
        call reads them with one device sync. A decode step (non-empty cache) is checked from shapes and the
        cache's host counters alone, so it never waits for the device; its ids come from ``generate`` (or
        whoever samples them), and an id outside the vocabulary fails in the embedding lookup."""
        c = self.config
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor of token ids (int64, int32, int16, int8 or "
                            f"uint8), got dtype {input_ids.dtype}")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have a non-empty shape (B, M), got {tuple(input_ids.shape)}")
        b, m = input_ids.shape
        if cache is None and m > c.max_context_length:
            raise ValueError(f"input_ids has {m} positions, more than max_context_length={c.max_context_length}")
        if lengths is not None:
            if not isinstance(lengths, Tensor) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
                raise TypeError(f"lengths must be an integer tensor (B,), got {lengths!r}")
            lengths = lengths.to(device=input_ids.device, dtype=torch.long)
        if cache is not None:
            self._check_cache(cache, b)
        decoding = cache is not None and cache.max_num_tokens > 0
        n = num_latents if num_latents is not None else m if decoding else c.num_latents
        if decoding:
            assert cache is not None
            if n != m or (lengths is not None and (tuple(lengths.shape) != (b,) or host_ranges(lengths) != [m, m])):
                raise ValueError(f"with a non-empty cache every one of the {m} new tokens is a latent and none is "
                                 f"padding: num_latents must be None or {m} (got {num_latents}) and lengths all {m}")
            longest, total = m, cache.max_num_tokens + m
        elif torch.compiler.is_compiling():  # values cannot be read while tracing: shapes only
            if lengths is not None and (tuple(lengths.shape) != (b,) or cache is not None):
                raise ValueError(f"lengths must be None when a cache is filled under torch.compile (the cache "
                                 f"counts max(lengths) on the host), else of shape ({b},); got {tuple(lengths.shape)}")
            longest = total = m
        else:
            if lengths is not None and tuple(lengths.shape) != (b,):
                raise ValueError(f"lengths must have shape ({b},) with values in [1, {m}], got {lengths.tolist()}")
            lo, hi, *span = host_ranges(input_ids, *([] if lengths is None else [lengths]))  # one device sync
            if lo < 0 or hi >= c.vocab_size:
                raise ValueError(f"input_ids must lie in [0, vocab_size={c.vocab_size}), got values in [{lo}, {hi}]")
            if span and (span[0] < 1 or span[1] > m):
                raise ValueError(f"lengths must have shape ({b},) with values in [1, {m}], got {lengths.tolist()}")
            longest = total = span[1] if span else m
        check_int("num_latents", n)
        if n > m:
            raise ValueError(f"num_latents={n} is larger than the sequence: input_ids has {m} positions")
        self._check_positions(total)
        if lengths is None:
            lengths = torch.full((b,), m, dtype=torch.long, device=input_ids.device)
        return lengths, n, longest, decoding

    def _check_positions(self, total: int) -> None:
        """``total``: the most tokens (cached plus new) of one example after this call."""
        c = self.config
        if c.num_positions is None or total <= c.num_positions:
            return
        if c.position_grid is not None:
            raise ValueError(f"sequence of {total} tokens is longer than the position grid {c.position_grid} "
                             f"(+1 SOS token)")
        raise ValueError(f"positions exceed the position tables {c.position_table_sizes}: the sequence of {total} "
                         f"tokens is longer than max_context_length={c.max_context_length}")

    def _check_cache(self, cache: ARCache, batch: int) -> None:
        if self.training:
            raise ValueError("cache is for evaluation only: call model.eval() first (dropout and context "
                             "reduction would make cached and uncached results differ)")
        if len(cache.latents) != self.config.num_self_attend_layers or tuple(cache.num_tokens.shape) != (batch,):
            raise ValueError(f"cache does not fit this model and batch: {len(cache.latents)} latent layers for "
                             f"{self.config.num_self_attend_layers}, batch {tuple(cache.num_tokens.shape)} for {batch}")

    def token_positions(self, index: Tensor, valid: Tensor) -> Tensor:
        """Data positions of 0-based token indices ``(B, M)``: ``(B, M)`` 1-based, or ``(B, M, D)`` grid
        coordinates (SOS at 1, pixels from 2); 0 at padding. Valid indices must be below
        ``config.num_positions`` (:meth:`forward` checks it)."""
        grid = self.config.position_grid
        if grid is None:
            return (index + 1) * valid
        coords = torch.stack(torch.unravel_index((index - 1).clamp(min=0), grid), dim=-1) + 2  # (B, M, D)
        coords = torch.where((index == 0)[..., None], torch.ones_like(coords), coords)
        return coords * valid[..., None]

    def embed(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings plus, for absolute positions, the summed position tables (``positions`` from
        :meth:`token_positions`). ``-> (B, M, C)``."""
        x = self.token_embedding(input_ids.long())
        if self.position_embeddings is None:
            return x
        rows = positions[..., None] if positions.dim() == 2 else positions  # (B, M, D)
        sizes = torch.tensor(self.config.position_table_sizes, device=rows.device)
        offsets = sizes.cumsum(0) - sizes  # first row of each axis' table in the stacked tables
        return x + self.position_embeddings[rows + offsets].sum(dim=-2)

    # ----------------------------------------------------------------------------------------- forward

    def _reduce_context(self, x: Tensor, index: Tensor, valid: Tensor, positions: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training only: keep ``train_input_positions`` random inputs per example (kept in order, so
        padding stays at the end) as cross-attention keys. Every tensor is ``(B, M, ...)``."""
        k = self.config.train_input_positions
        if not self.training or k == 0 or k >= x.shape[1]:
            return x, index, valid, positions
        keep = torch.rand(index.shape, device=x.device).argsort(dim=-1)[:, :k].sort(dim=-1).values  # (B, K)
        return _take(x, keep), _take(index, keep), _take(valid, keep), _take(positions, keep)

    def _masks(self, steps: Tensor, key_index: Tensor, key_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Cross mask ``(B, N, M)``: key ``j <= s_i`` and real; self mask ``(B, N, N)``: ``s_k <= s_q``,
        ``k`` valid, diagonal always on. Training dropouts remove keys."""
        c = self.config
        cross = (key_index[:, None, :] <= steps[..., None]) & key_valid[:, None, :]
        latent_keys = steps >= 0
        if self.training and c.encoder_dropout_prob > 0:
            cross = cross & (torch.rand(key_valid.shape, device=steps.device) >= c.encoder_dropout_prob)[:, None, :]
        if self.training and c.latent_dropout_prob > 0:
            latent_keys = latent_keys & (torch.rand(steps.shape, device=steps.device) >= c.latent_dropout_prob)
        self_mask = (steps[:, None, :] <= steps[..., None]) & latent_keys[:, None, :]
        return cross, self_mask | torch.eye(steps.shape[1], dtype=torch.bool, device=steps.device)

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None, *, num_latents: int | None = None,
                cache: ARCache | None = None) -> Tensor:
        """``input_ids: (B, M)`` right-padded ids, ``lengths: (B,)`` valid lengths (default ``M``) ->
        logits ``(B, N, vocab_size)``; ``logits[:, i]`` predicts the token after input ``L - N + i``.

        ``num_latents``: ``N`` for this call (default ``config.num_latents``, at most ``M``).
        ``cache`` (evaluation only): an empty cache is filled from this call; with a non-empty cache,
        ``input_ids`` are the next tokens of every example (no padding) and each one is a latent.
        """
        lengths, n, longest, decoding = self._check_inputs(input_ids, lengths, num_latents, cache)
        if decoding:
            assert cache is not None
            return self._decode(input_ids, lengths, cache)
        b, m = input_ids.shape
        index = torch.arange(m, device=input_ids.device).expand(b, m)  # (B, M)
        valid = index < lengths[:, None]
        positions = self.token_positions(index, valid)  # (B, M) or (B, M, D)
        x = self.embed(input_ids, positions)  # (B, M, C)
        steps = latent_steps(lengths, n)  # (B, N)
        take = steps.clamp(min=0)  # invalid latents read position 0 (their outputs are undefined)
        z = self.query_proj(_take(x, take))  # (B, N, D)
        latent_pos = _take(positions, take)
        kv, key_index, key_valid, key_pos = self._reduce_context(x, index, valid, positions)
        cross_mask, self_mask = self._masks(steps, key_index, key_valid)
        q_rot = k_rot = z_rot = None
        if self.cross_rotary is not None:
            q_rot, k_rot = self.cross_rotary(latent_pos), self.cross_rotary(key_pos)
            z_rot = self.self_rotary(latent_pos)
        caching = cache is not None
        z = self.cross_attend(z, kv, cross_mask, q_rotary=q_rot, k_rotary=k_rot,
                              kv_cache=cache.cross if caching else None, kv_mask=key_valid if caching else None)
        for i, layer in enumerate(self.self_attends):
            z = layer(z, self_mask, rotary=z_rot, kv_cache=cache.latents[i] if caching else None,
                      kv_mask=steps >= 0 if caching else None)
        if caching:
            cache.advance(lengths, longest)
        return self.logits(self.final_norm(z))

    def _decode(self, input_ids: Tensor, lengths: Tensor, cache: ARCache) -> Tensor:
        """Cached step: ``input_ids: (B, T)`` are the next real tokens of every example, each a latent.

        The general path would build the same thing (causal masks among the new tokens, every new
        key valid); this one skips the index bookkeeping, and one-token steps run the lean
        :class:`~perceivers.models.perceiver_ar.decode.DecodeStep` (a third of the operator calls).
        """
        b, t = input_ids.shape
        if t == 1:
            step = self._decode_steps.get(input_ids.device)
            if step is None:
                step = self._decode_steps[input_ids.device] = DecodeStep(self, input_ids.device)
            return step(self, input_ids, cache)
        index = cache.num_tokens.to(input_ids.device)[:, None] + torch.arange(t, device=input_ids.device)
        positions = self.token_positions(index, torch.ones_like(index, dtype=torch.bool))  # (B, T) or (B, T, D)
        x = self.embed(input_ids, positions)  # (B, T, C)
        z = self.query_proj(x)  # (B, T, D)
        causal = None
        if t > 1:
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril().expand(b, t, t)
        q_rot = z_rot = None
        if self.cross_rotary is not None:
            q_rot = self.cross_rotary(positions)
            same = self.self_rotary.num_channels == self.cross_rotary.num_channels
            z_rot = q_rot if same else self.self_rotary(positions)
        z = self.cross_attend(z, x, causal, q_rotary=q_rot, k_rotary=q_rot, kv_cache=cache.cross)
        for i, layer in enumerate(self.self_attends):
            z = layer(z, causal, rotary=z_rot, kv_cache=cache.latents[i])
        cache.advance(lengths, t)
        return self.logits(self.final_norm(z))

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: ``input_ids: (B, max_context_length)`` and ``lengths``
        with the last example one token shorter (right padding), when the context leaves room for the latents."""
        c = self.config
        device = self.token_embedding.weight.device
        ids = torch.randint(0, c.vocab_size, (batch_size, c.max_context_length), generator=generator)
        lengths = torch.full((batch_size,), c.max_context_length, dtype=torch.long)
        if c.max_context_length > c.num_latents:
            lengths[-1] -= 1
        return {"input_ids": ids.to(device), "lengths": lengths.to(device)}
