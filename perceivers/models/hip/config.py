"""Frozen, validated configuration of the Hierarchical Perceiver (HiP) and its class-bottleneck form.

Per-block tuples run encoder -> processor -> decoder (``len(num_groups)`` blocks, odd; the middle
block is the processor and has one group; a single block is the HiP repository's Perceiver IO).
Modalities are declared explicitly as an ordered mapping ``name -> (index_dim, channels)``;
``label_modalities`` (non-empty = HiPClassBottleneck) bypass the encoder and join the processor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from perceivers.core.validation import (
    ConfigBase,
    check_bools,
    check_choice,
    check_int,
    check_prob,
    fail,
    normalize_int_tuple,
)

REGROUP_TYPES = ("reshape", "transpose_reshape")
_PER_BLOCK = ("num_groups", "num_self_attend_layers", "num_latents", "num_channels", "num_self_attend_heads",
              "num_cross_attend_heads", "self_attend_widening_factor", "cross_attend_widening_factor")
_WIDENING = ("self_attend_widening_factor", "cross_attend_widening_factor")


def _check_modalities(obj: Any) -> None:
    """Normalise ``modalities`` to ``{name: (index_dim, channels)}`` (JSON gives lists) and validate it."""
    mods = obj.modalities
    if not isinstance(mods, dict) or not mods:
        raise TypeError(f"modalities must be a non-empty dict name -> (index_dim, channels), got {mods!r}")
    normalised = {}
    for name, spec in mods.items():
        if not isinstance(name, str) or not name.isidentifier():
            fail("modalities", name, "modality names that are Python identifiers (they name parameters)")
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise TypeError(f"modality {name!r} must be (index_dim, channels), got {spec!r}")
        check_int(f"modality {name!r} index_dim", spec[0])
        check_int(f"modality {name!r} channels", spec[1])
        normalised[name] = (int(spec[0]), int(spec[1]))
    object.__setattr__(obj, "modalities", normalised)


@dataclass(frozen=True, kw_only=True)
class HiPConfig(ConfigBase):
    """A HiP model (official ``perceiver.py`` ``HiP`` / ``HiPClassBottleneck``).

    Args:
        modalities: ``name -> (index_dim, channels)``; every modality owns an embedder, an unembedder
            and a learned position table ``(index_dim, C_emb)``.
        label_modalities: names (in ``modalities``) handled as class labels (HiPClassBottleneck): they
            are embedded to the processor's input width and concatenated to its keys/values.
        num_groups, num_self_attend_layers, num_latents (per group), num_channels,
            num_self_attend_heads, num_cross_attend_heads: one entry per block.
        self_attend_widening_factor, cross_attend_widening_factor: MLP widening of each block's
            self-attention layers / cross-attention, one entry per block (official ``VARIANTS``); a single int
            is accepted and applies to every block (stored as a tuple).
        num_embedding_channels: ``C_emb``, width of the embedded inputs and position tables.
        num_position_encoding_channels: only compared with ``C_emb``: when not ``None`` and different,
            every modality slot gets a bias-free ``C_emb x C_emb`` projection of its position table.
        num_position_slots: most non-label modalities a forward call may carry; the i-th of a call
            uses projection ``i`` (the official Haiku per-call naming). ``None``: all of them.
        sort_modalities: order each call's modalities by name (as ``jax.jit`` does to dict inputs)
            instead of the dict's insertion order.
        processor_num_latents_train: optional random subset of the processor's latents at training.
        regroup_type: ``reshape`` (neighbouring groups merge) or ``transpose_reshape`` (all mix).
        dropout_prob: residual/MLP dropout of the attention blocks.
        drop_path_rate: stochastic depth of every self-attention layer (official ``StochasticDepth``):
            in training each residual branch is dropped per example with this probability, not
            rescaled. 0 (default, as the official test) disables it.
        use_mask_token: one learned ``(C_emb,)`` vector per non-label modality that replaces the
            embedded input at masked positions (``forward(..., mask=...)``, masked autoencoding; ours,
            the official code has no masking). Adds ``C_emb`` parameters per modality.
    """

    modalities: dict[str, tuple[int, int]]
    label_modalities: tuple[str, ...] = ()
    num_groups: tuple[int, ...] = (16, 1, 16)
    num_self_attend_layers: tuple[int, ...] = (2, 1, 1)
    num_latents: tuple[int, ...] = (128, 64, 128)
    num_channels: tuple[int, ...] = (128, 1024, 128)
    num_self_attend_heads: tuple[int, ...] = (4, 32, 4)
    num_cross_attend_heads: tuple[int, ...] = (1, 1, 1)
    self_attend_widening_factor: tuple[int, ...] | int = 4
    cross_attend_widening_factor: tuple[int, ...] | int = 1
    num_embedding_channels: int = 32
    num_position_encoding_channels: int | None = 512
    num_position_slots: int | None = None
    sort_modalities: bool = False
    processor_num_latents_train: int | None = None
    regroup_type: str = "reshape"
    dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    use_mask_token: bool = False

    def __post_init__(self) -> None:
        _check_modalities(self)
        if isinstance(self.label_modalities, str) or not isinstance(self.label_modalities, (tuple, list)):
            raise TypeError(f"label_modalities must be a tuple of names, got {self.label_modalities!r}")
        object.__setattr__(self, "label_modalities", tuple(self.label_modalities))
        for name in self.label_modalities:
            if name not in self.modalities:
                fail("label_modalities", name, f"one of the modalities {list(self.modalities)}")
        if len(self.inputs) == 0:
            fail("label_modalities", self.label_modalities, "at least one modality that is not a label")
        normalize_int_tuple(self, "num_groups", self.num_groups)
        k = len(self.num_groups)
        for name in _WIDENING:  # one int = the same widening in every block
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                check_int(name, value)
                object.__setattr__(self, name, (value,) * k)
        for name in _PER_BLOCK:
            normalize_int_tuple(self, name, getattr(self, name))
        for name in _PER_BLOCK:
            if len(getattr(self, name)) != k:
                fail(name, getattr(self, name), f"{k} entries (one per block, as num_groups)")
        check_int("num_embedding_channels", self.num_embedding_channels)
        if self.num_position_encoding_channels is not None:
            check_int("num_position_encoding_channels", self.num_position_encoding_channels)
        if self.num_position_slots is not None:
            check_int("num_position_slots", self.num_position_slots)
        check_bools(self, "sort_modalities", "use_mask_token")
        check_choice("regroup_type", self.regroup_type, REGROUP_TYPES)
        check_prob("dropout_prob", self.dropout_prob)
        check_prob("drop_path_rate", self.drop_path_rate)
        self._check_blocks()

    def _check_blocks(self) -> None:
        k, mid = len(self.num_groups), len(self.num_groups) // 2
        g, n, c = self.num_groups, self.num_latents, self.num_channels
        if k % 2 == 0:
            fail("num_groups", g, "an odd number of blocks (encoder, processor, decoder; 1 = Perceiver IO)")
        if k == 1 and self.label_modalities:
            fail("label_modalities", self.label_modalities, "() with a single block (no encoder to bypass)")
        if g[mid] != 1:
            fail("num_groups", g, f"1 group at the processor (block {mid})")
        if g[-1] != g[0]:
            fail("num_groups", g, f"as many groups in the last block as in the first ({g[0]})")
        slots = self.num_position_slots if self.num_position_slots is not None else len(self.inputs)
        if k > 1 and slots > g[0]:
            fail("num_position_slots", slots, f"at most num_groups[0]={g[0]} modalities per call (one group each)")
        for i in range(k):
            j = k - 1 - i
            if i > mid and (g[i], n[i]) != (g[j], n[j]):
                fail("num_latents", n, f"block {i} mirroring block {j} (U-Net skip): {g[i]}x{n[i]} groups x "
                      f"latents vs {g[j]}x{n[j]}")
            in_c = self.num_embedding_channels if i == 0 else c[i - 1]
            if c[i] % self.num_self_attend_heads[i]:
                fail("num_self_attend_heads", self.num_self_attend_heads, f"heads dividing num_channels[{i}]={c[i]}")
            if in_c % self.num_cross_attend_heads[i]:
                fail("num_cross_attend_heads", self.num_cross_attend_heads,
                      f"heads dividing block {i}'s input channels {in_c}")
        n_mid = self.processor_num_latents_train
        if n_mid is not None:
            check_int("processor_num_latents_train", n_mid)
            if n_mid > n[mid]:
                fail("processor_num_latents_train", n_mid, f"<= num_latents[{mid}]={n[mid]}")
        for i in range(1, k):
            for prev_n in {n[i - 1], n_mid if i - 1 == mid and n_mid else n[i - 1]}:
                if (g[i - 1] * prev_n) % g[i]:
                    fail("num_groups", g, f"block {i} regrouping {g[i - 1]}x{prev_n} latents into {g[i]} groups")

    @property
    def inputs(self) -> tuple[str, ...]:
        """Non-label modality names, in declaration order."""
        return tuple(m for m in self.modalities if m not in self.label_modalities)

    @property
    def processor_index(self) -> int:
        return len(self.num_groups) // 2

    def debug_size(self) -> HiPConfig:
        """The same structure (blocks, groups, modalities, options) at test size: 8 channels, one layer and at most
        two heads per block, ``4 * lcm(num_groups)`` latents in all per block (so every regrouping divides), and
        every modality in one call (``num_position_slots=None``) where the first block has groups enough."""
        k, emb = len(self.num_groups), 8
        total = 4 * math.lcm(*self.num_groups)
        latents = tuple(total // g for g in self.num_groups)
        subset = self.processor_num_latents_train
        if subset is not None:  # half the processor's latents, if the next block can regroup them
            mid = self.processor_index
            half = latents[mid] // 2
            subset = half if k > 1 and half % self.num_groups[mid + 1] == 0 else latents[mid]
        position = None if self.num_position_encoding_channels in (None, self.num_embedding_channels) else 2 * emb
        return self.replace(num_self_attend_layers=(1,) * k, num_latents=latents, num_channels=(emb,) * k,
                            num_self_attend_heads=tuple(min(h, 2) for h in self.num_self_attend_heads),
                            num_cross_attend_heads=(1,) * k, num_embedding_channels=emb,
                            num_position_encoding_channels=position, processor_num_latents_train=subset,
                            num_position_slots=None if len(self.inputs) <= self.num_groups[0] or k == 1
                            else self.num_position_slots)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modalities"] = {k: list(v) for k, v in self.modalities.items()}
        return data
