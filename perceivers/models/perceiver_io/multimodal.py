"""Multimodal Perceiver IO autoencoder (official ``video_autoencoding`` colab).

``{name: input}`` -> :class:`~perceivers.preprocessors.multimodal.MultimodalPreprocessor` (padding, mask tokens,
sorted concatenation) -> encoder -> :class:`~perceivers.decoders.multimodal.MultimodalDecoder` -> one output
layer per modality -> ``{name: output}``. Modality names and kinds come from the configuration; nothing here
knows a name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from perceivers.decoders.multimodal import postprocess
from perceivers.models.perceiver_io.model import PerceiverIO
from perceivers.preprocessors.modality import ModalityConfig


class PerceiverIOMultimodal(PerceiverIO, preprocessor="multimodal"):
    """``{name: input}`` -> ``{name: output}`` (see :mod:`perceivers.preprocessors.modality` for the kinds).

    Built by ``PerceiverIO(config)`` for a config with a ``multimodal`` preprocessor and decoder. Outputs:
    ``video`` ``(B, T, H, W, C)`` (``(B, O', C)`` when subsampled), ``audio`` ``(B, S)``
    (``(B, O' * samples_per_patch)``), ``label`` ``(B, K)`` logits. Decoding the whole released video grid
    at once needs 802,816 queries of 1,026 channels: use :meth:`autoencode` (chunks, as the colab) or
    ``subsampled_output_points``.
    """

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward``: every modality at its configured size (video uniform in
        [0, 1), audio standard normal, label one-hot) and a ``mask`` hiding every other token of each modality
        with a mask token (alternating along the batch too, so one-token modalities are both seen and hidden)."""
        ref, inputs, mask = self.encoder.latents, {}, {}
        for name, m in self.config.preprocessor.modalities.items():
            if m.kind == "video":
                x = torch.rand(batch_size, m.num_frames, *m.image_size, m.in_channels, generator=generator)
            elif m.kind == "audio":
                x = torch.randn(batch_size, m.num_samples, generator=generator)
            else:
                labels = torch.randint(0, m.num_classes, (batch_size,), generator=generator)
                x = torch.nn.functional.one_hot(labels, m.num_classes).float()
            inputs[name] = x.to(ref)
            if m.mask_prob is not None:
                tokens = math.prod(m.patch_grid)  # (B, M_m): True where (example + token) is even
                mask[name] = ((torch.arange(batch_size)[:, None] + torch.arange(tokens)) % 2 == 0).to(ref.device)
        return {"inputs": inputs, "mask": mask} if mask else {"inputs": inputs}

    def _full_inputs(self, inputs: Mapping[str, Tensor], mask_probs: Mapping[str, float] | None,
                     mask: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
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
        if mask is not None:
            if not isinstance(mask, Mapping):
                raise TypeError(f"mask must be a dict name -> (B, M_m) bool tensor, got {type(mask).__name__}")
            bad = sorted(set(mask) - set(self.preprocessor.mask_token))
            if bad:
                raise ValueError(f"mask names modalities without a mask token {bad}; with one: "
                                 f"{list(self.preprocessor.mask_token)}")
            both = sorted(set(mask) & set(mask_probs or {}))
            if both:
                raise ValueError(f"modalities {both} are in both mask and mask_probs: give one or the other")
        dtype = self.encoder.latents.dtype
        out: dict[str, Tensor] = {}
        for name in names:
            if name in inputs:
                self.preprocessor.modalities[name].check_input(inputs[name], f"inputs[{name!r}]")
                self.check_dtype(inputs[name], f"inputs[{name!r}]")
                out[name] = inputs[name]
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
                out[name] = self._zeros(self.config.preprocessor.modalities[name], b, device, dtype)
        return out

    @staticmethod
    def _zeros(m: ModalityConfig, batch: int, device, dtype) -> Tensor:
        if m.kind == "video":
            shape = (batch, m.num_frames, *m.image_size, m.in_channels)
        else:
            shape = (batch, m.num_samples if m.kind == "audio" else m.num_classes)
        return torch.zeros(shape, device=device, dtype=dtype)

    def forward_features(self, inputs: Mapping[str, Tensor], *,  # type: ignore[override]
                         mask_probs: Mapping[str, float] | None = None, generator: torch.Generator | None = None,
                         mask: Mapping[str, Tensor] | None = None) -> Tensor:
        """Encode ``{name: input}`` -> latents ``(B, N, D)``. ``mask_probs`` overrides the configured
        masking probabilities for this call, ``mask[name]: (B, M_m)`` bool (True = masked) chooses the masked
        tokens instead (modalities with a mask token only)."""
        inputs = self._full_inputs(inputs, mask_probs, mask)
        tokens, _, _ = self.preprocessor(inputs, mask_probs=mask_probs, generator=generator, mask=mask)
        return self.encoder(tokens)

    def forward_head(self, z: Tensor, subsampled_output_points: Mapping[str, Tensor | None] | None = None, *,
                     modalities: list[str] | None = None) -> dict[str, Tensor]:
        """Decode latents ``z: (B, N, D)`` for ``modalities`` (default all) and apply the output layers."""
        points = subsampled_output_points or {}
        decoded = self.decoder(z, points, modalities=modalities)
        mods = self.config.preprocessor.modalities
        return {name: postprocess(mods[name], self.postprocessors[name](h), subsampled=points.get(name) is not None)
                for name, h in decoded.items()}  # output layers: (B, O_m, C) -> (B, O_m, C_out,m) -> layout

    def forward(self, inputs: Mapping[str, Tensor], *,  # type: ignore[override]
                subsampled_output_points: Mapping[str, Tensor | None] | None = None,
                mask_probs: Mapping[str, float] | None = None, generator: torch.Generator | None = None,
                mask: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``{name: input}`` -> ``{name: output}``; ``subsampled_output_points[name]`` decodes only those flat
        indices of the modality's output grid (video pixels ``T*H*W``, audio patches). Masking: see
        :meth:`forward_features`."""
        z = self.forward_features(inputs, mask_probs=mask_probs, generator=generator, mask=mask)
        return self.forward_head(z, subsampled_output_points)

    def autoencode(self, inputs: Mapping[str, Tensor], *, num_chunks: int = 128,
                   mask_probs: Mapping[str, float] | None = None, generator: torch.Generator | None = None,
                   mask: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Encode once, then decode every output in ``num_chunks`` chunks of consecutive indices (official
        colab: 128 chunks), so memory is bounded by one chunk. Returns full outputs (video ``(B, T, H, W, C)``,
        audio ``(B, S)``, label ``(B, K)``) equal to ``forward`` with all indices as subsampled points."""
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError(f"num_chunks={num_chunks!r} is invalid: expected an int >= 1")
        z = self.forward_features(inputs, mask_probs=mask_probs, generator=generator, mask=mask)
        mods = self.config.preprocessor.modalities
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
