"""Multimodal Perceiver IO autoencoder (official ``video_autoencoding`` colab, perceiver-io.md §10.5).

``{name: input}`` -> :class:`MultimodalPreprocessor` (padding, mask tokens, sorted concatenation) ->
encoder -> :class:`MultimodalDecoder` -> one output layer per modality -> ``{name: output}``. Modality
names and kinds come from the configuration; nothing here knows a name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from perceivers.decoders.multimodal import MultimodalDecoder
from perceivers.layers.init import init_linear_haiku
from perceivers.models.base import PerceiverModel
from perceivers.models.perceiver_io.encoder import PerceiverEncoder
from perceivers.models.perceiver_io.multimodal_config import (
    ModalityConfig,
    PerceiverIOMultimodalConfig,
)
from perceivers.preprocessors.multimodal import MultimodalPreprocessor


class PerceiverIOMultimodal(PerceiverModel, model_type="perceiver_io_multimodal"):
    """``{name: input}`` -> ``{name: output}`` (see :mod:`perceivers.models.perceiver_io.multimodal_config` for the kinds).

    Outputs: ``video`` ``(B, T, H, W, C)`` (``(B, O', C)`` when subsampled), ``audio`` ``(B, S)``
    (``(B, O' * samples_per_patch)``), ``label`` ``(B, K)`` logits. Decoding the whole released video grid
    at once needs 802,816 queries of 1,026 channels: use :meth:`autoencode` (chunks, as the colab) or
    ``subsampled_output_points``.
    """

    config_class = PerceiverIOMultimodalConfig

    def __init__(self, config: PerceiverIOMultimodalConfig) -> None:
        super().__init__(config)
        c = config
        self.preprocessor = MultimodalPreprocessor(c.modalities, min_padding_size=c.min_padding_size,
                                                   init_scale=c.padding_init_scale)
        self.encoder = PerceiverEncoder(c.encoder, input_channels=c.input_width, activation=c.activation)
        self.decoder = MultimodalDecoder(c.modalities, c.decoder, latent_channels=c.encoder.num_latent_channels,
                                         activation=c.activation)
        self.postprocessors = nn.ModuleDict({
            n: nn.Linear(c.decoder.num_output_channels, m.output_channels) for n, m in c.modalities.items()})
        self.init_weights_unless_meta()

    def init_weights(self) -> None:
        """Official initialisation (0.02 paddings, mask tokens, latents and queries; fan-in attention linears;
        Haiku-default output layers)."""
        for module in (self.preprocessor, self.encoder, self.decoder):
            module.init_weights()
        for layer in self.postprocessors.values():
            init_linear_haiku(layer)

    def _full_inputs(self, inputs: Mapping[str, Tensor], mask_probs: Mapping[str, float] | None) -> dict[str, Tensor]:
        """Validate the input dict; a modality that is always masked (p = 1) may be left out (zeros)."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a dict name -> tensor, got {type(inputs).__name__}")
        names = self.preprocessor.names
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise ValueError(f"inputs has unknown modalities {unknown}; this model reads {names}")
        if mask_probs is not None:
            bad = sorted(set(mask_probs) - set(self.preprocessor.mask_token))
            if bad:
                raise ValueError(f"mask_probs names modalities without a mask token {bad}; with one: "
                                 f"{list(self.preprocessor.mask_token)}")
            for name, p in mask_probs.items():
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                    raise ValueError(f"mask_probs[{name!r}]={p!r} is invalid: expected a float in [0, 1]")
        dtype = self.encoder.latents.dtype
        out: dict[str, Tensor] = {}
        for name in names:
            if name in inputs:
                self.preprocessor.modalities[name].check_input(inputs[name], f"inputs[{name!r}]")
                x = inputs[name]
                if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
                    raise TypeError(f"inputs[{name!r}] has dtype {x.dtype} but the model parameters are {dtype}")
                out[name] = x
        present = list(out.values())
        if not present:
            raise ValueError(f"inputs must hold at least one of the modalities {names}")
        batch = {x.shape[0] for x in present}
        if len(batch) != 1:
            raise ValueError(f"every modality must have the same batch size, got {sorted(batch)}")
        b, device = present[0].shape[0], present[0].device
        for name in names:
            if name not in out:
                if self.preprocessor.mask_prob(name, mask_probs) < 1.0:
                    raise ValueError(f"inputs lacks modality {name!r} (only an always-masked modality, mask "
                                     f"probability 1, may be left out)")
                out[name] = self._zeros(self.config.modalities[name], b, device, dtype)
        return out

    @staticmethod
    def _zeros(m: ModalityConfig, batch: int, device, dtype) -> Tensor:
        if m.kind == "video":
            shape = (batch, m.num_frames, *m.image_size, m.in_channels)
        else:
            shape = (batch, m.num_samples if m.kind == "audio" else m.num_classes)
        return torch.zeros(shape, device=device, dtype=dtype)

    def forward_features(self, inputs: Mapping[str, Tensor], *, mask_probs: Mapping[str, float] | None = None,
                         generator: torch.Generator | None = None) -> Tensor:
        """Encode ``{name: input}`` -> latents ``(B, N, D)``. ``mask_probs`` overrides the configured
        masking probabilities for this call (modalities with a mask token only)."""
        inputs = self._full_inputs(inputs, mask_probs)
        tokens, _, _ = self.preprocessor(inputs, mask_probs=mask_probs, generator=generator)
        return self.encoder(tokens)

    def forward_head(self, z: Tensor, subsampled_output_points: Mapping[str, Tensor | None] | None = None, *,
                     modalities: list[str] | None = None) -> dict[str, Tensor]:
        """Decode latents ``z: (B, N, D)`` for ``modalities`` (default all) and apply the output layers."""
        points = subsampled_output_points or {}
        decoded = self.decoder(z, points, modalities=modalities)
        out = {}
        for name, h in decoded.items():
            m = self.config.modalities[name]
            y = self.postprocessors[name](h)  # (B, O_m, C_out,m)
            if m.kind == "label":
                y = y[:, 0]  # (B, K)
            elif m.kind == "audio":
                y = y.reshape(y.shape[0], -1)  # (B, O' * spp) samples
            elif points.get(name) is None:
                y = y.reshape(y.shape[0], *m.output_grid, y.shape[-1])  # (B, T, H, W, C)
            out[name] = y
        return out

    def forward(self, inputs: Mapping[str, Tensor], *, subsampled_output_points: Mapping[str, Tensor | None] | None
                = None, mask_probs: Mapping[str, float] | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``{name: input}`` -> ``{name: output}``; ``subsampled_output_points[name]`` decodes only those flat
        indices of the modality's output grid (video pixels ``T*H*W``, audio patches)."""
        z = self.forward_features(inputs, mask_probs=mask_probs, generator=generator)
        return self.forward_head(z, subsampled_output_points)

    def autoencode(self, inputs: Mapping[str, Tensor], *, num_chunks: int = 128,
                   mask_probs: Mapping[str, float] | None = None,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Encode once, then decode every output in ``num_chunks`` chunks of consecutive indices (official
        colab: 128 chunks), so memory is bounded by one chunk. Returns full outputs (video ``(B, T, H, W, C)``,
        audio ``(B, S)``, label ``(B, K)``) equal to ``forward`` with all indices as subsampled points."""
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError(f"num_chunks={num_chunks!r} is invalid: expected an int >= 1")
        z = self.forward_features(inputs, mask_probs=mask_probs, generator=generator)
        mods = self.config.modalities
        grids = [n for n, m in mods.items() if m.kind != "label"]
        parts: dict[str, list[Tensor]] = {n: [] for n in grids}
        out = self.forward_head(z, modalities=[n for n in mods if n not in grids]) if len(grids) < len(mods) else {}
        chunks = {n: torch.arange(mods[n].num_queries, device=z.device).tensor_split(num_chunks) for n in grids}
        for i in range(num_chunks):
            points = {n: chunks[n][i] for n in grids if chunks[n][i].numel() > 0}
            if points:
                for name, y in self.forward_head(z, points, modalities=list(points)).items():
                    parts[name].append(y)
        for name in grids:
            y = torch.cat(parts[name], dim=1)
            m = mods[name]
            out[name] = y.reshape(y.shape[0], *m.output_grid, y.shape[-1]) if m.kind == "video" else y
        return {n: out[n] for n in mods}
