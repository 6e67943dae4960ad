"""A classifier on a HiP's encoder half: embed + positions -> group -> encoder blocks -> processor ->
mean over the processor latents -> LayerNorm -> Linear (zero-initialised logits).

Ours (the official code releases no classification head for plain HiP). It is the "pooled head" used
to fine-tune after masked-autoencoding pretraining: its embedders, position tables, projections and
blocks ``0..mid`` have exactly the parameter names of :class:`~perceivers.models.hip.model.HiP`, so
``load_hip_weights`` copies any subset of a pretrained HiP by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from perceivers.core.validation import ConfigBase, check_int, fail
from perceivers.layers.blocks import LAYER_NORM_EPS
from perceivers.layers.init import init_zeros
from perceivers.models.base import PerceiverModel
from perceivers.models.hip.blocks import group
from perceivers.models.hip.config import HiPConfig
from perceivers.models.hip.model import HiP, HiPFrontEnd, build_block


@dataclass(frozen=True, kw_only=True)
class HiPClassifierConfig(ConfigBase):
    """``hip``: the backbone (only its embedding side, encoder and processor are built; no label
    modalities). ``num_classes``: logits per example."""

    hip: HiPConfig
    num_classes: int

    _nested: ClassVar[dict[str, type]] = {"hip": HiPConfig}

    def __post_init__(self) -> None:
        self._coerce_nested()
        check_int("num_classes", self.num_classes)
        if self.hip.label_modalities:
            fail("hip.label_modalities", self.hip.label_modalities, "() (the pooled head replaces label inputs)")
        if len(self.hip.num_groups) == 1:
            fail("hip.num_groups", self.hip.num_groups, "a HiP with a processor (>= 3 blocks)")

    def debug_size(self) -> HiPClassifierConfig:
        """The same structure at test size (see :meth:`HiPConfig.debug_size`)."""
        return self.replace(hip=self.hip.debug_size())


class HiPClassifier(HiPFrontEnd, PerceiverModel, model_type="hip-classifier"):
    """``forward(inputs: {m: (B, M_m, C_m)}) -> logits (B, num_classes)``."""

    config_class = HiPClassifierConfig

    def __init__(self, config: HiPClassifierConfig) -> None:
        super().__init__(config)
        c, mid = config.hip, config.hip.processor_index
        self._build_front_end(c)
        self.blocks = nn.ModuleList(build_block(c, i) for i in range(mid + 1))
        self.head_norm = nn.LayerNorm(c.num_channels[mid], eps=LAYER_NORM_EPS)
        self.head = nn.Linear(c.num_channels[mid], config.num_classes)
        self.init_weights_unless_meta()

    @property
    def hip_config(self) -> HiPConfig:
        return self.config.hip

    def init_weights(self) -> None:
        for block in self.blocks:
            block.init_weights()
        self._init_front_end()
        self.head_norm.reset_parameters()
        init_zeros(self.head)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        plain, _ = self._check_inputs(inputs)
        plan = self.group_plan({m: inputs[m].shape[1] for m in plain})
        z, _ = self.embed(inputs, plain)
        z = group(plan, z)  # (B, G0, T, C_emb)
        for block in self.blocks:
            z = block(z)  # (B, G_i, N_i, C_i)
        pooled = z.mean(dim=(1, 2))  # processor: (B, 1, N_mid, C_mid) -> (B, C_mid)
        return self.head(self.head_norm(pooled))

    def load_hip_weights(self, hip: HiP, prefixes: tuple[str, ...] = ("position_tables.",)) -> list[str]:
        """Copy the tensors of ``hip`` whose names start with one of ``prefixes`` (e.g. ``"position_tables."``,
        ``"embedders."``, ``"blocks."``; ``("",)`` = everything the classifier has). Returns the copied names;
        raises ``ValueError`` when nothing matches or shapes differ."""
        ours = self.state_dict()
        theirs = {k: v for k, v in hip.state_dict().items() if k in ours and k.startswith(prefixes)}
        if not theirs:
            raise ValueError(f"no tensor of the HiP starts with {prefixes} and exists in the classifier")
        for name, value in theirs.items():
            if value.shape != ours[name].shape:
                raise ValueError(f"{name}: HiP has shape {tuple(value.shape)}, the classifier {tuple(ours[name].shape)}")
        with torch.no_grad():
            for name, value in theirs.items():
                ours[name].copy_(value)
        return sorted(theirs)
