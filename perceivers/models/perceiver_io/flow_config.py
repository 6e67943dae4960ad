"""Frozen, validated configuration of the Perceiver IO optical-flow model (official ``optical_flow.ipynb``).

- :class:`FlowPreprocessorConfig`: frame pairs ``(B, T=2, C=3, H, W)`` -> per-frame 3x3 patches with the
  official ``patches_for_flow`` layout -> frames concatenated (54 channels) -> ``Linear(54 -> 64)``
  (``patches_linear``) -> 2-D Fourier features (64 bands, ``max_resolution`` (368, 496)) concatenated:
  322 channels per pixel.
- :class:`FlowDecoderConfig`: the official ``FlowDecoder``: the queries are the preprocessed input
  itself (with positions), one cross-attention to the latents, ``Linear(-> 2)`` (zero-initialised),
  output divided by ``rescale_factor`` (100) and multiplied by ``flow_scale_factor`` (the colab's
  ``FLOW_SCALE_FACTOR = 20``: flow in pixels; ``1.0`` gives HF transformers' raw output, pixels / 20).
  Queries are decoded ``chunk_size`` at a time so memory stays bounded at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from perceivers.layers.blocks import ACTIVATIONS
from perceivers.models.perceiver_io.config import (
    ConfigBase,
    EncoderConfig,
    ImagePreprocessorConfig,
    check_bools,
    check_choice,
    check_divisible,
    check_int,
    check_optional_int,
    check_scale,
    fail,
    normalize_int_tuple,
)

#: The official training resolution (``TRAIN_SIZE`` of the colab), also the tile size of tiled inference.
FLOW_TRAIN_SIZE = (368, 496)
#: The colab's ``FLOW_SCALE_FACTOR``: training targets were flow / 20 (AutoFlow convention).
FLOW_SCALE_FACTOR = 20.0


@dataclass(frozen=True, kw_only=True)
class FlowPreprocessorConfig(ConfigBase):
    """Frame pairs ``(B, num_frames, in_channels, H, W)`` with ``(H, W) == image_size`` -> tokens.

    ``patch_size`` (odd): the ``patch_size x patch_size`` neighbourhood of every pixel, zero-padded by
    ``patch_size // 2`` (official: 3, pad 1), channel order (patch-row, patch-col, channel).
    ``num_channels``: width of ``patches_linear`` (official 64). Fourier features use ``max_resolution``
    (default ``image_size``; official (368, 496)).
    """

    image_size: tuple[int, int] = FLOW_TRAIN_SIZE
    in_channels: int = 3
    num_frames: int = 2
    patch_size: int = 3
    num_channels: int = 64
    num_bands: int = 64
    max_resolution: tuple[int, int] | None = None
    concat_pos: bool = True
    sine_only: bool = False

    def __post_init__(self) -> None:
        normalize_int_tuple(self, "image_size", self.image_size)
        if len(self.image_size) != 2:
            fail("image_size", self.image_size, "(height, width)")
        for name in ("in_channels", "num_frames", "patch_size", "num_channels", "num_bands"):
            check_int(name, getattr(self, name))
        if self.patch_size % 2 == 0:
            fail("patch_size", self.patch_size, "an odd int (the patch is centred on its pixel)")
        normalize_int_tuple(self, "max_resolution", self.max_resolution, allow_none=True)
        if self.max_resolution is not None and len(self.max_resolution) != 2:
            fail("max_resolution", self.max_resolution, "two entries (height, width) or None")
        check_bools(self, "concat_pos", "sine_only")

    @property
    def patch_channels(self) -> int:
        """Values per pixel and frame: ``patch_size**2 * in_channels`` (27 officially)."""
        return self.patch_size**2 * self.in_channels

    def image_config(self) -> ImagePreprocessorConfig:
        """The image preprocessor applied to the concatenated patches ``(B, num_frames*patch_channels, H, W)``:
        ``patches`` with block 1 (a per-pixel ``Linear``), Fourier positions concatenated."""
        return ImagePreprocessorConfig(
            image_size=self.image_size, in_channels=self.num_frames * self.patch_channels, prep_type="patches",
            spatial_downsample=1, num_channels=self.num_channels, conv_after_patching=True,
            position_encoding="fourier", num_bands=self.num_bands,
            max_resolution=self.max_resolution or self.image_size, concat_pos=self.concat_pos,
            sine_only=self.sine_only,
        )

    @property
    def output_channels(self) -> int:
        """Channels of the tokens (and of the decoder queries): 322 officially."""
        return self.image_config().output_channels


@dataclass(frozen=True, kw_only=True)
class FlowDecoderConfig(ConfigBase):
    """Official ``FlowDecoder``: queries = preprocessed input, one cross-attend, ``Linear(-> num_outputs)``.

    ``flow_scale_factor``: multiplies the decoder output (already divided by ``rescale_factor``).
    ``20.0`` (default, the official colab) gives flow in pixels; ``1.0`` reproduces HF transformers'
    ``PerceiverForOpticalFlow``, whose output is pixels / 20. ``chunk_size``: queries decoded per step
    (``None`` = all at once); the result does not depend on it (each query attends independently).
    """

    num_outputs: int = 2
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    use_query_residual: bool = False
    rescale_factor: float = 100.0
    flow_scale_factor: float = FLOW_SCALE_FACTOR
    chunk_size: int | None = 16384

    def __post_init__(self) -> None:
        for name in ("num_outputs", "num_heads", "widening_factor"):
            check_int(name, getattr(self, name))
        check_optional_int("qk_channels", self.qk_channels)
        check_optional_int("v_channels", self.v_channels)
        check_optional_int("chunk_size", self.chunk_size)
        check_bools(self, "use_query_residual")
        check_scale("rescale_factor", self.rescale_factor)
        check_scale("flow_scale_factor", self.flow_scale_factor)


@dataclass(frozen=True, kw_only=True)
class PerceiverIOFlowConfig(ConfigBase):
    """The optical-flow Perceiver IO: flow preprocessor, encoder (``io`` layout), flow decoder."""

    _nested: ClassVar[dict[str, type]] = {
        "preprocessor": FlowPreprocessorConfig, "encoder": EncoderConfig, "decoder": FlowDecoderConfig,
    }

    preprocessor: FlowPreprocessorConfig = field(default_factory=FlowPreprocessorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: FlowDecoderConfig = field(default_factory=FlowDecoderConfig)
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        self._coerce_nested()
        check_choice("activation", self.activation, ACTIVATIONS)
        enc, dec = self.encoder, self.decoder
        if enc.layout != "io":
            fail("encoder.layout", enc.layout, "'io' for the flow model")
        channels = self.preprocessor.output_channels
        qk, v = enc.cross_attention_channels(channels)
        heads = enc.num_cross_attend_heads
        check_divisible("encoder cross-attention qk_channels", qk, "num_cross_attend_heads", heads)
        check_divisible("encoder cross-attention v_channels", v, "num_cross_attend_heads", heads)
        dqk = dec.qk_channels or enc.num_latent_channels  # the decoder's kv input is the latents ('kv')
        check_divisible("decoder qk_channels", dqk, "decoder num_heads", dec.num_heads)
        check_divisible("decoder v_channels", dec.v_channels or dqk, "decoder num_heads", dec.num_heads)
