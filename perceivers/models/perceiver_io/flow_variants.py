"""Registered optical-flow Perceiver IO variants with their exact parameter counts.

``perceiver-io-flow`` is the released ``optical_flow_checkpoint.pystate`` configuration (official
``optical_flow.ipynb``, HF ``deepmind/optical-flow-perceiver``; perceiver-io.md §10.4).
"""

from __future__ import annotations

from perceivers.core.registry import register_model
from perceivers.models.perceiver_io.config import EncoderConfig
from perceivers.models.perceiver_io.flow import PerceiverIOFlow
from perceivers.models.perceiver_io.flow_config import (
    FlowDecoderConfig,
    FlowPreprocessorConfig,
    PerceiverIOFlowConfig,
)


@register_model("perceiver-io-flow", model_cls=PerceiverIOFlow, num_parameters=41_057_134)
def perceiver_io_flow() -> PerceiverIOFlowConfig:
    """Perceiver IO optical flow (released weights): 368x496 frame pairs, 2,048 x 512 latents, 24 layers."""
    # Breakdown: patches_linear 54->64 (3,520); latents 2048x512; encoder cross-attend on 322 channels
    # (1,066,578); 24 x 1,577,984 self-attends (16 heads); decoder cross-attend 322 <- 512 (1,066,198);
    # flow head Linear(322 -> 2) (646).
    encoder = EncoderConfig(num_latents=2048, num_latent_channels=512, num_blocks=1, num_self_attends_per_block=24,
                            num_cross_attend_heads=1, num_self_attend_heads=16)
    prep = FlowPreprocessorConfig(image_size=(368, 496), max_resolution=(368, 496))  # the colab's TRAIN_SIZE
    return PerceiverIOFlowConfig(preprocessor=prep, encoder=encoder, decoder=FlowDecoderConfig())


@register_model("perceiver-io-flow-debug", model_cls=PerceiverIOFlow, num_parameters=35_902)
def perceiver_io_flow_debug() -> PerceiverIOFlowConfig:
    """Tiny optical-flow model for tests: 12x16 frames, 8 Fourier bands, 16 x 32 latents, 2 layers: 35,902 params."""
    prep = FlowPreprocessorConfig(image_size=(12, 16), num_channels=16, num_bands=8)
    encoder = EncoderConfig(num_latents=16, num_latent_channels=32, num_blocks=1, num_self_attends_per_block=2,
                            num_cross_attend_heads=1, num_self_attend_heads=4)
    return PerceiverIOFlowConfig(preprocessor=prep, encoder=encoder, decoder=FlowDecoderConfig(chunk_size=64))
