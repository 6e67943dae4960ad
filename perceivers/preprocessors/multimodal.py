"""The official ``MultimodalPreprocessor`` (``io_processors.py``) and its config.

Every modality (a :class:`~perceivers.preprocessors.modality.ModalityConfig`) is read into tokens by its
:class:`~perceivers.preprocessors.modality.ModalityPreprocessor`; :class:`MultimodalPreprocessor` pads every
modality's tokens to a common width with a learned per-modality vector, replaces tokens by a learned mask token
with each modality's probability, and concatenates the modalities in sorted name order (as the official code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import ConfigBase, check_int, check_scale, fail
from perceivers.layers.init import init_trunc_normal
from perceivers.preprocessors.modality import ModalityConfig, ModalityPreprocessor

#: Names a modality cannot take: they would shadow attributes of the ``ModuleDict``/``ParameterDict`` holding it.
RESERVED_NAMES = frozenset(dir(nn.ModuleDict())) | frozenset(dir(nn.ParameterDict()))


def check_modalities(obj: Any) -> None:
    """Normalise ``modalities`` to ``{name: ModalityConfig}`` (``config.json`` gives dicts) and validate it."""
    mods = obj.modalities
    if not isinstance(mods, dict) or not mods:
        raise TypeError(f"modalities must be a non-empty dict name -> ModalityConfig, got {mods!r}")
    for name in mods:
        if not isinstance(name, str) or not name.isidentifier():
            fail("modalities", name, "modality names that are Python identifiers (they name parameters)")
        if name in RESERVED_NAMES:
            fail("modalities", name, "a name that is not an attribute of torch's ModuleDict/ParameterDict")
    out = {}
    for name in sorted(mods):  # the official order: sorted modality names
        spec = mods[name]
        if isinstance(spec, dict):
            spec = ModalityConfig.from_dict(spec)
        if not isinstance(spec, ModalityConfig):
            raise TypeError(f"modality {name!r} must be a ModalityConfig or a dict, got {type(spec).__name__}")
        out[name] = spec
    object.__setattr__(obj, "modalities", out)


@dataclass(frozen=True, kw_only=True)
class MultimodalPreprocessorConfig(ConfigBase):
    """Modalities read together: ``{name: ModalityConfig}``, padded to one width and concatenated.

    ``min_padding_size``: every input token is padded with a learned per-modality vector to the common
    width ``max(input channels) + min_padding_size`` (official default 2; the released model uses 4).
    ``padding_init_scale``: std of the paddings and mask tokens (official 0.02).
    """

    type: ClassVar[str] = "multimodal"  # the tag that names this preprocessor in a model config

    modalities: dict[str, ModalityConfig]
    min_padding_size: int = 2
    padding_init_scale: float = 0.02

    def __post_init__(self) -> None:
        check_modalities(self)
        check_int("min_padding_size", self.min_padding_size, minimum=0)
        check_scale("padding_init_scale", self.padding_init_scale)

    @property
    def input_width(self) -> int:
        """Common token width after padding (704 for the released model)."""
        return max(m.input_channels for m in self.modalities.values()) + self.min_padding_size

    @property
    def token_channels(self) -> int:
        """Channels of the tokens fed to the encoder (= :attr:`input_width`)."""
        return self.input_width

    def debug_size(self) -> MultimodalPreprocessorConfig:
        """The same modalities, each at its test size (:meth:`ModalityConfig.debug_size`)."""
        return self.replace(modalities={n: m.debug_size() for n, m in self.modalities.items()})


class MultimodalPreprocessor(nn.Module):
    """``{name: input}`` -> tokens ``(B, sum M_m, C_common)`` in sorted name order.

    Parameters: ``padding[name]: (1, C_common - C_m)`` (a modality embedding; broadcast over positions) and,
    for modalities with a ``mask_prob``, ``mask_token[name]: (1, C_common)``; truncated normal 0.02.
    """

    def __init__(self, config: MultimodalPreprocessorConfig) -> None:
        super().__init__()
        self.config = config
        modalities = config.modalities
        self.names = sorted(modalities)
        self.init_scale = config.padding_init_scale
        self.modalities = nn.ModuleDict({n: ModalityPreprocessor(modalities[n]) for n in self.names})
        self.width = config.input_width
        self.padding = nn.ParameterDict({
            n: nn.Parameter(torch.empty(1, self.width - modalities[n].input_channels)) for n in self.names})
        self.mask_token = nn.ParameterDict({
            n: nn.Parameter(torch.empty(1, self.width)) for n in self.names if modalities[n].mask_prob is not None})
        self.init_weights()  # usable on its own; a no-op on the meta device

    def init_weights(self) -> None:
        for p in (*self.padding.values(), *self.mask_token.values()):
            init_trunc_normal(p, self.init_scale)

    def mask_prob(self, name: str, overrides: Mapping[str, float] | None) -> float:
        """The masking probability of ``name`` for this call (override, else config; 0 without a mask token)."""
        if overrides is not None and name in overrides:
            return float(overrides[name])
        p = self.modalities[name].config.mask_prob
        return 0.0 if p is None else float(p)

    def forward(self, inputs: Mapping[str, Tensor], *, mask_probs: Mapping[str, float] | None = None,
                generator: torch.Generator | None = None, mask: Mapping[str, Tensor] | None = None,
                ) -> tuple[Tensor, dict[str, int], dict[str, Tensor]]:
        """-> ``(tokens (B, M, C_common), {name: M_m}, {name: features without positions (B, M_m, C_feat)})``.

        Masking (official): token ``j`` of modality ``m`` becomes ``mask_token[m]`` with probability
        ``p_m`` (Bernoulli, ``generator`` if given), whether the module is training or not. ``mask[m]: (B, M_m)``
        bool (True = masked) chooses the masked tokens of modality ``m`` instead of the draw.
        """
        padded, sizes, feats = [], {}, {}
        for name in self.names:
            tokens, feats[name] = self.modalities[name](inputs[name])
            b, m, _ = tokens.shape
            pad = self.padding[name].to(tokens.dtype).expand(b, m, -1)  # (B, M_m, C_common - C_m)
            tokens = torch.cat([tokens, pad], dim=-1)  # (B, M_m, C_common)
            p = self.mask_prob(name, mask_probs)
            if mask is not None and name in mask:
                hidden = mask[name]
                if not isinstance(hidden, Tensor) or hidden.dtype != torch.bool:
                    raise TypeError(f"mask[{name!r}] must be a bool tensor (True = masked), got "
                                    f"{hidden.dtype if isinstance(hidden, Tensor) else type(hidden).__name__}")
                if tuple(hidden.shape) != (b, m):
                    raise ValueError(f"mask[{name!r}] must have shape (B, M_m)=({b}, {m}) (one entry per token of "
                                     f"the modality), got {tuple(hidden.shape)}")
                tokens = torch.where(hidden[..., None], self.mask_token[name].to(tokens.dtype), tokens)
            elif p > 0.0:
                if p >= 1.0:
                    keep = torch.zeros(b, m, 1, dtype=torch.bool, device=tokens.device)
                else:
                    draw = torch.rand(b, m, 1, generator=generator, device=tokens.device)
                    keep = draw >= p  # masked with probability p
                tokens = torch.where(keep, tokens, self.mask_token[name].to(tokens.dtype))
            padded.append(tokens)
            sizes[name] = m
        return torch.cat(padded, dim=1), sizes, feats
