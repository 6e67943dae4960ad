"""HF ``transformers`` ``PerceiverForOpticalFlow`` configs <-> flow :class:`PerceiverIOConfig` (flow preprocessor
and decoder).

HF hard-codes most of the flow model (``modeling_perceiver.PerceiverForOpticalFlow``): inputs are
precomputed patches ``(B, 2, 27, H, W)`` (3x3 patches of 3-channel frames; HF ships no extraction
function, ours is :func:`perceivers.preprocessors.flow.extract_flow_patches`), ``Linear(54 -> 64)``,
64 Fourier bands with ``max_resolution = config.train_size``, a 1-head decoder without query residual,
``Linear(-> 2)``, output divided by 100. Config fields used: the encoder fields and ``train_size``.

Differences that change numbers (items HF-n of docs/checkpoints.md):

- output scale (item 14): the official colab multiplies the model output by ``FLOW_SCALE_FACTOR = 20``
  (flow in pixels); HF returns the output without it (pixels / 20). Faithful default
  ``decoder.flow_scale_factor=20.0``; ``hf_compat`` sets ``1.0``. ``to-hf`` accepts either: the weights
  are the same network, and HF's output is then ours divided by ``flow_scale_factor``;
- GELU (item 1) and attention-probability dropout (item 3): as for every head (see
  :mod:`perceivers.converters.hf`).

The decoder's qk width follows HF's ``cross_attention_shape_for_attention`` (``'kv'``: the latent width,
as the official decoder always does; ``'q'``: the 322-channel query width, which only HF can build).
"""

from __future__ import annotations

from typing import Any

from perceivers.decoders.flow import FlowDecoderConfig
from perceivers.encoders import EncoderConfig
from perceivers.models.perceiver_io.config import PerceiverIOConfig
from perceivers.preprocessors.flow import FLOW_TRAIN_SIZE, FlowPreprocessorConfig

FLOW = "PerceiverForOpticalFlow"
#: What HF's flow preprocessor hard-codes (2 frames of 3x3 patches of RGB = 54 -> 64 channels, 64 bands).
HF_FLOW_PREPROCESSOR = dict(in_channels=3, num_frames=2, patch_size=3, num_channels=64, num_bands=64)
#: What HF's flow decoder hard-codes.
HF_FLOW_DECODER = dict(num_outputs=2, num_heads=1, widening_factor=1, use_query_residual=False, rescale_factor=100.0)


def _decoder_qk(shape_for_attn: str, latent_channels: int, query_channels: int) -> int:
    """HF's decoder qk (= v) width: from the query for ``'q'``, from the latents for ``'kv'``."""
    return query_channels if shape_for_attn == "q" else latent_channels


def flow_config_from_hf(hf: dict[str, Any], *, encoder: EncoderConfig, activation: str,
                        hf_compat: bool) -> PerceiverIOConfig:
    """An HF ``PerceiverForOpticalFlow`` ``config.json`` dict -> our config (``encoder``/``activation`` already
    translated by the caller). ``hf_compat`` sets ``flow_scale_factor=1.0`` (HF's raw output)."""
    size = hf.get("train_size", list(FLOW_TRAIN_SIZE))
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"HF config train_size={size!r} is invalid: expected [height, width]")
    prep = FlowPreprocessorConfig(image_size=tuple(size), max_resolution=tuple(size), concat_pos=True, sine_only=False,
                                  **HF_FLOW_PREPROCESSOR)
    # 'kv': the official decoder (None = the latent width); 'q': HF only, qk = v = the query width.
    qk = prep.output_channels if encoder.cross_attention_shape_for_attn == "q" else None
    decoder = FlowDecoderConfig(qk_channels=qk, v_channels=qk, flow_scale_factor=1.0 if hf_compat else 20.0,
                                **HF_FLOW_DECODER)
    return PerceiverIOConfig(preprocessor=prep, encoder=encoder, decoder=decoder, activation=activation)


def flow_fields_for_hf(config: PerceiverIOConfig) -> dict[str, Any]:
    """The flow-specific HF config fields (``train_size``, ``d_model``); ``ValueError`` naming what HF cannot
    express (other patch / channel / band settings, decoder heads, query residual, ...)."""
    p, dec, enc = config.preprocessor, config.decoder, config.encoder
    problems = [f"preprocessor.{k}={getattr(p, k)!r} (HF: {v!r})" for k, v in HF_FLOW_PREPROCESSOR.items()
                if getattr(p, k) != v]
    if (p.max_resolution or p.image_size) != p.image_size or not p.concat_pos or p.sine_only:
        problems.append("Fourier features other than max_resolution = image_size, concat_pos, not sine_only")
    problems += [f"decoder.{k}={getattr(dec, k)!r} (HF: {v!r})" for k, v in HF_FLOW_DECODER.items()
                 if getattr(dec, k) != v]
    qk = _decoder_qk(enc.cross_attention_shape_for_attn, enc.num_latent_channels, p.output_channels)
    if (dec.qk_channels or enc.num_latent_channels) != qk or (dec.v_channels or dec.qk_channels
                                                              or enc.num_latent_channels) != qk:
        problems.append(f"decoder qk/v channels ({dec.qk_channels}, {dec.v_channels}): HF derives {qk} from "
                        f"cross_attention_shape_for_attention={enc.cross_attention_shape_for_attn!r}")
    if problems:
        raise ValueError("cannot express this model as an HF transformers PerceiverForOpticalFlow: "
                         + "; ".join(problems))
    return {"train_size": list(p.image_size), "d_model": p.output_channels}
